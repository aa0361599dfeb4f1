"""Message -> points, dead letters and status updates: the contract checks plus the registry binding; and, per
device, its newest reading time, which marks the points of older readings as late (ingest/rewrites.py)."""

from __future__ import annotations

import logging
from typing import NamedTuple

import msgspec

from smartpark.core.catalog import Catalog
from smartpark.core.contract import (
    Decoded,
    Reading,
    ReadingDecoder,
    Reason,
    Rejection,
    parse_topic,
    plain_points,
    to_points,
)
from smartpark.core.points import Point
from smartpark.core.registry.cache import Bindings
from smartpark.ingest.deadletter import DeadLetter

__all__ = ["Bindings", "DecodedMessage", "MessageDecoder", "StatusUpdate"]

log = logging.getLogger("smartpark.ingest")


class StatusUpdate(NamedTuple):
    device: str
    online: bool
    ts_ms: int


class DecodedMessage(msgspec.Struct, gc=False):  # a Struct: built once per message, cheaper than a NamedTuple
    points: list[Point]
    readings: int
    dead: list[DeadLetter]
    status: StatusUpdate | None = None
    # points of readings at or before their device's last seen time, with the receive time: they may change
    # a stored value (ingest/rewrites.py looks them up); None on the normal path (device time moving on)
    late: list[tuple[int, Point]] | None = None


class _Status(msgspec.Struct):
    state: str
    ts: int | str | None = None


class MessageDecoder:
    def __init__(self, catalog: Catalog, bindings: Bindings, retention_ms: int, window_ms: int | None = None) -> None:
        self.catalog = catalog
        self.bindings = bindings
        self.readings = ReadingDecoder(catalog, retention_ms=retention_ms, window_ms=window_ms)
        self.last_ts: dict[str, int] = {}  # device -> newest reading time seen (seeded from the store at start)

    def decode(self, topic: str, payload: bytes, now_ms: int) -> DecodedMessage:
        """Points, dead letters or a status update; whatever the payload, this returns (never raises)."""
        try:
            return self._decode(topic, payload, now_ms)
        except Exception as exc:  # a bug must cost one dead letter, not the consumer (redelivered forever)
            log.exception("decoding a message on %s failed; dead-lettered", topic)
            return _dead(topic, payload, now_ms, Rejection(Reason.BAD_JSON, f"undecodable: {exc!r}"[:300]))

    def _decode(self, topic: str, payload: bytes, now_ms: int) -> DecodedMessage:
        parsed = parse_topic(topic)
        if parsed is None:
            return _dead(topic, payload, now_ms, Rejection(Reason.TOPIC_MISMATCH, "not a smartpark/v1 topic"))
        bound = self.bindings.site_of(parsed.device)
        if bound is None:
            return _dead(topic, payload, now_ms,
                         Rejection(Reason.UNKNOWN_DEVICE, f"device {parsed.device!r} is not in the registry"))
        if bound != parsed.site:
            return _dead(topic, payload, now_ms, Rejection(
                Reason.TOPIC_MISMATCH, f"device {parsed.device!r} belongs to site {bound!r}, not {parsed.site!r}"))
        if parsed.kind == "status":
            return self._status(topic, parsed.device, payload, now_ms)
        result = self.readings.decode_plain(parsed.site, parsed.device, payload, now_ms)
        if type(result) is tuple:  # the common message, inline: its points, a compare and a store
            ts, metrics = result
            points = plain_points(parsed.site, parsed.device, ts, metrics, self.catalog)
            late = None
            if ts > self.last_ts.get(parsed.device, -1):
                self.last_ts[parsed.device] = ts
            else:
                late = [(now_ms, p) for p in points]
            return DecodedMessage(points, 1, [], None, late)
        return self._decoded(topic, parsed.device, payload, now_ms, result)  # type: ignore[arg-type]

    def _decoded(self, topic: str, device: str, payload: bytes, now_ms: int, result: Decoded) -> DecodedMessage:
        """Any other message: readings (a batch, flags, a platform time) and rejections."""
        dead = [DeadLetter(now_ms, r.reason.value, topic, r.index, r.detail, payload)
                for r in result.rejections] if result.rejections else []
        readings = result.readings
        late = self._late(device, readings, now_ms) if readings else None
        return DecodedMessage(to_points(readings, self.catalog), len(readings), dead, None, late)

    def _late(self, device: str, readings: list[Reading], now_ms: int) -> list[tuple[int, Point]] | None:
        """Points of the readings not newer than the device's last one (one compare per reading: devices send
        in time order, so this is empty but for resends, corrections and back-dated messages)."""
        last = self.last_ts.get(device, -1)
        late: list[Reading] | None = None
        for r in readings:
            if r.ts_ms > last:
                last = r.ts_ms
            elif late is None:
                late = [r]
            else:
                late.append(r)
        self.last_ts[device] = last
        return None if late is None else [(now_ms, p) for p in to_points(late, self.catalog)]

    def _status(self, topic: str, device: str, payload: bytes, now_ms: int) -> DecodedMessage:
        try:
            status = msgspec.json.decode(payload, type=_Status)
        except (msgspec.DecodeError, RecursionError, ValueError) as exc:
            reason = Reason.BAD_SCHEMA if isinstance(exc, msgspec.ValidationError) else Reason.BAD_JSON
            return _dead(topic, payload, now_ms, Rejection(reason, str(exc)))
        if status.state not in ("online", "offline"):
            return _dead(topic, payload, now_ms, Rejection(Reason.BAD_SCHEMA, f"state {status.state!r}"))
        return DecodedMessage([], 0, [], StatusUpdate(device, status.state == "online", self._seen(status, now_ms)))

    def _seen(self, status: _Status, now_ms: int) -> int:
        """The device's own time when it is plausible (a retained status replayed on every reconnect must not
        move last-seen), else the receive time."""
        ts = status.ts
        if isinstance(ts, int) and now_ms - self.readings.window_ms <= ts <= now_ms + 300_000:
            return ts
        return now_ms


def _dead(topic: str, payload: bytes, now_ms: int, rejection: Rejection) -> DecodedMessage:
    letter = DeadLetter(now_ms, rejection.reason.value, topic, rejection.index, rejection.detail, payload)
    return DecodedMessage([], 0, [letter])
