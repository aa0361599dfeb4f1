"""What the overview page at / shows: per site its latest key figures, stale devices, active alerts and the
last 24 h as sparklines. Gathered here from the store and the registry; the page only lays it out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from smartpark.core.registry import Registry, Site
from smartpark.core.store.base import DAY_MS, SeriesQuery, TimeSeriesStore

__all__ = ["ActiveAlert", "SiteCard", "active_alerts", "site_card", "site_cards", "sparkline"]

HOUR_MS = 3_600_000
# key figures: (metric, label, how the site's devices combine)
KEY_FIGURES = (("power_kw", "power", "sum"), ("nox_mg_m3", "NOx max", "max"), ("so2_mg_m3", "SO2 max", "max"),
               ("green_area_m2", "green area", "sum"))


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    site: str
    device: str | None
    metric: str | None
    severity: str
    started_ms: int
    value: float | None
    limit: float | None
    message: str


@dataclass(slots=True)
class SiteCard:
    site: Site
    figures: list[tuple[str, float, str]] = field(default_factory=list)  # (label, value, unit)
    devices: int = 0
    stale: list[tuple[str, float]] = field(default_factory=list)  # (device, age s)
    power_24h: str = ""  # inline SVG
    alerts: list[ActiveAlert] = field(default_factory=list)


def active_alerts(registry: Registry, sites: set[str]) -> list[ActiveAlert]:
    """Firing alert episodes of ``sites``, newest first; [] while the alert tables do not exist yet (they are
    the alert engine's: read by table name, so the API never imports the alerts service)."""
    if not sites:
        return []
    query = text(
        'SELECT site, device, metric, severity, started_ms, value, "limit", message FROM alert_episodes '
        "WHERE state = 'firing' AND site IN :sites ORDER BY started_ms DESC LIMIT 200"
    ).bindparams(bindparam("sites", expanding=True))  # scope before LIMIT: others' alerts never crowd out
    try:
        if not inspect(registry.engine).has_table("alert_episodes"):
            return []
        with registry.engine.connect() as conn:
            rows = conn.execute(query, {"sites": sorted(sites)}).all()
    except SQLAlchemyError:
        return []
    return [ActiveAlert(*row) for row in rows]


# the cards' store queries wait on the store, not the CPU: a few sites at a time (threads kept, so an embedded
# store's per-thread SQLite connections are reused)
_CARDS = ThreadPoolExecutor(4, thread_name_prefix="overview")


def site_cards(store: TimeSeriesStore, registry: Registry, sites: Sequence[Site], catalog: Any,
               stale_s: float) -> list[SiteCard]:
    """The cards of ``sites`` in their order, gathered concurrently."""
    return list(_CARDS.map(lambda s: site_card(store, registry, s, catalog, stale_s), sites))


def site_card(store: TimeSeriesStore, registry: Registry, site: Site, catalog: Any, stale_s: float) -> SiteCard:
    reporting = [d.id for d in registry.devices(site.id) if d.kind != "gateway"]
    card = SiteCard(site, devices=len(reporting))
    now = time.time_ns() // 1_000_000
    latest = store.latest(site.id)
    newest: dict[str, int] = {}
    for v in latest:
        newest[v.device] = max(newest.get(v.device, 0), v.ts_ms)
    # a device silent for longer than the store's lookback has no latest value at all: stale too (age -1)
    ages = {d: (now - newest[d]) / 1000 if d in newest else -1.0 for d in reporting}
    card.stale = sorted((d, age) for d, age in ages.items() if age < 0 or age > stale_s)
    for metric, label, how in KEY_FIGURES:
        values = [v.value for v in latest if v.metric == metric and now - v.ts_ms <= stale_s * 1000]
        if values:
            card.figures.append((label, sum(values) if how == "sum" else max(values), catalog[metric].unit))
    end = now - now % HOUR_MS + HOUR_MS
    # the meters' hourly mean power, summed per hour: one cheap GROUP BY in the store (a counter delta over
    # every meter costs InfluxDB 1.6 a subquery, ten times slower, too slow for a page refreshing itself)
    query = SeriesQuery("energy", "power_kw", end - DAY_MS, end, HOUR_MS, "mean", site=site.id)
    hourly: dict[int, float] = {}
    for s in store.series(query):
        for ts, v in s.points:
            hourly[ts] = hourly.get(ts, 0.0) + v
    card.power_24h = sparkline([hourly[t] for t in sorted(hourly)], "power, sum of the meters' hourly means, 24 h")
    return card


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
