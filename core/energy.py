"""Energy figures shared by the API's KPIs and the alert engine: which meters make a site's total, and the
counter query with the bounds that make a step count (rules in core/store/base.py SeriesQuery ``delta``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from smartpark.core.registry.hierarchy import effective_role
from smartpark.core.registry.models import Device
from smartpark.core.store.base import DAY_MS, SeriesQuery

__all__ = ["CounterRules", "counter_query", "energy_meters", "main_meter_ids", "role_of"]


@dataclass(frozen=True, slots=True)
class CounterRules:
    """The settings that bound a counter step: the longest gap, and default bounds per metric (per hour)."""

    max_gap_ms: int = DAY_MS
    max_per_h: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, max_gap_s: int, max_per_h: dict[str, float]) -> CounterRules:
        """From the settings ``counter_max_gap_s`` and ``counter_max_per_h``."""
        return cls(max_gap_s * 1000, tuple(sorted(max_per_h.items())))


def energy_meters(devices: Iterable[Device]) -> list[Device]:
    return [d for d in devices if d.kind == "energy_meter"]


def role_of(d: Device) -> str:
    """A meter's role as it counts (the default where none is set: core/registry/hierarchy.py)."""
    return effective_role(d.kind, d.role, d.parent_id) or "main"


def main_meter_ids(devices: Iterable[Device]) -> set[str]:
    return {d.id for d in energy_meters(devices) if role_of(d) == "main"}


def counter_query(metric: str, span: tuple[int, int, int], rules: CounterRules, meters: Sequence[Device],
                  site: str | None) -> SeriesQuery:
    """A delta query over ``span`` (start ms, end ms, window ms) per device: each meter's rated power its bound
    for electricity, else the default bound of the metric."""
    start_ms, end_ms, every_ms = span
    bounds = tuple((d.id, d.rated_kw) for d in meters if metric == "energy_kwh" and d.rated_kw)
    return SeriesQuery("energy", metric, start_ms, end_ms, every_ms, "delta", site=site,
                       max_gap_ms=rules.max_gap_ms, max_per_h=dict(rules.max_per_h).get(metric),
                       device_max_per_h=bounds)


