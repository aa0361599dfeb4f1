"""The time-series store interface: write points, a series of windows, the latest values of a site.

Two backends implement it: InfluxDB over its v1 HTTP API (production) and SQLite (embedded defaults).
Calls are synchronous: the ingest writes from its own thread, the API runs them in its thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol

import msgspec

from smartpark.core.points import Point

__all__ = ["AGGREGATES", "Agg", "LatestValue", "Series", "SeriesQuery", "TimeSeriesStore"]

Agg = Literal["mean", "min", "max", "last", "sum", "count"]
AGGREGATES: tuple[Agg, ...] = ("mean", "min", "max", "last", "sum", "count")
DAY_MS = 86_400_000


class SeriesQuery(msgspec.Struct, frozen=True):
    """Windows of one field of one measurement, filtered by site and/or device.

    Windows are aligned to ``every_ms`` from the epoch (as InfluxDB's GROUP BY time does) and labelled by
    their start; empty windows are left out.
    """

    measurement: str
    field: str
    start_ms: int
    end_ms: int  # exclusive
    every_ms: int
    agg: Agg = "mean"
    site: str | None = None
    device: str | None = None
    group_by: Literal["device", "site"] = "device"


class Series(NamedTuple):
    site: str
    device: str | None  # None when grouped by site
    points: list[tuple[int, float]]  # (window start ms, value)


class LatestValue(NamedTuple):
    site: str
    device: str
    measurement: str
    metric: str
    ts_ms: int
    value: float
    flag: str | None  # None means N (normal)


class TimeSeriesStore(Protocol):
    """What the services need from a time-series store."""

    def init(self) -> None:
        """Create the database or schema (idempotent)."""

    def ping(self) -> None:
        """Return when the store is reachable; raise StoreUnavailable otherwise."""

    def write(self, points: Sequence[Point]) -> None:
        """Write points; a point with the same measurement, tags and time overwrites (redelivery-safe)."""

    def series(self, query: SeriesQuery) -> list[Series]:
        """Aggregate one field over windows, computed by the store."""

    def latest(self, site: str, *, lookback_ms: int = 7 * DAY_MS) -> list[LatestValue]:
        """The latest value of each metric of each device of ``site`` within the lookback."""

    def close(self) -> None:
        """Release connections."""


def check_points(points: Sequence[Point]) -> None:
    """Guard shared by the backends: empty field sets cannot be written by InfluxDB."""
    for p in points:
        if not p.fields:
            raise ValueError(f"point {p.measurement}/{p.site}/{p.device}@{p.ts_ms} has no fields")
