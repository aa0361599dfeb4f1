"""Counters continue from what is stored: a simulated meter never starts again from its seeded value.

A simulator run (live, accelerated, backfill) starts every counter of every device at the value last stored
for that device before the run's start, where there is one. Otherwise a second run would begin each counter
at its seeded value again, and the step from the stored value to it (down: a reset; up: gigawatt-hours in
a minute) would land in the figures (issue 12: 26 GWh counted in one minute of one meter).
"""

from __future__ import annotations

from smartpark.core.catalog import Catalog
from smartpark.core.registry.parkfile import ParkFile
from smartpark.core.store.base import DAY_MS, SeriesQuery, TimeSeriesStore

__all__ = ["AHEAD_MS", "LOOKBACK_MS", "Counters", "stored_counters"]

LOOKBACK_MS = 31 * DAY_MS  # a meter silent for longer starts from its seeded value
# A device's clock may run ahead (the ingest takes readings up to 5 minutes in the future): what it stamped
# that far past the start was still measured before it, so it counts as before the start.
AHEAD_MS = 5 * 60_000

Counters = dict[str, dict[str, float]]  # device -> counter metric -> value


def stored_counters(store: TimeSeriesStore, park: ParkFile, catalog: Catalog, before_ms: int) -> Counters:
    """device -> metric -> the last stored value before ``before_ms`` (within LOOKBACK_MS; AHEAD_MS after it
    included), for the park's devices and the catalog's counters: one `last` query per counter metric."""
    devices = {d.id for s in park.sites for d in s.devices}
    out: Counters = {}
    for metric in sorted((m for m in catalog.metrics.values() if m.kind == "counter"), key=lambda m: m.name):
        query = SeriesQuery(metric.domain, metric.name, before_ms - LOOKBACK_MS, before_ms + AHEAD_MS, LOOKBACK_MS,
                            "last")
        for s in store.series(query):
            if s.device in devices and s.points:
                out.setdefault(s.device, {})[metric.name] = max(s.points)[1]
    return out
