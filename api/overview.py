"""What the overview page at / shows: per site its latest key figures, stale devices, active alerts and the
last 24 h as sparklines. Gathered here from the store and the registry; the page only lays it out."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from smartpark.alerts.access import AlertAccess, EpisodeRecord
from smartpark.alerts.errors import AlertsUnavailable
from smartpark.api.errors import alerts_unavailable
from smartpark.core.clock import now_ms
from smartpark.core.registry import Registry, Site
from smartpark.core.registry.hierarchy import effective_role
from smartpark.core.store.base import DAY_MS, LatestValue, SeriesQuery, TimeSeriesStore

__all__ = ["SiteCard", "active_alerts", "site_cards", "sparkline", "stale_devices"]

HOUR_MS = 3_600_000
# key figures: (metric, label, how the site's devices combine); power: the main meters' only
KEY_FIGURES = (("power_kw", "power", "sum"), ("nox_mg_m3", "NOx max", "max"), ("so2_mg_m3", "SO2 max", "max"),
               ("green_area_m2", "green area", "sum"))


@dataclass(slots=True)
class SiteCard:
    site: Site
    figures: list[tuple[str, float, str]] = field(default_factory=list)  # (label, value, unit)
    devices: int = 0
    stale: list[tuple[str, float]] = field(default_factory=list)  # (device, age s)
    power_24h: str = ""  # inline SVG


def active_alerts(alerts: AlertAccess, sites: set[str]) -> tuple[list[EpisodeRecord], bool]:
    """(firing episodes of ``sites`` newest first, whether they could be read): when the alert tables fail, the
    page shows the rest with an "alerts unavailable" notice, never "no active alerts"."""
    try:
        return alerts.active(sites), True
    except AlertsUnavailable as exc:
        alerts_unavailable(exc)
        return [], False


_POWER = ThreadPoolExecutor(2, thread_name_prefix="overview")  # the power query beside latest_many's


def site_cards(store: TimeSeriesStore, registry: Registry, sites: Sequence[Site], catalog: Any,
               stale_s: float) -> list[SiteCard]:
    """The cards of ``sites`` in their order, from two store calls for all of them (latest values, and the
    meters' hourly power): per-site calls cost the store ten times the statements."""
    now = now_ms()
    ids = [s.id for s in sites]
    mains = main_meters(registry)
    power_future = _POWER.submit(_hourly_power, store, ids, now, mains)  # meanwhile: the latest values
    latest = store.latest_many(ids)
    power = power_future.result()
    return [_card(registry, site, latest[site.id], power.get(site.id, {}), catalog=catalog, stale_s=stale_s, now=now,
                  mains=mains) for site in sites]


def main_meters(registry: Registry) -> set[str]:
    """The registry's main meters (role main, or the default): a site's power and energy are theirs alone,
    sub-meters beneath them would count it twice (core/registry/hierarchy.py)."""
    return {d.id for d in registry.devices() if effective_role(d.kind, d.role, d.parent_id) == "main"}


def _hourly_power(store: TimeSeriesStore, sites: list[str], now: int, mains: set[str]) -> dict[str, dict[int, float]]:
    """site -> hour -> the main meters' hourly mean power, summed: one cheap GROUP BY in the store (a counter delta
    over every meter costs InfluxDB 1.6 a subquery, ten times slower, too slow for a page refreshing itself).
    One site's is asked for by site; several sites' in one query over the park, others' meters dropped."""
    end = now - now % HOUR_MS + HOUR_MS
    wanted = set(sites)
    query = SeriesQuery("energy", "power_kw", end - DAY_MS, end, HOUR_MS, "mean",
                        site=sites[0] if len(sites) == 1 else None)
    out: dict[str, dict[int, float]] = {}
    for s in store.series(query) if sites else []:
        if s.site in wanted and s.device in mains:
            hourly = out.setdefault(s.site, {})
            for ts, v in s.points:
                hourly[ts] = hourly.get(ts, 0.0) + v
    return out


def _card(registry: Registry, site: Site, latest: list[LatestValue], hourly: dict[int, float], *, catalog: Any,
          stale_s: float, now: int, mains: set[str]) -> SiteCard:
    reporting = [d.id for d in registry.devices(site.id) if d.kind != "gateway"]
    card = SiteCard(site, devices=len(reporting))
    card.stale = stale_devices(reporting, latest, now, stale_s)
    for metric, label, how in KEY_FIGURES:
        values = [v.value for v in latest if v.metric == metric and now - v.ts_ms <= stale_s * 1000
                  and (metric != "power_kw" or v.device in mains)]
        if values:
            card.figures.append((label, sum(values) if how == "sum" else max(values), catalog[metric].unit))
    card.power_24h = sparkline([hourly[t] for t in sorted(hourly)],
                               "power, sum of the main meters' hourly means, 24 h")
    return card


def stale_devices(devices: Sequence[str], latest: Sequence[LatestValue], now: int, stale_s: float
                  ) -> list[tuple[str, float]]:
    """(device, age s) of the devices not heard from within ``stale_s``; age -1: no reading within the store's
    lookback at all. A clock running ahead gives a reading from the future: age 0, fresh (as the API says),
    never the "no reading" mark a negative age used to be taken for."""
    newest: dict[str, int] = {}
    for v in latest:
        newest[v.device] = max(newest.get(v.device, v.ts_ms), v.ts_ms)
    ages = {d: max(now - newest[d], 0) / 1000 if d in newest else -1.0 for d in devices}
    return sorted((d, age) for d, age in ages.items() if age < 0 or age > stale_s)


def sparkline(values: list[float], title: str, width: int = 240, height: int = 48) -> str:
    """A small inline SVG line chart; empty when there is nothing to draw."""
    if len(values) < 2:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 4 - (v - low) / span * (height - 8):.1f}"
                      for i, v in enumerate(values))
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
            f"<title>{title}</title>"
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{points}"/></svg>')
