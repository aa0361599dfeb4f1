"""The time-series store interface: write points, a series of windows, the latest values of a site.

Two backends implement it: InfluxDB over its v1 HTTP API (production) and SQLite (embedded defaults).
Calls are synchronous: the ingest writes from its own thread, the API runs them in its thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol

import msgspec

from smartpark.core.points import Point

__all__ = ["AGGREGATES", "Agg", "LatestValue", "MinuteQuery", "MinuteRow", "Series", "SeriesQuery",
           "TimeSeriesStore"]

# `delta`: a counter's consumption per window, reset-aware (see SeriesQuery)
Agg = Literal["mean", "min", "max", "last", "sum", "count", "delta"]
AGGREGATES: tuple[Agg, ...] = ("mean", "min", "max", "last", "sum", "count", "delta")
DAY_MS = 86_400_000
MINUTE_MS = 60_000


class SeriesQuery(msgspec.Struct, frozen=True):
    """Windows of one field of one measurement, filtered by site and/or device.

    Windows are aligned to ``every_ms`` from the epoch (as InfluxDB's GROUP BY time does) and labelled by
    their start; empty windows are left out.

    ``delta`` (counters): each minute's last value minus the previous minute's last value (the minute before
    ``start`` included), summed per window. A decrease is a meter reset: that step counts 0, never negative.
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


class MinuteQuery(msgspec.Struct, frozen=True):
    """Minute means of some fields of one site's devices, with the minute's invalid-flag state per field.

    A reading whose ``<field>_flag`` is present and not in ``valid_flags`` makes its minute invalid for that
    field (HJ 212 minute data carry one flag; sub-minute readings are judged strictly).
    """

    measurement: str
    fields: tuple[str, ...]
    site: str
    start_ms: int
    end_ms: int  # exclusive
    valid_flags: tuple[str, ...] = ("N", "S")
    device: str | None = None


class MinuteRow(NamedTuple):
    device: str
    ts_ms: int  # minute start
    values: dict[str, float]  # field -> mean over the minute's readings
    invalid: frozenset[str]  # fields with an invalid flag in this minute


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

    def minute_means(self, query: MinuteQuery) -> list[MinuteRow]:
        """Minute rows (device, minute) ordered by device and time, computed by the store."""

    def close(self) -> None:
        """Release connections."""


def check_points(points: Sequence[Point]) -> None:
    """Guard shared by the backends: empty field sets cannot be written by InfluxDB."""
    for p in points:
        if not p.fields:
            raise ValueError(f"point {p.measurement}/{p.site}/{p.device}@{p.ts_ms} has no fields")
