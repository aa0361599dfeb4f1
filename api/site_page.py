"""What a site's page shows beyond the overview card: hourly emission means of today and yesterday against
their limits per stack and pollutant, the month's energy per local day and meter (main and sub-meters, in
tce), and the site's active alerts. Computed with the KPI functions (api/kpis.py), for one site."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from smartpark.api import charts, kpis
from smartpark.api.summary import SiteSummary, local_tz
from smartpark.core.reference import Reference
from smartpark.core.registry import Registry, Site
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["SitePage", "energy_chart", "site_page"]


@dataclass(frozen=True, slots=True)
class SitePage:
    emission_charts: list[str]  # inline SVG per stack and pollutant
    meters: list[tuple[str, str]]  # (device, role)
    days: list[tuple[date, list[float | None]]]  # per local day, tce per meter in ``meters`` order


def energy_chart(m: SiteSummary) -> str:
    """The month's energy per local day against the daily quota (the quota over the days, evenly)."""
    days = sorted(m.energy_days)
    n = (m.end - m.start).days
    quota_day = m.quota_tce / n if m.quota_tce and n else None
    return charts.bars([d.strftime("%d") for d in days], [m.energy_days[d] for d in days], unit="tce",
                       title=f"Energy per local day since {m.start} (main meters)", limit=quota_day,
                       limit_label="daily quota", every=max(len(days) // 10, 1))


def site_page(registry: Registry, store: TimeSeriesStore, ref: Reference, settings: Settings, site: Site,
              ) -> SitePage:
    tz = local_tz(registry)
    today = datetime.now(tz).date()
    devices = registry.devices(site.id)
    stacks = [d for d in devices if d.kind == "cems"]
    p = kpis.period(tz, today - timedelta(days=1), today + timedelta(days=1))
    em = kpis.emissions_kpi(store, ref, site, stacks, p, min_minutes=settings.kpi_min_valid_minutes, hours=True)
    figures = []
    for stack in em.stacks:
        for x in stack.pollutants:
            hours = x.hours or []
            figures.append(charts.bars(
                [h.start.strftime("%H") for h in hours],
                [None if h.status == "invalid" else h.mean_mg_m3 for h in hours], unit="mg/m3",
                title=f"{stack.device} {x.pollutant}: hourly means, yesterday and today (local hours)",
                limit=x.limit_mg_m3, limit_label=f"limit {x.limit_mg_m3:g} mg/m3", every=3))
    meters = kpis.energy_meters(devices)
    month = kpis.period(tz, today.replace(day=1), today + timedelta(days=1))
    rules = kpis.CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)
    usage = kpis.energy_usage(store, ref, meters, site.id, month, rules=rules)
    kgce = {c.metric: c.kgce_per_unit for c in ref.energy.carriers.values()}
    per_day: dict[date, dict[str, float]] = {}
    for (metric, device), windows in usage.windows.items():
        for ts, amount in windows.items():
            row = per_day.setdefault(month.dt(ts).date(), {})
            row[device] = row.get(device, 0.0) + amount * kgce.get(metric, 0.0) / 1000
    order = [(d.id, kpis.role_of(d)) for d in meters]
    return SitePage(figures, order, [(d, [per_day[d].get(m) for m, _ in order]) for d in sorted(per_day)])
