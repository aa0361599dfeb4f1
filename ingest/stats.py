"""The ingest's own figures: counters and gauges, for Prometheus (/metrics) and as `platform` points.

Counting is plain dict arithmetic under a lock (the hot path adds per batch, not per message); a
prometheus_client Collector turns the current values into metric families when scraped.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from smartpark.core.points import Point

__all__ = ["HELP", "IngestStats"]

HELP = {
    "messages_received": "MQTT messages received",
    "messages_committed": "messages whose data was durably handed off and acked",
    "readings_stored": "valid readings handed to the store or the spool",
    "points_written": "points written to the store or the spool",
    "points_spooled": "points written to the local spool while the store was down or slow",
    "points_replayed": "spooled points moved into the store",
    "batches": "batches committed",
    "write_failures": "store writes that failed and were spooled",
    "spool_full_waits": "waits because the spool was full (acks stopped)",
    "spool_bytes": "bytes in the spool",
    "last_batch_points": "points in the last batch",
    "last_write_seconds": "seconds the last batch took to hand off",
    "in_flight_messages": "messages received but not yet acked",
    "late_points_checked": "points at or before their device's last reading time, looked up for changed values",
    "rewrites_recorded": "stored values changed by a later reading, recorded in the audit trail",
    "rewrite_checks_failed": "late points stored unchecked because the store could not be asked",
    "dead_letters_pruned": "dead letters dropped by the size or age limit of the dead-letter file",
}


class IngestStats(Collector):
    """Thread-safe counters; `snapshot()` for tests, `registry` for Prometheus, `points()` for the store."""

    def __init__(self, prefix: str = "smartpark_ingest", help_text: dict[str, str] | None = None) -> None:
        self.prefix = prefix
        self.help = HELP if help_text is None else help_text
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def set_counter(self, name: str, value: int) -> None:
        """For counts kept elsewhere (the batcher's), published here."""
        with self._lock:
            self.counters[name] = value

    def reject(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.rejected[reason] += n

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {**self.counters, **self.gauges, "rejected": dict(self.rejected)}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        with self._lock:
            counters, rejected, gauges = dict(self.counters), dict(self.rejected), dict(self.gauges)
        for name, value in sorted(counters.items()):
            yield CounterMetricFamily(f"{self.prefix}_{name}", self.help.get(name, name), value=value)
        family = CounterMetricFamily(f"{self.prefix}_rejected", "rejected messages or readings by reason",
                                     labels=["reason"])
        for reason, value in sorted(rejected.items()):
            family.add_metric([reason], value)
        yield family
        for name, level in sorted(gauges.items()):
            yield GaugeMetricFamily(f"{self.prefix}_{name}", self.help.get(name, name), value=level)

    def points(self, instance: str, ts_ms: int) -> list[Point]:
        with self._lock:
            fields: dict[str, float | str] = {f"{k}_total": float(v) for k, v in self.counters.items()}
            fields |= {f"rejected_{r}_total": float(v) for r, v in self.rejected.items()}
            fields |= {k: float(v) for k, v in self.gauges.items()}
        return [Point("platform", "_platform", instance, ts_ms, fields)] if fields else []
