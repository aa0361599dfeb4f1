"""Rollups that repair themselves: late points mark their windows; a scheduled task recomputes exactly those.

InfluxDB's continuous queries fill ``rp_1m`` and ``rp_1h`` over the last ``RESAMPLE_FOR`` only, so a point
written later than that (a gateway's store-and-forward flush after a 5G outage, the ingest's spool replay, a
backfill) would never reach the rollups the dashboards read. Instead of widening the CQs (which would make
every run recompute hours of data when nothing is late), each write of points older than ``LATE_MS`` also
writes a *mark*: a point of measurement ``rollup_late`` (tag ``m``: the measurement; fields ``start`` and
``end``: the late points' span, ms) timestamped with the write time, written after the data (a crash between
the two means the ingest did not ack: the broker redelivers and both are written again).

``repair()`` reads the marks written since its watermark (with an overlap for writers' clock skew and slow
requests), merges the spans per measurement and runs each rollup's own ``SELECT ... INTO`` (the CQ's text)
over those spans aligned to the rollup's interval. With nothing late it costs one query that returns nothing.
The watermark is kept as a ``rollup_repaired`` point, so a restart resumes where the last run ended.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol

from smartpark.core import clock
from smartpark.core.catalog import Catalog
from smartpark.core.errors import StoreError
from smartpark.core.points import Point
from smartpark.core.store.line_protocol import escape_tag, quote_ident

__all__ = [
    "LATE_MS",
    "MARKS",
    "RAW_RP",
    "RESAMPLE_FOR",
    "ROLLUPS",
    "InfluxLike",
    "RepairReport",
    "RollupRepairer",
    "late_spans",
    "marks_body",
    "repair",
    "rollup_select",
]

log = logging.getLogger("smartpark.store")
RAW_RP = "raw"
# (retention policy, GROUP BY interval, CQ name suffix, duration as a multiple of raw; None = infinite)
ROLLUPS: tuple[tuple[str, str, str, int | None], ...] = (
    ("rp_1m", "1m", "1m", 2),
    ("rp_1h", "1h", "1h", None),
)
# How far back each rollup CQ recomputes on every run (RESAMPLE FOR): readings a little late (batching, the
# ingest's spool) reach the rollups through the CQs; later ones through repair().
RESAMPLE_FOR = {"rp_1m": "10m", "rp_1h": "2h"}
MARKS = "rollup_late"
WATERMARK = "rollup_repaired"
# A point older than this when written may miss the 1-minute CQ (RESAMPLE FOR 10m, run every minute: it
# reaches 9 minutes back); 1 minute of margin for the clocks of the writer and InfluxDB.
LATE_MS = 8 * 60_000
OVERLAP_MS = 5 * 60_000  # marks are read this far behind the watermark (clock skew, slow requests)
FIRST_LOOK_MS = 7 * 86_400_000  # without a watermark (first run): marks of the last week
CHUNK_MS = {"1m": 6 * 3_600_000, "1h": 31 * 86_400_000}  # one SELECT ... INTO covers at most this much
EVERY_MS = {"1m": 60_000, "1h": 3_600_000}
SPLIT_GAP_MS = 3_600_000  # late points further apart than this are marked as separate spans
MAX_SPANS = 16  # spans per measurement and write at most (bounds the marks' series: the tag ``i``)
_ts = attrgetter("ts_ms")


class InfluxLike(Protocol):
    """What the repair needs of InfluxStore: its catalog and database, InfluxQL, and line protocol."""

    catalog: Catalog
    database: str

    def query(self, statements: str, *, with_db: bool = True) -> list[dict[str, Any]]: ...
    def write_lines(self, body: bytes, *, compress: bool | None = None) -> None: ...


def rollup_select(catalog: Catalog, database: str, domain: str, rp: str) -> str:
    """The rollup's SELECT ... INTO of one measurement from the raw policy (what its CQ runs, before GROUP BY):
    gauges by mean, counters by last, under the raw field names."""
    selects = [f"{'last' if m.kind == 'counter' else 'mean'}({quote_ident(m.name)}) AS {quote_ident(m.name)}"
               for m in sorted(catalog.metrics.values(), key=lambda m: m.name) if m.domain == domain]
    db, m = quote_ident(database), quote_ident(domain)
    return (f"SELECT {', '.join(selects)} INTO {db}.{quote_ident(rp)}.{m} "  # noqa: S608 (InfluxQL; names quoted)
            f"FROM {db}.{quote_ident(RAW_RP)}.{m}")


def late_spans(points: Sequence[Point], now_ms: int, domains: Iterable[str]) -> dict[str, list[tuple[int, int]]]:
    """Per rolled-up measurement, the [first, last] spans of the points older than LATE_MS (usually none: one
    C-level pass finds the oldest point, and only a batch with late points is looked at point by point).
    Late points far apart make separate spans (at most MAX_SPANS, split at the widest gaps): one reading
    dated weeks back among today's must not have the repair recompute every window in between."""
    cutoff = now_ms - LATE_MS
    if not points or min(points, key=_ts).ts_ms >= cutoff:
        return {}
    times: dict[str, list[int]] = {m: [] for m in domains}
    of = times.get  # a lookup and an append a point: a third cheaper than a set test and setdefault
    for p in points:
        late = of(p.measurement)
        if late is not None and p.ts_ms < cutoff:
            late.append(p.ts_ms)
    spans: dict[str, list[tuple[int, int]]] = {}
    for m, ts in times.items():
        if ts:  # usually one compact run (a flush, a replay): sorted only when it has to be split
            first, last = min(ts), max(ts)
            spans[m] = [(first, last)] if last - first <= SPLIT_GAP_MS else _split(sorted(ts))
    return spans


def _split(ts: list[int]) -> list[tuple[int, int]]:
    gaps = sorted(((ts[i + 1] - ts[i], i) for i in range(len(ts) - 1) if ts[i + 1] - ts[i] > SPLIT_GAP_MS),
                  reverse=True)[:MAX_SPANS - 1]
    cuts = sorted(i for _, i in gaps)
    bounds = zip([0, *(i + 1 for i in cuts)], [*cuts, len(ts) - 1], strict=True)
    return [(ts[a], ts[b]) for a, b in bounds]


def marks_body(spans: dict[str, list[tuple[int, int]]], now_ms: int) -> bytes:
    """The mark points of ``spans`` as line protocol (measurement names are catalog domains: plain words); a
    measurement's spans differ by the tag ``i`` (one point per series and time: they would overwrite each other)."""
    return "\n".join(f"{MARKS},i={i},m={escape_tag(m)} start={lo}i,end={hi + 1}i {now_ms}"
                     for m, ranges in sorted(spans.items()) for i, (lo, hi) in enumerate(ranges)).encode()


@dataclass
class RepairReport:
    taken: list[tuple[int, str, int, int]] = field(default_factory=list)  # the marks repaired
    statements: int = 0  # SELECT ... INTO statements run
    spans: int = 0  # merged spans repaired (per measurement)
    watermark_ms: int = 0  # the newest mark's time

    @property
    def marks(self) -> int:
        return len(self.taken)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


Mark = tuple[int, str, int, int]  # (written at, measurement, start, end)


def repair(store: InfluxLike, since_ms: int, done: set[Mark] | None = None) -> RepairReport:
    """Recompute the rollup windows of every mark written after ``since_ms`` that is not in ``done`` (marks
    already repaired: the read overlaps the last one); the report lists the marks it took."""
    report = RepairReport(watermark_ms=since_ms)
    result = store.query(f'SELECT "start", "end" FROM {quote_ident(MARKS)} '  # noqa: S608 (no outside input)
                         f"WHERE time > {int(since_ms) - OVERLAP_MS}ms GROUP BY \"m\"")
    by_measurement: dict[str, list[tuple[int, int]]] = {}
    for res in result:
        for series in res.get("series", []):
            m = series["tags"]["m"]
            for t, lo, hi in series.get("values", []):
                mark = (int(t), m, int(lo), int(hi))
                if lo is None or (done is not None and mark in done):
                    continue
                report.taken.append(mark)
                by_measurement.setdefault(m, []).append((mark[2], mark[3]))
                report.watermark_ms = max(report.watermark_ms, mark[0])
    for measurement, spans in sorted(by_measurement.items()):
        for lo, hi in _merge(spans):
            report.spans += 1
            for rp, every, _, _ in ROLLUPS:
                report.statements += _repair_span(store, measurement, rp, every, (lo, hi))
    return report


def _repair_span(store: InfluxLike, measurement: str, rp: str, every: str, span: tuple[int, int]) -> int:
    step, chunk = EVERY_MS[every], CHUNK_MS[every]
    start, end = span[0] - span[0] % step, span[1] + (-span[1]) % step
    select = rollup_select(store.catalog, store.database, measurement, rp)
    n = 0
    for a in range(start, end, chunk):
        b = min(a + chunk, end)
        store.query(f"{select} WHERE time >= {a}ms AND time < {b}ms GROUP BY time({every}), *")
        n += 1
    return n




class RollupRepairer:
    """Runs ``repair`` every ``interval_s`` on a thread of its own, keeping the watermark in the store."""

    def __init__(self, store: InfluxLike, interval_s: float) -> None:
        self.store, self.interval_s = store, interval_s
        self.runs = 0
        self.last: RepairReport | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rollup-repair", daemon=True)
        self._watermark: int | None = None
        self._done: set[Mark] = set()  # marks repaired that the next read still overlaps

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def run_once(self, now_ms: int | None = None) -> RepairReport:
        now_ms = clock.now_ms() if now_ms is None else now_ms
        if self._watermark is None:
            self._watermark = self._stored_watermark(now_ms)
        report = repair(self.store, self._watermark, self._done)
        self._done = {m for m in (*self._done, *report.taken) if m[0] > report.watermark_ms - OVERLAP_MS}
        if report.marks:
            self.store.write_lines(f"{WATERMARK} upto={report.watermark_ms}i {now_ms}".encode())
            log.info("rollups repaired: %d late spans from %d marks, %d statements", report.spans, report.marks,
                     report.statements)
        self._watermark = report.watermark_ms
        self.runs += 1
        self.last = report
        return report

    def _stored_watermark(self, now_ms: int) -> int:
        result = self.store.query(f'SELECT last("upto") FROM {WATERMARK}')  # noqa: S608 (a constant)
        for res in result:
            for series in res.get("series", []):
                for _, upto in series.get("values", []):
                    if upto is not None:
                        return int(upto)
        return now_ms - FIRST_LOOK_MS

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except StoreError as exc:  # InfluxDB down: the marks wait, the next round tries again
                log.warning("rollup repair skipped this round: %s", exc)
            except Exception:
                log.exception("rollup repair failed")
