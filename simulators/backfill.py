"""Backfill: N days of a scenario's history written straight into the store, as fast as the store takes it.

Why line protocol from arrays: the per-reading path (a ``Point`` per reading, ``lines()`` formatting every
float with ``repr``) costs a few microseconds a reading, a minute for a month of a 200-device park, before
InfluxDB has done anything. Here a frame's values become line protocol in whole-array numpy operations: every
line is laid out as a fixed-width row of bytes (series prefix, each field's digits, timestamp digits) with
zero bytes as padding, and one boolean mask squeezes the padding out of the whole frame at once. Values are
written with 4 decimals, as the publishers round them. Readings that carry a flag are rare and go through
the ordinary ``Point`` path. Two writer threads post the bodies (InfluxDB 1.x ingests more with two writers
than one), so formatting the next frame overlaps with the database parsing the last.

Other stores (the embedded SQLite store) get ordinary ``Point`` writes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from smartpark.core.catalog import Catalog
from smartpark.core.points import Point
from smartpark.core.store.base import TimeSeriesStore
from smartpark.core.store.influx import InfluxStore, escape_measurement, escape_tag, lines
from smartpark.simulators.signals import Array
from smartpark.simulators.timeline import Block, Frame, Timeline

__all__ = ["BackfillResult", "backfill", "frame_lines", "frame_points"]

LINES_PER_POST = 10_000
WRITERS = 2
DECIMALS = 4
Bytes = npt.NDArray[np.uint8]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class BackfillResult:
    readings: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------------ bytes from arrays


def _text(parts: list[str], rows: int) -> Bytes:
    """Per-row text (one string per row, or one for all) as a zero-padded byte matrix (rows, width)."""
    encoded = [p.encode() for p in parts]
    width = max(len(e) for e in encoded)
    mat = np.zeros((len(encoded), width), dtype=np.uint8)
    for i, e in enumerate(encoded):
        mat[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
    return np.broadcast_to(mat, (rows, width)) if len(encoded) == 1 else mat


def _integer_digits(q: npt.NDArray[np.int64], width: int, *, keep_zeros: bool = False) -> Bytes:
    """Decimal digits of non-negative integers, right-aligned in ``width`` columns; leading zeros as padding."""
    out = np.empty((q.size, width), dtype=np.uint8)
    rest = q.copy()
    for k in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, 10)
        out[:, k] = digit + 48
    if not keep_zeros and width > 1:
        lead = q[:, None] < 10 ** np.arange(width - 1, 0, -1, dtype=np.int64)[None, :]
        out[:, : width - 1][lead] = 0
    return out


def _number(v: Array) -> Bytes:
    """Floats as ``-123.4567`` (4 decimals), zero-padded on the left, one row per value."""
    scaled = np.rint(np.abs(v) * 10**DECIMALS).astype(np.int64)
    whole, frac = np.divmod(scaled, 10**DECIMALS)
    width = max(1, len(str(int(whole.max())))) if whole.size else 1
    sign = np.where(v < 0, ord("-"), 0).astype(np.uint8)[:, None]
    dot = np.full((v.size, 1), ord("."), dtype=np.uint8)
    return np.hstack([sign, _integer_digits(whole, width), dot, _integer_digits(frac, DECIMALS, keep_zeros=True)])


def _prefix(measurement: str, site: str, device: str) -> str:
    return f"{escape_measurement(measurement)},device={escape_tag(device)},site={escape_tag(site)} "


def _groups(block: Block) -> dict[tuple[str, ...], list[int]]:
    """Rows of a block by the set of metrics they report (a main substation reports more than a meter)."""
    out: dict[tuple[str, ...], list[int]] = {}
    for i in range(len(block.refs)):
        names = tuple(n for n, v in block.metrics.items() if not np.isnan(v[i, 0]))
        out.setdefault(names, []).append(i)
    return out


def _flagged(block: Block, rows: list[int]) -> npt.NDArray[np.bool_]:
    """(rows, times): readings that carry a flag (they take the Point path)."""
    shape = (len(rows), next(iter(block.metrics.values())).shape[1])
    out = np.zeros(shape, dtype=bool)
    for f in block.flags.values():
        out |= f[rows] != 0
    return out


def _group_lines(frame: Frame, b: int, measurement: str, names: tuple[str, ...], rows: list[int]) -> Bytes:
    """The line-protocol byte matrix of one group's unflagged readings, one row per (device, time)."""
    block, times = frame.blocks[b], len(frame.t_ms)
    n = len(rows) * times
    keep = ~_flagged(block, rows).reshape(-1)
    refs = [block.refs[i] for i in rows]
    prefixes = _text([_prefix(measurement, r.site.id, r.device.id) for r in refs], len(rows))
    pieces = [np.repeat(prefixes, times, axis=0)]
    for k, name in enumerate(names):
        pieces.append(_text([("," if k else "") + escape_tag(name) + "="], n))
        pieces.append(_number(block.metrics[name][rows].reshape(-1)))
    ts = (frame.t_ms[None, :] + frame.skew_ms[b][rows][:, None]).reshape(-1)
    pieces += [_text([" "], n), _integer_digits(ts, 13, keep_zeros=True), _text(["\n"], n)]
    return np.hstack(pieces)[keep]


def frame_lines(frame: Frame, catalog: Catalog) -> Iterator[bytes]:
    """Line-protocol bodies of a frame's unflagged readings, at most LINES_PER_POST lines each."""
    for b, block in enumerate(frame.blocks):
        measurement = catalog.domain_of[next(iter(block.metrics))]
        for names, rows in _groups(block).items():
            mat = _group_lines(frame, b, measurement, names, rows)
            for k in range(0, len(mat), LINES_PER_POST):
                part = mat[k : k + LINES_PER_POST]
                yield part[part != 0].tobytes()


def frame_points(frame: Frame, catalog: Catalog, *, flagged_only: bool = False) -> list[Point]:
    """A frame's readings as Points (the ordinary path), or only those that carry a flag."""
    points = []
    domain_of = catalog.domain_of
    for g in frame.readings():
        if flagged_only and not g.flags:
            continue
        fields: dict[str, float | str] = dict(g.metrics)
        fields.update({f"{n}_flag": f for n, f in g.flags.items()})
        points.append(Point(domain_of[next(iter(g.metrics))], g.site, g.device, g.sent_ts, fields))
    return points


def _any_flags(frame: Frame) -> bool:
    return any(bool(f.any()) for b in frame.blocks for f in b.flags.values())


# -------------------------------------------------------------------------------------------- writing


class _Writers:
    """Threads posting line-protocol bodies to InfluxDB; the first error is raised by ``close()``."""

    def __init__(self, store: InfluxStore, threads: int = WRITERS) -> None:
        self.store = store
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4 * threads)
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._run, name=f"backfill-writer-{k}", daemon=True)
                        for k in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while (body := self.queue.get()) is not None:
            if self.error is None:
                try:
                    # uncompressed: on the loopback gzip would cost more CPU than it saves
                    self.store.write_lines(body, compress=False)
                except BaseException as exc:  # handed to the producer by close()
                    self.error = exc

    def put(self, body: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(body)

    def close(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error


def backfill(store: TimeSeriesStore, timeline: Timeline, end_ms: int, catalog: Catalog, *,
             progress: Progress | None = None, on_frame: Callable[[Frame], None] | None = None,
             chunk: int = 360) -> BackfillResult:
    """Write the timeline's readings from its start to ``end_ms`` into ``store``; ``progress(n)`` after
    each frame with the readings written so far, ``on_frame`` sees every frame (ground truth)."""
    started, done = time.perf_counter(), 0
    writers = _Writers(store) if isinstance(store, InfluxStore) else None
    try:
        for frame in timeline.frames(end_ms, chunk=chunk):
            if on_frame is not None:
                on_frame(frame)
            _write_frame(store, writers, frame, catalog)
            done += frame.count
            if progress is not None:
                progress(done)
    finally:
        if writers is not None:
            writers.close()
    if isinstance(store, InfluxStore) and done:  # written long after the rollup CQs ran: mark for their repair
        start = int(timeline.start_s * 1000)
        store.mark_late({m.domain: [(start, end_ms)] for m in catalog.metrics.values()})
    return BackfillResult(done, time.perf_counter() - started)


def _write_frame(store: TimeSeriesStore, writers: _Writers | None, frame: Frame, catalog: Catalog) -> None:
    if writers is None:
        store.write(frame_points(frame, catalog))
        return
    for body in frame_lines(frame, catalog):
        writers.put(body)
    if _any_flags(frame):
        writers.put(lines(frame_points(frame, catalog, flagged_only=True)))


