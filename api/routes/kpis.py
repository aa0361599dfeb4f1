"""Regulatory KPIs per site and for the park over a period of local days (computation in api/kpis.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from smartpark.api import kpis
from smartpark.api.deps import CatalogDep, PrincipalDep, ReferenceDep, RegistryDep, SettingsDep, StoreDep, scoped_site
from smartpark.api.errors import ERRORS, Unprocessable
from smartpark.api.limits import HeavyDep, check_cost
from smartpark.api.models import CounterEventPublic, EmissionsKpi, EnergyKpi, GreeningKpi, ParkKpis, SiteKpis
from smartpark.api.summary import local_tz
from smartpark.core.reference import Reference
from smartpark.core.registry import Registry, Site
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

router = APIRouter(prefix="/v1", tags=["kpis"], responses=ERRORS)

MAX_DAYS = 400
FIRST_DAY, LAST_DAY = date(1970, 1, 2), date(2199, 12, 31)  # what every store can represent, any time zone
Start = Annotated[date | None, Query(description="First local day (park time zone); default: this month's first",
                                     examples=["2026-01-01"])]
End = Annotated[date | None, Query(description="Local day after the last one; default: tomorrow",
                                   examples=["2026-02-01"])]


def _period(registry: Registry, start: date | None, end: date | None) -> kpis.Period:
    tz = local_tz(registry)
    for name, day in (("start", start), ("end", end)):
        if day is not None and not FIRST_DAY <= day <= LAST_DAY:
            raise Unprocessable(f"{name}={day.isoformat()}: days lie between {FIRST_DAY} and {LAST_DAY}")
    if start and end and end <= start:
        raise Unprocessable("end must be after start")
    p = kpis.period(tz, start, end)
    if p.end_ms <= p.start_ms:
        raise Unprocessable("end must be after start")
    if p.days > MAX_DAYS:
        raise Unprocessable(f"the period may span at most {MAX_DAYS} days")
    return p


def _sized(settings: Settings, registry: Registry, sites: Sequence[Site], p: kpis.Period) -> kpis.Period:
    """The period, if its KPIs are within SMARTPARK_API_MAX_QUERY_COST (every device's minutes are read)."""
    devices = sum(d.kind != "gateway" for s in sites for d in registry.devices(s.id))
    check_cost(settings, devices=devices, range_ms=p.end_ms - p.start_ms, window_ms=60_000, what="KPI request",
               narrow=["a shorter period (start, end)"] + (["one site's KPIs"] if len(sites) > 1 else []))
    return p


def _region(registry: Registry) -> str:
    park = registry.park()
    return park.region if park else "national"


@router.get("/sites/{site}/kpis/energy")
def site_energy(site: str, registry: RegistryDep, store: StoreDep, ref: ReferenceDep, settings: SettingsDep,  # noqa: PLR0917 - FastAPI parameters
                who: HeavyDep, start: Start = None, end: End = None) -> EnergyKpi:
    """Consumption per carrier (reset-aware), tce, CO2 from electricity, intensity and quota use."""
    s = scoped_site(registry, who, site)
    p = _sized(settings, registry, [s], _period(registry, start, end))
    meters = kpis.energy_meters(registry.devices(s.id))
    usage = kpis.energy_usage(store, ref, meters, s.id, p, rules=_rules(settings))
    return kpis.energy_kpi(usage, ref, _region(registry), [s], meters, p=p)


def _rules(settings: Settings) -> kpis.CounterRules:
    return kpis.CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)


@router.get("/sites/{site}/kpis/emissions")
def site_emissions(site: str, registry: RegistryDep, store: StoreDep, ref: ReferenceDep, settings: SettingsDep,  # noqa: PLR0917 - FastAPI parameters
                   who: HeavyDep, start: Start = None, end: End = None,
                   hours: Annotated[bool, Query(description="List every hour, not only the exceeding ones")] = False,
                   ) -> EmissionsKpi:
    """Hourly O2-corrected means of valid minutes per stack and pollutant, and the compliance rate."""
    s = scoped_site(registry, who, site)
    p = _sized(settings, registry, [s], _period(registry, start, end))
    return _emissions(registry, store, ref, settings, site=s, p=p, hours=hours)


def _emissions(registry: Registry, store: TimeSeriesStore, ref: Reference, settings: Settings, *, site: Site,
               p: kpis.Period, hours: bool = False) -> EmissionsKpi:
    stacks = [d for d in registry.devices(site.id) if d.kind == "cems"]
    return kpis.emissions_kpi(store, ref, site, stacks, p, min_minutes=settings.kpi_min_valid_minutes, hours=hours)


@router.get("/sites/{site}/kpis/greening")
def site_greening(site: str, registry: RegistryDep, store: StoreDep, ref: ReferenceDep, settings: SettingsDep,  # noqa: PLR0917 - FastAPI parameters
                  who: HeavyDep, start: Start = None, end: End = None) -> GreeningKpi:
    """Mean green area over the site's area, against its band."""
    s = scoped_site(registry, who, site)
    green = kpis.green_area(store, s.id, _sized(settings, registry, [s], _period(registry, start, end)))
    return kpis.greening_kpi(s, green.get(s.id), ref)


@router.get("/kpis")
def park_kpis(registry: RegistryDep, store: StoreDep, ref: ReferenceDep, settings: SettingsDep, who: HeavyDep,  # noqa: PLR0917 - FastAPI parameters
              start: Start = None, end: End = None) -> ParkKpis:
    """Every visible site's KPIs and the park's totals (a site key sees its own sites only)."""
    sites = [s for s in registry.sites() if who.can_see(s.id)]
    p = _sized(settings, registry, sites, _period(registry, start, end))
    region = _region(registry)
    green = kpis.green_area(store, None, p)
    visible = {s.id for s in sites}
    meters = [d for d in kpis.energy_meters(registry.devices()) if d.site_id in visible]
    usage = kpis.energy_usage(store, ref, meters, None, p, rules=_rules(settings))
    rows, valid, compliant = [], 0, 0
    for s in sites:
        em = _emissions(registry, store, ref, settings, site=s, p=p)
        valid += sum(x.hours_valid for st in em.stacks for x in st.pollutants)
        compliant += sum(x.hours_compliant for st in em.stacks for x in st.pollutants)
        rows.append(SiteKpis(site=s.id, energy=kpis.energy_kpi(usage, ref, region, [s], meters, p=p),
                             emissions_compliance_pct=em.compliance_pct, emissions_meets_target=em.meets_target,
                             greening=kpis.greening_kpi(s, green.get(s.id), ref)))
    return ParkKpis(start=p.dt(p.start_ms), end=p.dt(p.end_ms),
                    energy=kpis.energy_kpi(usage, ref, region, sites, meters, p=p, park=True),
                    emissions_compliance_pct=100 * compliant / valid if valid else None,
                    greening_coverage_pct=kpis.park_coverage(r.greening for r in rows), sites=rows)


Kind = Annotated[Literal["reset", "implausible", "gap"] | None, Query(description="Only events of this kind")]


@router.get("/data-quality")
def data_quality(registry: RegistryDep, store: StoreDep, settings: SettingsDep, catalog: CatalogDep,  # noqa: PLR0917 - FastAPI parameters
                 who: PrincipalDep, site: Annotated[str | None, Query(description="One site; default: all visible")]
                 = None, start: Start = None, end: End = None, kind: Kind = None) -> list[CounterEventPublic]:
    """The energy counters' steps that were not ordinary increases, as the KPIs counted them: resets (the reading
    after counted), implausible steps and gaps (excluded). Computed from the stored readings on each call."""
    p = _period(registry, start, end)
    visible = {scoped_site(registry, who, site).id} if site else {s.id for s in registry.sites() if who.can_see(s.id)}
    meters = [d for d in kpis.energy_meters(registry.devices()) if d.site_id in visible]
    rules = _rules(settings)
    out = []
    for metric in sorted(m.name for m in catalog.in_domain("energy") if m.kind == "counter"):
        _, events = store.counter_deltas(kpis.counter_query(metric, p, rules, meters, site))
        out += [kpis.counter_event(metric, e, p) for e in events
                if e.site in visible and (kind is None or e.kind == kind)]
    out.sort(key=lambda e: (e.at, e.site, e.device, e.metric))
    return out
