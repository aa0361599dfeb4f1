"""The time-series store interface: write points, a series of windows, the latest values of a site.

Two backends implement it: InfluxDB over its v1 HTTP API (production) and SQLite (embedded defaults).
Calls are synchronous: the ingest writes from its own thread, the API runs them in its thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Literal, NamedTuple, Protocol, Self

import msgspec

from smartpark.core.points import FieldValue, Point

__all__ = [
    "AGGREGATES",
    "Agg",
    "ClosedOnExit",
    "CounterEvent",
    "CounterKind",
    "HourPrints",
    "HourQuery",
    "HourSum",
    "LatestValue",
    "MinuteQuery",
    "MinuteRow",
    "PointKey",
    "Series",
    "SeriesQuery",
    "StoredFields",
    "TimeSeriesStore",
    "counter_event",
    "delta_series",
    "hour_sums_from_minutes",
    "lookback_ms",
    "point_key",
]

# `delta`: a counter's consumption per window, reset-aware (see SeriesQuery)
Agg = Literal["mean", "min", "max", "last", "sum", "count", "delta"]
AGGREGATES: tuple[Agg, ...] = ("mean", "min", "max", "last", "sum", "count", "delta")
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


# (device, hour start) -> what the hour's sums are computed from, summarised (see hour_fingerprints)
HourPrints = dict[tuple[str, int], tuple[float, ...]]
PointKey = tuple[str, str, str, int]  # (measurement, site, device, ts_ms): what a write overwrites
StoredFields = dict[PointKey, dict[str, FieldValue]]


def point_key(p: Point) -> PointKey:
    return (p.measurement, p.site, p.device, p.ts_ms)


class SeriesQuery(msgspec.Struct, frozen=True):
    """Windows of one field of one measurement, filtered by site and/or device.

    Windows are aligned to ``every_ms`` from the epoch (as InfluxDB's GROUP BY time does) and labelled by
    their start; empty windows are left out.

    ``delta`` (counters; the rules in one place, README "Counter rules"): the counter is read as the last
    value of each minute, and a *step* is the difference between two successive such readings of a device. A
    step belongs to the window of its later reading, whatever lies between (a meter every 15 minutes has one
    step per 15 minutes, the first one of a day reaching back into the day before), so windows, days and
    months add up exactly. Windows of ``delta`` start at ``start_ms`` (``start + k x every``). A decrease is a
    reset: the reading after it counts as consumption since the reset (Prometheus ``increase()``). A step
    spanning more than ``max_gap_ms`` is counted in no window (a gap), and a step (or a reading after a reset)
    above ``(elapsed + 1 minute) x`` the device's bound per hour (``device_max_per_h``, else ``max_per_h``;
    the minute covers where in their minutes the two readings fell) is implausible and not counted either.
    What was not counted is listed by ``counter_deltas``.
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
    # delta only (see above): the longest step counted, and the plausibility bounds in units per hour
    max_gap_ms: int = DAY_MS
    max_per_h: float | None = None
    device_max_per_h: tuple[tuple[str, float], ...] = ()

    def bound_per_ms(self, device: str) -> float | None:
        """The device's plausibility bound in units per millisecond (None: unbounded)."""
        per_h = dict(self.device_max_per_h).get(device, self.max_per_h)
        return None if per_h is None else per_h / HOUR_MS


CounterKind = Literal["reset", "implausible", "gap"]


class CounterEvent(NamedTuple):
    """A step of a counter that was not an ordinary increase: a reset (counted: the reading after it), an
    implausible step or a gap (not counted: ``excluded``)."""

    site: str
    device: str
    ts_ms: int  # minute of the later reading
    elapsed_ms: int  # since the previous reading's minute
    reading: float  # the counter's value after the step
    step: float  # reading minus the previous reading (negative for a reset)
    kind: CounterKind
    counted: float
    excluded: float


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


class HourQuery(msgspec.Struct, frozen=True):
    """Per device, field and hour: the sum and the count of the *valid* minute means, O2-corrected per device.

    A minute (as in MinuteQuery) is valid for a field when the field has a mean in it, no invalid flag on the
    field and, for a device with a reference O2, an O2 mean without an invalid flag and below ``o2_max_pct``;
    its value is then ``mean x (21 - o2_ref) / (21 - O2 mean)`` (core.emissions.o2_correct), or the mean
    itself where the device's reference O2 is None. Hours start ``offset_ms`` past each UTC hour (0 for every
    whole-hour time zone; local hours of a zone such as +05:30 need 1,800,000).
    """

    measurement: str
    fields: tuple[str, ...]
    site: str
    start_ms: int
    end_ms: int  # exclusive
    devices: tuple[tuple[str, float | None], ...]  # (device, reference O2 % or None); only these devices
    o2_field: str = "o2_pct"
    o2_max_pct: float = 20.0
    valid_flags: tuple[str, ...] = ("N", "S")
    offset_ms: int = 0


class HourSum(NamedTuple):
    """One hour in which ``field`` has at least one minute mean (valid or not)."""

    device: str
    field: str
    ts_ms: int  # hour start
    total: float  # sum of the valid (corrected) minute means, in time order
    valid: int  # valid minutes


class LatestValue(NamedTuple):
    site: str
    device: str
    measurement: str
    metric: str
    ts_ms: int
    value: float
    flag: str | None  # None means N (normal)


class ClosedOnExit:
    """``with store:`` closes the store after the block (one-shot commands and tests open one for a block)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TimeSeriesStore(Protocol):
    """What the services need from a time-series store."""

    def init(self) -> None:
        """Create the database or schema (idempotent)."""

    def ping(self) -> None:
        """Return when the store is reachable; raise StoreUnavailable otherwise."""

    def write(self, points: Sequence[Point]) -> None:
        """Write points; a point with the same measurement, tags and time overwrites (redelivery-safe)."""

    def stored_fields(self, points: Sequence[Point]) -> StoredFields:
        """The fields already stored at the points' keys (measurement, site, device, time), for the keys that
        have any: what writing ``points`` would overwrite (at least the numeric fields the points carry; flags
        may be left out). Batched: a few queries for many points."""

    def series(self, query: SeriesQuery) -> list[Series]:
        """Aggregate one field over windows, computed by the store."""

    def latest(self, site: str, *, lookback_ms: int = 7 * DAY_MS) -> list[LatestValue]:
        """The latest value of each metric of each device of ``site`` within the lookback."""

    def latest_many(self, sites: Sequence[str], *, lookback_ms: int = 7 * DAY_MS) -> dict[str, list[LatestValue]]:
        """latest() of several sites, by site (every site a key), in as few store round trips as it can."""

    def counter_deltas(self, query: SeriesQuery) -> tuple[list[Series], list[CounterEvent]]:
        """``series`` of a ``delta`` query and its counters' resets, implausible steps and gaps (ordered by
        site, device, time), from one pass of the store."""

    def minute_means(self, query: MinuteQuery) -> list[MinuteRow]:
        """Minute rows (device, minute) ordered by device and time, computed by the store."""

    def hour_sums(self, query: HourQuery, hours: Collection[int] | None = None) -> list[HourSum]:
        """Hourly sums and counts of valid corrected minute means, ordered by device, field and hour; of the
        hours starting at ``hours`` only (None: every hour of the query; the hour cache asks for the ones it
        does not keep)."""

    def hour_fingerprints(self, query: HourQuery) -> HourPrints:
        """Per (device, hour) with data of ``query``: a summary of the points its sums are computed from (per
        field and flag, at least their counts), far cheaper than hour_sums; what the hour cache
        (core/store/hour_cache.py) revalidates a kept hour with: a late or resent reading or a flag added
        afterwards changes it."""

    def close(self) -> None:
        """Release connections."""


StepRow = tuple[str, str, int, float, float, int]  # (site, device, minute, reading, step, elapsed ms)


def counter_event(query: SeriesQuery, row: StepRow) -> CounterEvent | None:
    """Classify one step that a store found outside the ordinary (the rules of SeriesQuery's ``delta``)."""
    site, device, ts_ms, reading, step, elapsed_ms = row
    if elapsed_ms > query.max_gap_ms:
        return CounterEvent(site, device, ts_ms, elapsed_ms, reading, step, "gap", 0.0,
                            step if step >= 0 else reading)
    bound = query.bound_per_ms(device)
    limit = None if bound is None else bound * (elapsed_ms + MINUTE_MS)
    amount = step if step >= 0 else reading
    if limit is not None and amount > limit:
        return CounterEvent(site, device, ts_ms, elapsed_ms, reading, step, "implausible", 0.0, amount)
    if step < 0:
        return CounterEvent(site, device, ts_ms, elapsed_ms, reading, step, "reset", reading, 0.0)
    return None


def delta_series(query: SeriesQuery, sums: Iterable[tuple[str, str, int, float]],
                 events: Iterable[CounterEvent]) -> list[Series]:
    """``delta`` windows from the stores' sums of ordinary steps per (site, device, window) plus what resets
    count; windows before ``start`` (the lookback for the first step) left out; grouped as the query says."""
    acc: dict[tuple[str, str | None], dict[int, float]] = {}

    def add(site: str, device: str, window: int, value: float) -> None:
        if query.start_ms <= window < query.end_ms:
            key = (site, device if query.group_by == "device" else None)
            windows = acc.setdefault(key, {})
            windows[window] = windows.get(window, 0.0) + value

    for site, device, window, value in sums:
        add(site, device, window, value)
    for ev in events:
        if ev.counted:
            add(ev.site, ev.device, window_of(query, ev.ts_ms), ev.counted)
    keys = sorted(acc, key=lambda k: (k[0], k[1] or ""))
    return [Series(site, dev, sorted(acc[site, dev].items())) for site, dev in keys]


def window_of(query: SeriesQuery, ts_ms: int) -> int:
    return ts_ms - (ts_ms - query.start_ms) % query.every_ms


def lookback_ms(query: SeriesQuery) -> int:
    """Where a ``delta`` query starts reading: a gap before the first minute, so its first step is found."""
    return query.start_ms - query.start_ms % MINUTE_MS - query.max_gap_ms


def check_points(points: Sequence[Point]) -> None:
    """Guard shared by the backends: empty field sets cannot be written by InfluxDB."""
    for p in points:
        if not p.fields:
            raise ValueError(f"point {p.measurement}/{p.site}/{p.device}@{p.ts_ms} has no fields")


def minute_query(query: HourQuery, start_ms: int | None = None, end_ms: int | None = None) -> MinuteQuery:
    """The minute means an HourQuery is computed from (its fields and the O2 field; one range of it)."""
    fields = query.fields if query.o2_field in query.fields else (*query.fields, query.o2_field)
    return MinuteQuery(query.measurement, fields, query.site, query.start_ms if start_ms is None else start_ms,
                       query.end_ms if end_ms is None else end_ms, query.valid_flags)


def hour_runs(query: HourQuery, hours: Collection[int], max_ms: int | None = None) -> list[tuple[int, int]]:
    """The hours starting at ``hours`` as (start, end) runs of consecutive hours within the query (each at most
    ``max_ms`` long), in time order: one minute-means request each."""
    runs: list[list[int]] = []
    for h in sorted(hours):
        start, end = max(h, query.start_ms), min(h + HOUR_MS, query.end_ms)
        if runs and runs[-1][1] == start and (max_ms is None or end - runs[-1][0] <= max_ms):
            runs[-1][1] = end
        else:
            runs.append([start, end])
    return [(start, end) for start, end in runs]


def hour_sums_from_minutes(rows: Iterable[MinuteRow], query: HourQuery,
                           hour_of: Callable[[int], int] | None = None) -> list[HourSum]:
    """The reference computation of HourQuery from minute rows (time order per device), shared by the stores.

    ``hour_of`` maps a minute to its hour start (default: hours ``query.offset_ms`` past the UTC hour).
    """
    refs = dict(query.devices)
    if hour_of is None:
        offset = query.offset_ms
        hour_of = lambda ts: ts - (ts - offset) % HOUR_MS  # noqa: E731
    o2, o2_max = query.o2_field, query.o2_max_pct
    acc: dict[tuple[str, str, int], tuple[float, int]] = {}
    for row in rows:
        if row.device not in refs:
            continue
        ref = refs[row.device]
        o2_ok = ref is None or (o2 in row.values and o2 not in row.invalid and row.values[o2] < o2_max)
        hour = hour_of(row.ts_ms)
        for field in query.fields:
            value = row.values.get(field)
            if value is None:
                continue
            key = (row.device, field, hour)
            total, n = acc.get(key, (0.0, 0))
            if o2_ok and field not in row.invalid:
                # as core.emissions.o2_correct, operation for operation (the stores must agree to the bit)
                corrected = value if ref is None else value * (21.0 - ref) / (21.0 - row.values[o2])
                acc[key] = (total + corrected, n + 1)
            else:
                acc[key] = (total, n)
    return [HourSum(device, field, hour, total, n) for (device, field, hour), (total, n) in sorted(acc.items())]
