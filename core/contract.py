"""The wire contract v1 in code: topics, readings, batches and the reasons a message is rejected.

Decoding is the hot path of the ingest: msgspec validates types while it parses, so what is left to
Python is the catalog lookup and the range check (about a microsecond per reading, see bench/).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal, NamedTuple, cast

import msgspec

from smartpark.core.catalog import Catalog
from smartpark.core.ids import is_valid_id
from smartpark.core.points import FieldValue, Point

__all__ = [
    "MAX_BATCH",
    "MAX_METRICS",
    "MAX_PAYLOAD",
    "TOPIC_PREFIX",
    "VALID_FLAGS",
    "Decoded",
    "PlainReading",
    "Reading",
    "ReadingDecoder",
    "Reason",
    "Rejection",
    "Topic",
    "parse_topic",
    "plain_points",
    "telemetry_topic",
    "to_points",
]

TOPIC_PREFIX = "smartpark/v1"
MAX_PAYLOAD = 64 * 1024
MAX_BATCH = 1000
MAX_METRICS = 64
FUTURE_TOLERANCE_MS = 5 * 60 * 1000
VALID_FLAGS = frozenset("NFMSDCTB")  # HJ 212-2017 data flags
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


class Reason(StrEnum):
    """Why a message or reading was rejected (contract "Rejections")."""

    BAD_JSON = "bad_json"
    BAD_SCHEMA = "bad_schema"
    UNKNOWN_METRIC = "unknown_metric"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_DEVICE = "unknown_device"
    TOPIC_MISMATCH = "topic_mismatch"
    TOO_LARGE = "too_large"
    TS_OUT_OF_WINDOW = "ts_out_of_window"


class Rejection(NamedTuple):
    reason: Reason
    detail: str
    index: int | None = None  # type: ignore[assignment]  # position in a batch; None: the message (shadows tuple.index)


class Topic(NamedTuple):
    site: str
    device: str
    kind: Literal["telemetry", "status"]


@lru_cache(maxsize=65536)  # a park has a few thousand topics, each seen over and over
def parse_topic(topic: str) -> Topic | None:
    """Parse ``smartpark/v1/{site}/{device}/{telemetry|status}``; None when it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "smartpark" or parts[1] != "v1":
        return None
    _, _, site, device, kind = parts
    if kind not in ("telemetry", "status") or not (is_valid_id(site) and is_valid_id(device)):
        return None
    return Topic(site, device, kind)  # type: ignore[arg-type]


def telemetry_topic(site: str, device: str) -> str:
    return f"{TOPIC_PREFIX}/{site}/{device}/telemetry"


class Reading(msgspec.Struct, frozen=True, gc=False):
    """A validated reading, bound to its device. ``ts_from_device`` is False when the platform stamped it."""

    site: str
    device: str
    ts_ms: int
    metrics: dict[str, float]
    flags: dict[str, str]
    seq: int | None = None
    ts_from_device: bool = True


class Decoded(msgspec.Struct, gc=False):  # a Struct: built once per message, cheaper than a NamedTuple
    readings: list[Reading]
    rejections: list[Rejection]


PlainReading = tuple[int, dict[str, float]]  # (device time ms, metrics): see ReadingDecoder.decode_plain


TzDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
Flag = Literal["N", "F", "M", "S", "D", "C", "T", "B"]
Metrics = Annotated[dict[str, float], msgspec.Meta(min_length=1, max_length=MAX_METRICS)]


class _RawReading(msgspec.Struct):
    metrics: Metrics
    ts: int | TzDatetime | None = None
    seq: Annotated[int, msgspec.Meta(ge=0)] | None = None
    flags: dict[str, Flag] | None = None


class _Envelope(msgspec.Struct):
    """A reading or a batch; which one is decided by the keys present."""

    metrics: Metrics | None = None
    ts: int | TzDatetime | None = None
    seq: Annotated[int, msgspec.Meta(ge=0)] | None = None
    flags: dict[str, Flag] | None = None
    readings: list[msgspec.Raw] | None = None


class _PyEnvelope(_Envelope):
    """The envelope of the slow path, where readings are already Python objects."""

    readings: list[Any] | None = None


class _FastEnvelope(_Envelope):
    """First try: a batch's readings typed in the same C call. Any error falls back to _Envelope, which
    decodes readings one by one so that the good ones of a partly bad batch are kept."""

    readings: list[_RawReading] | None = None  # type: ignore[assignment]


_fast_decoder = msgspec.json.Decoder(_FastEnvelope)
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_reading_decoder = msgspec.json.Decoder(_RawReading)


def _schema_reason(exc: msgspec.ValidationError) -> Reason:
    # msgspec reports 1e999 (an overflowing float) as out of range while parsing: it is not finite.
    return Reason.NON_FINITE if str(exc).startswith("Number out of range") else Reason.BAD_SCHEMA


class ReadingDecoder:
    """Turns a telemetry payload into validated readings and rejections with reasons."""

    def __init__(self, catalog: Catalog, *, retention_ms: int, window_ms: int | None = None) -> None:
        """``window_ms``: the store-and-forward window, how old a reading may be when it arrives (device time
        against receive time); None or longer than the retention: the retention bounds it."""
        self.catalog = catalog
        self.retention_ms = retention_ms
        self.window_ms = retention_ms if window_ms is None else min(window_ms, retention_ms)
        self._bounds = {m.name: (m.min, m.max) for m in catalog.metrics.values()}  # hot loop: no attribute loads

    def decode(self, site: str, device: str, payload: bytes, now_ms: int) -> Decoded:
        """Readings and rejections; never raises for anything a device can send."""
        try:
            return self._decode(site, device, payload, now_ms)
        except (RecursionError, ValueError) as exc:  # deep nesting; invalid UTF-8 inside a JSON string
            return _undecodable(exc)

    def decode_plain(self, site: str, device: str, payload: bytes, now_ms: int) -> Decoded | PlainReading:
        """As decode(), but the common message, one plain reading (device time within the window, no flags,
        known metrics within bounds), comes back as (ts, metrics) with no Reading or Decoded built for it: the
        ingest's hot path (about 0.5 of 4 µs a message). Never raises for anything a device can send."""
        if len(payload) <= MAX_PAYLOAD:
            try:
                env = _fast_decoder.decode(payload)
            except (msgspec.DecodeError, RecursionError, ValueError):
                return self.decode(site, device, payload, now_ms)  # which finds out what exactly is wrong
            ts, metrics = env.ts, env.metrics
            if (env.readings is None and metrics is not None and type(ts) is int and not env.flags
                    and now_ms - self.window_ms <= ts <= now_ms + FUTURE_TOLERANCE_MS and self._in_bounds(metrics)):
                return ts, metrics
            try:  # anything else, typed already: not decoded twice
                return self._from_envelope(site, device, env, now_ms)
            except (RecursionError, ValueError) as exc:
                return _undecodable(exc)
        return self.decode(site, device, payload, now_ms)

    def _decode(self, site: str, device: str, payload: bytes, now_ms: int) -> Decoded:
        if len(payload) > MAX_PAYLOAD:
            return _reject(Reason.TOO_LARGE, f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD}")
        try:
            return self._from_envelope(site, device, _fast_decoder.decode(payload), now_ms)
        except msgspec.DecodeError:
            pass  # not all well formed: find out what exactly, reading by reading
        try:
            env = _envelope_decoder.decode(payload)
        except msgspec.ValidationError as exc:
            return _reject(_schema_reason(exc), str(exc))
        except msgspec.DecodeError as exc:
            return self._decode_nonstandard(site, device, payload, now_ms, exc)
        return self._from_envelope(site, device, env, now_ms)

    def _decode_nonstandard(
        self, site: str, device: str, payload: bytes, now_ms: int, exc: Exception
    ) -> Decoded:
        """Slow path for bad JSON: NaN and Infinity literals are reported as non-finite, not as bad JSON."""
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return _reject(Reason.BAD_JSON, str(exc))
        try:
            env = msgspec.convert(obj, _PyEnvelope)
        except msgspec.ValidationError as vexc:
            return _reject(Reason.BAD_SCHEMA, str(vexc))
        return self._from_envelope(site, device, env, now_ms)

    def _from_envelope(self, site: str, device: str, env: _Envelope, now_ms: int) -> Decoded:
        if env.readings is None:
            if env.metrics is None:
                return _reject(Reason.BAD_SCHEMA, "a reading needs `metrics`; a batch needs `readings`")
            return self._single(site, device, env, now_ms)
        if env.metrics is not None:
            return _reject(Reason.BAD_SCHEMA, "a message is a reading or a batch, not both")
        if not env.readings:
            return _reject(Reason.BAD_SCHEMA, "empty batch")
        if len(env.readings) > MAX_BATCH:
            return _reject(Reason.TOO_LARGE, f"batch of {len(env.readings)} readings, limit {MAX_BATCH}")
        convert = (_as_is if isinstance(env, _FastEnvelope)
                   else _convert_reading if isinstance(env, _PyEnvelope) else _reading_decoder.decode)
        return self._batch(site, device, env.readings, now_ms, convert)

    def _batch(self, site: str, device: str, raws: list[Any], now_ms: int,
               convert: Callable[[Any], _RawReading]) -> Decoded:
        if convert is _as_is:
            return self._typed_batch(site, device, raws, now_ms)
        readings: list[Reading] = []
        rejections: list[Rejection] = []
        for i, raw in enumerate(raws):
            try:
                item = convert(raw)
            except msgspec.ValidationError as exc:
                rejections.append(Rejection(_schema_reason(exc), str(exc), i))
                continue
            one = self._one(site, device, item, now_ms, i)
            readings += one.readings
            rejections += one.rejections
        return Decoded(readings, rejections)

    def _single(self, site: str, device: str, env: _Envelope, now_ms: int) -> Decoded:
        """A one-reading message (the envelope is the reading: no copy). The plain reading is checked inline,
        as in _typed_batch; anything else goes through _one, which finds the exact reason."""
        ts = env.ts
        if (type(ts) is int and now_ms - self.window_ms <= ts <= now_ms + FUTURE_TOLERANCE_MS
                and not env.flags and self._in_bounds(env.metrics)):  # type: ignore[arg-type]
            return Decoded([Reading(site, device, ts, env.metrics, {}, env.seq)], [])  # type: ignore[arg-type]
        return self._one(site, device, env, now_ms, None)

    def validate(self, site: str, device: str, ts_ms: int, metrics: dict[str, float], *, flags: dict[str, str],
                 now_ms: int) -> Decoded:
        """One reading that arrived in another shape (an HJ 212 packet), held to the same rules as JSON ones:
        catalog, finiteness, range, flags, time window."""
        if not 1 <= len(metrics) <= MAX_METRICS:
            return _reject(Reason.BAD_SCHEMA, f"{len(metrics)} metrics, allowed 1..{MAX_METRICS}")
        bad = next((f for f in flags.values() if f not in VALID_FLAGS), None)
        if bad is not None:
            return _reject(Reason.BAD_SCHEMA, f"flag {bad!r} is not one of {''.join(sorted(VALID_FLAGS))}")
        checked = cast("dict[str, Flag]", flags)  # each one is a valid flag (above)
        return self._one(site, device, _RawReading(metrics=metrics, ts=ts_ms, flags=checked or None), now_ms, None)

    def _in_bounds(self, metrics: dict[str, float]) -> bool:
        """All known metrics within their bounds (NaN and infinities are not)."""
        bounds = self._bounds
        for name, value in metrics.items():
            bound = bounds.get(name)
            if bound is None or not bound[0] <= value <= bound[1]:
                return False
        return True

    def _typed_batch(self, site: str, device: str, raws: list[_RawReading], now_ms: int) -> Decoded:
        """The hot path of store-and-forward batches, readings already typed: the plain reading (device
        time within the window, no flags, known metrics within bounds) is checked inline; anything else goes
        through _one, which finds the exact reason."""
        readings: list[Reading] = []
        rejections: list[Rejection] = []
        in_bounds = self._in_bounds
        oldest, newest = now_ms - self.window_ms, now_ms + FUTURE_TOLERANCE_MS
        for i, raw in enumerate(raws):
            ts = raw.ts
            if type(ts) is int and oldest <= ts <= newest and not raw.flags and in_bounds(raw.metrics):
                readings.append(Reading(site, device, ts, raw.metrics, {}, raw.seq))
                continue
            one = self._one(site, device, raw, now_ms, i)
            readings += one.readings
            rejections += one.rejections
        return Decoded(readings, rejections)

    def _one(self, site: str, device: str, raw: _RawReading | _Envelope, now_ms: int, index: int | None
             ) -> Decoded:
        metrics = raw.metrics or {}  # never None here: an envelope without metrics was refused before
        problem = self._check_metrics(metrics, raw.flags)
        if problem is None:
            ts_ms, problem = self._timestamp(raw.ts, now_ms)
        if problem is not None:
            return Decoded([], [Rejection(problem[0], problem[1], index)])
        flags: dict[str, str] = {k: v for k, v in raw.flags.items() if v != "N"} if raw.flags else {}
        reading = Reading(site, device, ts_ms, metrics, flags, raw.seq, raw.ts is not None)
        return Decoded([reading], [])

    def _check_metrics(self, metrics: dict[str, float], flags: dict[str, Flag] | None) -> tuple[Reason, str] | None:
        bounds = self._bounds
        for name, value in metrics.items():
            bound = bounds.get(name)
            if bound is None:
                return Reason.UNKNOWN_METRIC, f"unknown metric {name!r}"
            if not bound[0] <= value <= bound[1]:  # NaN and infinities fail this too: tell them apart after
                if not math.isfinite(value):
                    return Reason.NON_FINITE, f"{name} is {value}"
                return Reason.OUT_OF_RANGE, f"{name}={value} outside {bound[0]:g}..{bound[1]:g}"
        for name in flags or ():
            if name not in metrics:
                return Reason.BAD_SCHEMA, f"flag for {name!r}, which the reading does not carry"
        return None

    def _timestamp(self, ts: int | datetime | None, now_ms: int) -> tuple[int, tuple[Reason, str] | None]:
        if ts is None:
            return now_ms, None
        ts_ms = ts if isinstance(ts, int) else (ts - EPOCH) // MS  # exact: no float rounding
        if ts_ms > now_ms + FUTURE_TOLERANCE_MS:
            return ts_ms, (Reason.TS_OUT_OF_WINDOW, f"ts {ts_ms} is more than 5 minutes in the future")
        if ts_ms < now_ms - self.window_ms:
            return ts_ms, (Reason.TS_OUT_OF_WINDOW, self._too_old(ts_ms, now_ms))
        return ts_ms, None

    def _too_old(self, ts_ms: int, now_ms: int) -> str:
        """Which lower bound refused it: the store-and-forward window, or the retention (when it is shorter)."""
        age_h = (now_ms - ts_ms) / 3_600_000
        if self.window_ms < self.retention_ms:
            return (f"ts {ts_ms} is {age_h:.1f} h old, older than the {self.window_ms / 86_400_000:g}-day "
                    "store-and-forward window (SMARTPARK_STORE_FORWARD_DAYS); older history is loaded with a "
                    "backfill, straight into the store")
        return (f"ts {ts_ms} is older than the {self.retention_ms / 86_400_000:g}-day retention "
                "(SMARTPARK_RETENTION_DAYS; sent in s, not ms?)")


def _as_is(obj: _RawReading) -> _RawReading:
    return obj


def _convert_reading(obj: Any) -> _RawReading:
    return msgspec.convert(obj, _RawReading)


def _undecodable(exc: Exception) -> Decoded:
    return _reject(Reason.BAD_JSON, f"undecodable: {type(exc).__name__}: {str(exc)[:200]}")


def _reject(reason: Reason, detail: str) -> Decoded:
    return Decoded([], [Rejection(reason, detail)])


def to_points(readings: Iterable[Reading], catalog: Catalog) -> list[Point]:
    """Split readings into points, one per (reading, domain): tags site and device, fields the metrics.

    The common reading (device time, no flags) takes the catalog's cached split of its metric names; one in
    a single domain becomes one point sharing its metrics dict.
    """
    points: list[Point] = []
    append = points.append  # a batch's readings: the single-domain one inline, no call or list of its own
    split = catalog.split
    for r in readings:
        plan = split(tuple(r.metrics))
        if r.flags or not r.ts_from_device:
            points += _annotated_points(r, plan)
        elif len(plan) == 1:
            append(Point(plan[0][0], r.site, r.device, r.ts_ms, r.metrics))  # type: ignore[arg-type]
        else:
            points += _domain_points(r.site, r.device, r.ts_ms, r.metrics, plan)
    return points


def plain_points(site: str, device: str, ts_ms: int, metrics: dict[str, float], catalog: Catalog) -> list[Point]:
    """The points of a plain reading (device time, no flags): one per domain; a reading in a single domain
    shares its metrics dict with its point."""
    plan = catalog.split(tuple(metrics))
    if len(plan) == 1:
        return [Point(plan[0][0], site, device, ts_ms, metrics)]  # type: ignore[arg-type]
    return _domain_points(site, device, ts_ms, metrics, plan)


def _domain_points(site: str, device: str, ts_ms: int, metrics: dict[str, float],
                   plan: tuple[tuple[str, tuple[str, ...]], ...]) -> list[Point]:
    """One point per domain of ``plan``. Plain loops, no comprehensions: in Python 3.11 each comprehension is a
    function object made per call, and this runs once a message (0.70 against 1.10 µs a two-domain reading)."""
    points = []
    for domain, names in plan:
        fields: dict[str, FieldValue] = {}
        for n in names:
            fields[n] = metrics[n]
        points.append(Point(domain, site, device, ts_ms, fields))
    return points


def _annotated_points(r: Reading, plan: tuple[tuple[str, tuple[str, ...]], ...]) -> list[Point]:
    """Points of a reading with flags (``<metric>_flag`` string fields) or a platform timestamp."""
    out = []
    for domain, names in plan:
        fields: dict[str, FieldValue] = {n: r.metrics[n] for n in names}
        fields.update({f"{n}_flag": r.flags[n] for n in names if n in r.flags})
        if not r.ts_from_device:
            fields["ts_source"] = "platform"
        out.append(Point(domain, r.site, r.device, r.ts_ms, fields))
    return out
