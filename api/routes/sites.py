"""Sites, their devices and their latest values, scoped by the caller's key; registry edits for admins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from smartpark.api.deps import (
    AdminDep,
    CatalogDep,
    PrincipalDep,
    RegistryDep,
    SettingsDep,
    StoreDep,
    admin_site,
    scoped_site,
)
from smartpark.api.errors import ADMIN_ERRORS, ERRORS, Conflict, Unprocessable
from smartpark.api.models import (
    DeviceCreate,
    DeviceProvisioned,
    DevicePublic,
    LatestDevice,
    LatestMetric,
    Page,
    SiteCreate,
    SitePublic,
    SiteUpdate,
)
from smartpark.core import clock
from smartpark.core.contract import telemetry_topic
from smartpark.core.errors import RegistryError

router = APIRouter(prefix="/v1/sites", tags=["sites"], responses=ERRORS)

Offset = Annotated[int, Query(ge=0, le=1_000_000)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("")
def list_sites(registry: RegistryDep, who: PrincipalDep, offset: Offset = 0, limit: Limit = 100
               ) -> Page[SitePublic]:
    sites = [s for s in registry.sites() if who.can_see(s.id)]
    items = [SitePublic.model_validate(s) for s in sites[offset:offset + limit]]
    return Page[SitePublic](items=items, total=len(sites), offset=offset, limit=limit)


def _check_greening_bounds(low: float | None, high: float | None) -> None:
    if low is not None and high is not None and low > high:
        raise Unprocessable(f"greening_min_pct {low} is above greening_max_pct {high}")


@router.post("", status_code=201, responses=ADMIN_ERRORS)
def create_site(body: SiteCreate, registry: RegistryDep, _admin: AdminDep) -> SitePublic:
    _check_greening_bounds(body.greening_min_pct, body.greening_max_pct)
    try:
        return SitePublic.model_validate(registry.create_site(body.model_dump()))
    except RegistryError as exc:
        raise Conflict(str(exc)) from exc


@router.get("/{site}")
def get_site(site: str, registry: RegistryDep, who: PrincipalDep) -> SitePublic:
    return SitePublic.model_validate(scoped_site(registry, who, site))


@router.patch("/{site}", responses=ADMIN_ERRORS)
def update_site(site: str, body: SiteUpdate, registry: RegistryDep, who: PrincipalDep) -> SitePublic:
    current = admin_site(registry, who, site)
    fields = body.model_dump(exclude_unset=True)
    _check_greening_bounds(fields.get("greening_min_pct", current.greening_min_pct),
                           fields.get("greening_max_pct", current.greening_max_pct))
    updated = registry.update_site(site, fields)
    return SitePublic.model_validate(updated)


@router.delete("/{site}", status_code=204, response_class=Response, responses=ADMIN_ERRORS)
def delete_site(site: str, registry: RegistryDep, who: PrincipalDep) -> Response:
    """Delete a site and its devices from the registry (their readings stay in the store)."""
    admin_site(registry, who, site)
    registry.delete_site(site)
    return Response(status_code=204)


@router.get("/{site}/devices")
def list_devices(site: str, registry: RegistryDep, who: PrincipalDep, offset: Offset = 0,
                 limit: Limit = 100) -> Page[DevicePublic]:
    scoped_site(registry, who, site)
    devices = registry.devices(site)
    items = [DevicePublic.model_validate(d) for d in devices[offset:offset + limit]]
    return Page[DevicePublic](items=items, total=len(devices), offset=offset, limit=limit)


@router.post("/{site}/devices", status_code=201, responses=ADMIN_ERRORS)
def create_device(site: str, body: DeviceCreate, registry: RegistryDep, who: PrincipalDep) -> DeviceProvisioned:
    """Add a device and provision its MQTT credentials (the password is in this response only)."""
    admin_site(registry, who, site)
    problem = registry.hierarchy_problem(site, body.id, body.model_dump())
    if problem and registry.device(body.id) is None:
        raise Unprocessable(problem)
    try:
        registry.create_device(site, body.model_dump())
    except RegistryError as exc:
        raise Conflict(str(exc)) from exc
    return provisioned(registry, body.id)


def provisioned(registry: RegistryDep, device_id: str) -> DeviceProvisioned:
    password = registry.provision_device(device_id)
    device = DevicePublic.model_validate(registry.device(device_id))
    return DeviceProvisioned(**device.model_dump(), mqtt_username=device.id, mqtt_password=password,
                             topic=telemetry_topic(device.site_id, device.id))


@router.get("/{site}/latest")
def latest(  # noqa: PLR0917 - FastAPI parameters
        site: str, registry: RegistryDep, store: StoreDep, catalog: CatalogDep, settings: SettingsDep,
           who: PrincipalDep) -> list[LatestDevice]:
    """For each device, each metric's latest value, time, age, staleness and flag (N when normal)."""
    scoped_site(registry, who, site)
    now_ms = clock.now_ms()
    stale_ms = settings.api_stale_after_s * 1000
    by_device: dict[str, LatestDevice] = {}
    for v in store.latest(site):
        age_ms = now_ms - v.ts_ms
        entry = by_device.setdefault(v.device, LatestDevice(device=v.device, measurement=v.measurement,
                                                            age_s=age_ms / 1000, stale=age_ms > stale_ms,
                                                            metrics={}))
        entry.metrics[v.metric] = LatestMetric(
            value=v.value, ts=datetime.fromtimestamp(v.ts_ms / 1000, UTC), age_s=age_ms / 1000,
            stale=age_ms > stale_ms, flag=v.flag or "N", unit=catalog[v.metric].unit)
        if age_ms / 1000 < entry.age_s:
            entry.age_s, entry.stale = age_ms / 1000, age_ms > stale_ms
    return sorted(by_device.values(), key=lambda d: d.device)
