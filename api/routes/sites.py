"""Sites, their devices and their latest values, scoped by the caller's key."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from smartpark.api.deps import CatalogDep, PrincipalDep, RegistryDep, StoreDep, scoped_site
from smartpark.api.models import DevicePublic, LatestDevice, LatestMetric, Page, SitePublic

router = APIRouter(prefix="/v1/sites", tags=["sites"])

Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.get("")
def list_sites(registry: RegistryDep, who: PrincipalDep, offset: Offset = 0, limit: Limit = 100
               ) -> Page[SitePublic]:
    sites = [s for s in registry.sites() if who.can_see(s.id)]
    items = [SitePublic.model_validate(s) for s in sites[offset:offset + limit]]
    return Page[SitePublic](items=items, total=len(sites), offset=offset, limit=limit)


@router.get("/{site}")
def get_site(site: str, registry: RegistryDep, who: PrincipalDep) -> SitePublic:
    return SitePublic.model_validate(scoped_site(registry, who, site))


@router.get("/{site}/devices")
def list_devices(site: str, registry: RegistryDep, who: PrincipalDep, offset: Offset = 0,
                 limit: Limit = 100) -> Page[DevicePublic]:
    scoped_site(registry, who, site)
    devices = registry.devices(site)
    items = [DevicePublic.model_validate(d) for d in devices[offset:offset + limit]]
    return Page[DevicePublic](items=items, total=len(devices), offset=offset, limit=limit)


@router.get("/{site}/latest")
def latest(site: str, registry: RegistryDep, store: StoreDep, catalog: CatalogDep, who: PrincipalDep
           ) -> list[LatestDevice]:
    """For each device, each metric's latest value, time, age and flag (N when normal)."""
    scoped_site(registry, who, site)
    now_ms = time.time_ns() // 1_000_000
    by_device: dict[str, LatestDevice] = {}
    for v in store.latest(site):
        entry = by_device.setdefault(v.device, LatestDevice(device=v.device, measurement=v.measurement,
                                                            metrics={}))
        entry.metrics[v.metric] = LatestMetric(
            value=v.value, ts=datetime.fromtimestamp(v.ts_ms / 1000, UTC), age_s=(now_ms - v.ts_ms) / 1000,
            flag=v.flag or "N", unit=catalog[v.metric].unit)
    return sorted(by_device.values(), key=lambda d: d.device)
