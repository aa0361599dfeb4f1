"""The ingest's own figures: counters and gauges, as Prometheus text and as `platform` points."""

from __future__ import annotations

import threading
from collections import Counter

from smartpark.core.points import Point

__all__ = ["IngestStats"]


class IngestStats:
    """Thread-safe counters; `snapshot()` for tests, `prometheus()` for /metrics, `points()` for the store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def reject(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.rejected[reason] += n

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {**self.counters, **self.gauges, "rejected": dict(self.rejected)}

    def prometheus(self) -> str:
        with self._lock:
            lines = [f"smartpark_ingest_{k}_total {v}" for k, v in sorted(self.counters.items())]
            lines += [f'smartpark_ingest_rejected_total{{reason="{r}"}} {v}' for r, v in sorted(self.rejected.items())]
            lines += [f"smartpark_ingest_{k} {v}" for k, v in sorted(self.gauges.items())]
        return "\n".join(lines) + "\n"

    def points(self, instance: str, ts_ms: int) -> list[Point]:
        with self._lock:
            fields: dict[str, float | str] = {f"{k}_total": float(v) for k, v in self.counters.items()}
            fields |= {f"rejected_{r}_total": float(v) for r, v in self.rejected.items()}
            fields |= {k: float(v) for k, v in self.gauges.items()}
        return [Point("platform", "_platform", instance, ts_ms, fields)] if fields else []
