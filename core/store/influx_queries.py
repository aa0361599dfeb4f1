"""The InfluxQL query families behind the TimeSeriesStore: stored fields, series windows, counter deltas,
minute means, hour sums (and their per-hour fingerprints) and the latest values.

Statements are built from quote_ident/quote_literal only; the results are parsed into the store's types here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from smartpark.core.catalog import Catalog, Metric
from smartpark.core.points import Point
from smartpark.core.store import base
from smartpark.core.store.base import DAY_MS, HOUR_MS, MINUTE_MS
from smartpark.core.store.influx_http import InfluxHttp
from smartpark.core.store.line_protocol import quote_ident, quote_literal

__all__ = ["InfluxQueries"]

# stored_fields: times of one series closer than this are read in one range; statements per request
LOOKUP_SPAN_MS = 15 * MINUTE_MS
LOOKUP_STATEMENTS = 100
EXACT_REQUESTS = 2  # concurrent requests computing the hours of one hour_sums call
# latest_many's statements go as this many concurrent requests: InfluxDB runs the statements of one request
# one after the other, on one core (the park's overview: p50 212 ms in one request, see bench/bench_api.py)
LATEST_REQUESTS = 3


def _spans(stamps: list[int], span_ms: int) -> list[tuple[int, int]]:
    """Sorted times grouped into (first, last) ranges no longer than ``span_ms``."""
    out: list[tuple[int, int]] = []
    for ts in stamps:
        if out and ts - out[-1][0] <= span_ms:
            out[-1] = (out[-1][0], ts)
        else:
            out.append((ts, ts))
    return out


class InfluxQueries:
    """The query families over one database; ``rp`` is the retention policy named in FROM clauses (None: the
    database's DEFAULT policy)."""

    def __init__(self, http: InfluxHttp, catalog: Catalog) -> None:
        self.http, self.catalog = http, catalog
        self.rp: str | None = None
        self._readers = ThreadPoolExecutor(LATEST_REQUESTS, thread_name_prefix="influx-read")

    def close(self) -> None:
        self._readers.shutdown(wait=True)

    def _from(self, measurement: str) -> str:
        m = quote_ident(measurement)
        return f"{quote_ident(self.rp)}.{m}" if self.rp else m

    def stored_fields(self, points: Sequence[Point]) -> base.StoredFields:
        """Per series, its float fields over ranges of at most LOOKUP_SPAN_MS covering the points' times (InfluxQL
        cannot OR time conditions), filtered to those times here; LOOKUP_STATEMENTS statements per request."""
        wanted: dict[tuple[str, str, str], tuple[set[int], set[str]]] = {}
        for p in points:
            stamps, fields = wanted.setdefault((p.measurement, p.site, p.device), (set(), set()))
            stamps.add(p.ts_ms)
            fields.update(k for k, v in p.fields.items() if not isinstance(v, str))
        statements: list[tuple[tuple[str, str, str], set[int], str]] = []
        for key, (stamps, fields) in wanted.items():
            if not fields:
                continue
            measurement, site, device = key
            select = ", ".join(quote_ident(f) for f in sorted(fields))
            for lo, hi in _spans(sorted(stamps), LOOKUP_SPAN_MS):
                statements.append((key, stamps, f"SELECT {select} FROM {self._from(measurement)} WHERE "  # noqa: S608 (InfluxQL; names and values quoted)
                                   f"{self._where(site, device, lo, hi + 1)}"))
        out: base.StoredFields = {}
        for i in range(0, len(statements), LOOKUP_STATEMENTS):
            part = statements[i:i + LOOKUP_STATEMENTS]
            for (key, stamps, _), result in zip(part, self.http.query("; ".join(s for _, _, s in part)), strict=True):
                for series in result.get("series", []):
                    names = series["columns"][1:]
                    for row in series.get("values", []):
                        if int(row[0]) in stamps:
                            out[(*key, int(row[0]))] = {n: v for n, v in zip(names, row[1:], strict=True)
                                                        if v is not None}
        return out

    def series(self, query: base.SeriesQuery) -> list[base.Series]:
        if query.agg not in base.AGGREGATES:
            raise ValueError(f"unknown aggregate {query.agg!r}; one of {', '.join(base.AGGREGATES)}")
        if query.every_ms <= 0 or query.end_ms <= query.start_ms:
            raise ValueError(f"bad window: every {query.every_ms} ms from {query.start_ms} to {query.end_ms}")
        if query.agg == "delta":
            return self._delta(query)
        out = []
        for result in self.http.query(self._agg_statement(query)):
            for s in result.get("series", []):
                tags = s.get("tags", {})
                points = [(int(row[0]), float(row[1])) for row in s.get("values", []) if row[1] is not None]
                if points:
                    device = tags.get("device") if query.group_by == "device" else None
                    out.append(base.Series(tags.get("site", query.site or ""), device, points))
        out.sort(key=lambda s: (s.site, s.device or ""))
        return out

    @staticmethod
    def _where(site: str | None, device: str | None, start_ms: int, end_ms: int) -> str:
        where = []
        if site is not None:
            where.append(f'"site" = {quote_literal(site)}')
        if device is not None:
            where.append(f'"device" = {quote_literal(device)}')
        where += [f"time >= {int(start_ms)}ms", f"time < {int(end_ms)}ms"]
        return " AND ".join(where)

    def _agg_statement(self, query: base.SeriesQuery) -> str:
        where = self._where(query.site, query.device, query.start_ms, query.end_ms)
        group = '"site"' if query.group_by == "site" else '"site", "device"'
        return (
            f"SELECT {query.agg}({quote_ident(query.field)}) FROM {self._from(query.measurement)} "  # noqa: S608 (InfluxQL; names and values quoted)
            f"WHERE {where} GROUP BY time({int(query.every_ms)}ms), {group} fill(none)"
        )

    def _delta(self, query: base.SeriesQuery) -> list[base.Series]:
        return self.counter_deltas(query)[0]

    def counter_deltas(self, query: base.SeriesQuery) -> tuple[list[base.Series], list[base.CounterEvent]]:
        """One pass over the minute steps per window and device: the sum, the smallest step, the longest elapsed
        time and the highest rate. A window whose steps are all ordinary (none negative, none longer than the gap,
        none faster than the bound) keeps InfluxDB's sum; the rare others (a reset, a jump, a gap, a step near the
        bound) are read step by step and classified here, with the rules of SeriesQuery ``delta``."""
        offset = query.start_ms % query.every_ms
        (result,) = self.http.query(
            f'SELECT sum("d"), min("d"), max("e"), max("r") FROM ({self._steps(query, rate=True)}) '  # noqa: S608
            f'GROUP BY time({int(query.every_ms)}ms, {offset}ms), "site", "device" fill(none)')
        sums: list[tuple[str, str, int, float]] = []
        suspect: list[tuple[str, str, int]] = []
        for s in result.get("series", []):
            site, device = s["tags"]["site"], s["tags"]["device"]
            bound = query.bound_per_ms(device)
            for ts, total, low, longest, fastest in s.get("values", []):
                if total is None or int(ts) < query.start_ms:
                    continue
                if low >= 0 and longest <= query.max_gap_ms and (bound is None or fastest <= bound * HOUR_MS):
                    sums.append((site, device, int(ts), float(total)))
                else:
                    suspect.append((site, device, int(ts)))
        events = self._suspect_windows(query, suspect, sums)
        return base.delta_series(query, sums, events), events

    def _suspect_windows(self, query: base.SeriesQuery, windows: list[tuple[str, str, int]],
                         sums: list[tuple[str, str, int, float]]) -> list[base.CounterEvent]:
        """Each window's steps read one by one: ordinary ones added to ``sums``, the others as events."""
        if not windows:
            return []
        statements = []
        for site, device, w in windows:
            part = msgspec.structs.replace(query, site=site, device=device, start_ms=w,
                                           end_ms=min(w + query.every_ms, query.end_ms))
            statements.append(f'SELECT "v", "d", "e" FROM ({self._steps(part)})')  # noqa: S608
        results = self.http.statements(statements)
        events: list[base.CounterEvent] = []
        for (site, device, w), result in zip(windows, results, strict=True):
            total = 0.0
            for s in result.get("series", []):
                for ts, v, d, e in s.get("values", []):
                    if int(ts) < w or None in (v, d, e):
                        continue
                    ev = base.counter_event(query, (site, device, int(ts), float(v), float(d), int(e)))
                    if ev is None:
                        total += float(d)
                    else:
                        events.append(ev)
            sums.append((site, device, w, total))
        events.sort(key=lambda ev: (ev.site, ev.device, ev.ts_ms))
        return events

    def _steps(self, query: base.SeriesQuery, *, rate: bool = False) -> str:
        """Per device and minute: the minute's last reading, the step to it and the time since the previous
        reading's minute (with ``rate``: the step per hour instead of the reading), from a gap before the start
        (so the first step is found); rules in SeriesQuery."""
        where = self._where(query.site, query.device, base.lookback_ms(query), query.end_ms)
        f = quote_ident(query.field)
        # each function is an iterator over the raw points in InfluxDB 1.x: the first pass asks for no reading
        fields = (f'difference(last({f})) AS "d", elapsed(last({f}), 1ms) AS "e", derivative(last({f}), 1h) AS "r"'
                  if rate else f'last({f}) AS "v", difference(last({f})) AS "d", elapsed(last({f}), 1ms) AS "e"')
        return (f'SELECT {fields} '  # noqa: S608 (InfluxQL; names and values quoted)
                f"FROM {self._from(query.measurement)} WHERE {where} "
                f'GROUP BY time({MINUTE_MS}ms), "site", "device" fill(none)')

    def minute_means(self, query: base.MinuteQuery) -> list[base.MinuteRow]:
        """Day by day: a month of minutes per device is more rows than InfluxDB returns in one series."""
        out: list[base.MinuteRow] = []
        for start in range(query.start_ms, query.end_ms, DAY_MS):
            chunk = msgspec.structs.replace(query, start_ms=start, end_ms=min(start + DAY_MS, query.end_ms))
            out += self._minute_means(chunk)
        out.sort(key=lambda r: (r.device, r.ts_ms))
        return out

    def _minute_means(self, query: base.MinuteQuery) -> list[base.MinuteRow]:
        return self._minute_rows(query, self.http.query("; ".join(self._minute_statements(query))))

    def _minute_statements(self, query: base.MinuteQuery) -> list[str]:
        """One statement for the minute means of every field, one per field counting its invalid flags
        (string fields cannot be averaged, but can be filtered and counted)."""
        where = self._where(query.site, query.device, query.start_ms, query.end_ms)
        src = self._from(query.measurement)
        means = ", ".join(f"mean({quote_ident(f)}) AS {quote_ident(f)}" for f in query.fields)
        statements = [f'SELECT {means} FROM {src} WHERE {where} GROUP BY time(1m), "device" fill(none)']  # noqa: S608
        for f in query.fields:
            statements.append(f"SELECT count({quote_ident(f + '_flag')}) FROM {src} WHERE {where} "  # noqa: S608
                              f'AND {self._bad_flag(f, query.valid_flags)} GROUP BY time(1m), "device" fill(none)')
        return statements

    @staticmethod
    def _bad_flag(field: str, valid_flags: Sequence[str]) -> str:
        flag = quote_ident(field + "_flag")
        return " AND ".join(f"{flag} != {quote_literal(v)}" for v in valid_flags) or f"{flag} =~ /./"

    @staticmethod
    def _minute_rows(query: base.MinuteQuery, results: list[dict[str, Any]]) -> list[base.MinuteRow]:
        invalid: dict[tuple[str, int], set[str]] = {}
        for f, result in zip(query.fields, results[1:], strict=True):
            for s in result.get("series", []):
                for ts, _count in s.get("values", []):
                    invalid.setdefault((s["tags"]["device"], int(ts)), set()).add(f)
        out = []
        for s in results[0].get("series", []):
            device, names = s["tags"]["device"], s["columns"][1:]
            for row in s.get("values", []):
                values = {n: float(v) for n, v in zip(names, row[1:], strict=True) if v is not None}
                ts = int(row[0])
                out.append(base.MinuteRow(device, ts, values, frozenset(invalid.get((device, ts), ()))))
        out.sort(key=lambda r: (r.device, r.ts_ms))
        return out

    def hour_sums(self, query: base.HourQuery, hours: Collection[int] | None = None) -> list[base.HourSum]:
        """From the minute means (the reference computation). (Summing corrected minute means per hour in
        InfluxDB with a subquery was measured slower on 1.6 than the minute means themselves: 17 s against 6 s
        for a month.)"""
        if not query.devices or not query.fields or query.end_ms <= query.start_ms:
            return []
        if not 0 <= query.offset_ms < HOUR_MS:
            raise ValueError(f"offset_ms must be in [0, {HOUR_MS}), got {query.offset_ms}")
        if hours is None:
            first = query.start_ms - (query.start_ms - query.offset_ms) % HOUR_MS
            hours = range(first, query.end_ms, HOUR_MS)
        return self._exact_hours(query, hours) if hours else []

    def hour_fingerprints(self, query: base.HourQuery) -> base.HourPrints:
        """The counts of each field's points and flags per (device, hour) with data: plain aggregates, about a
        tenth of the minute means' cost. Blind to a reading overwritten in place by another value."""
        if not query.devices or not query.fields or query.end_ms <= query.start_ms:
            return {}
        src = self._from(query.measurement)
        fields = base.minute_query(query).fields
        where = (f"{self._where(query.site, None, query.start_ms, query.end_ms)} "
                 f"AND ({self._devices([d for d, _ in query.devices])})")
        group = f'GROUP BY time({HOUR_MS}ms, {int(query.offset_ms)}ms), "device" fill(none)'
        statements = [
            f"SELECT {', '.join(f'count({quote_ident(f + suffix)})' for f in fields)} "  # noqa: S608
            f"FROM {src} WHERE {where} {group}" for suffix in ("", "_flag")]
        values, flags = self.http.query("; ".join(statements))
        out: base.HourPrints = {}
        for s in values.get("series", []):
            for row in s.get("values", []):
                out[s["tags"]["device"], int(row[0])] = tuple(int(v or 0) for v in row[1:])
        for s in flags.get("series", []):
            for row in s.get("values", []):
                k = (s["tags"]["device"], int(row[0]))
                if k in out:
                    out[k] += tuple(int(v or 0) for v in row[1:])
        return out

    def _exact_hours(self, query: base.HourQuery, hours: Collection[int]) -> list[base.HourSum]:
        """HourSums of some hours from their minute means: runs of hours of at most a day each, in a few
        concurrent requests (InfluxDB computes each on a core of its own)."""
        chunks = [base.minute_query(query, start, end) for start, end in base.hour_runs(query, hours, DAY_MS)]
        batches = [chunks[i::EXACT_REQUESTS] for i in range(min(EXACT_REQUESTS, len(chunks)))]

        def run(batch: list[base.MinuteQuery]) -> list[base.MinuteRow]:
            results = self.http.query("; ".join(s for chunk in batch for s in self._minute_statements(chunk)))
            rows, at = [], 0
            for chunk in batch:
                rows += self._minute_rows(chunk, results[at:at + 1 + len(chunk.fields)])
                at += 1 + len(chunk.fields)
            return rows

        if len(batches) == 1:
            rows = run(batches[0])
        else:
            with ThreadPoolExecutor(len(batches)) as pool:
                rows = [r for part in pool.map(run, batches) for r in part]
        rows.sort(key=lambda r: (r.device, r.ts_ms))
        return base.hour_sums_from_minutes(rows, query)

    @staticmethod
    def _devices(devices: Sequence[str]) -> str:
        return " OR ".join(f'"device" = {quote_literal(d)}' for d in devices)

    def latest(self, site: str, *, lookback_ms: int = 7 * DAY_MS) -> list[base.LatestValue]:
        return self.latest_many([site], lookback_ms=lookback_ms)[site]

    def latest_many(self, sites: Sequence[str], *, lookback_ms: int = 7 * DAY_MS) -> dict[str, list[base.LatestValue]]:
        """One statement per catalog metric for all ``sites`` at once (the overview's whole park in one
        request, not one per site: a tenth of the statements)."""
        out: dict[str, list[base.LatestValue]] = {site: [] for site in sites}
        metrics = sorted(self.catalog.metrics.values(), key=lambda m: (m.domain, m.name))
        if not metrics or not sites:
            return out
        where = " OR ".join(f'"site" = {quote_literal(site)}' for site in out)
        statements = [
            f"SELECT {quote_ident(m.name)}, {quote_ident(m.name + '_flag')} FROM {self._from(m.domain)} "  # noqa: S608 (InfluxQL; names and values quoted)
            f'WHERE ({where}) AND time > now() - {int(lookback_ms)}ms '
            f'GROUP BY "site", "device" ORDER BY time DESC LIMIT 1'
            for m in metrics
        ]
        requests = LATEST_REQUESTS if len(out) > 1 else 1  # one site (/latest): one request, this thread
        parts = [p for p in (list(range(k, len(statements), requests)) for k in range(requests)) if p]
        if len(parts) == 1:
            answers = [self.http.statements(statements)]
        else:
            answers = list(self._readers.map(lambda part: self.http.statements([statements[i] for i in part]), parts))
        for part, results in zip(parts, answers, strict=True):
            for i, result in zip(part, results, strict=True):
                self._add_latest(out, metrics[i], result)
        for values in out.values():
            values.sort(key=lambda v: (v.device, v.measurement, v.metric))
        return out

    @staticmethod
    def _add_latest(out: dict[str, list[base.LatestValue]], metric: Metric, result: dict[str, Any]) -> None:
        for s in result.get("series", []):
            tags = s.get("tags", {})
            values = out.get(tags.get("site", ""))
            if values is None:
                continue
            columns: list[str] = s.get("columns", [])
            for row in s.get("values", []):
                record = dict(zip(columns, row, strict=False))
                value = record.get(metric.name)
                if value is None:
                    continue
                flag = record.get(metric.name + "_flag")
                values.append(base.LatestValue(
                    site=tags["site"], device=tags.get("device", ""), measurement=metric.domain,
                    metric=metric.name, ts_ms=int(record["time"]), value=float(value),
                    flag=flag if isinstance(flag, str) and flag else None))

