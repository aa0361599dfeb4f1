"""The embedded time-series store: SQLite in WAL mode in the data dir, so `smartpark up` needs no server.

One row per (series, field, time) in a WITHOUT ROWID table whose primary key is the index the queries
need (series, field, time); a `latest` table kept by upsert answers "latest value per metric" without a
scan. Writing the same (series, field, time) again overwrites, as InfluxDB does.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

from smartpark.core.catalog import Catalog
from smartpark.core.clock import now_ms
from smartpark.core.errors import StoreRejected, StoreUnavailable
from smartpark.core.points import Point
from smartpark.core.store.base import (
    DAY_MS,
    HOUR_MS,
    ClosedOnExit,
    CounterEvent,
    HourPrints,
    HourQuery,
    HourSum,
    LatestValue,
    MinuteQuery,
    MinuteRow,
    Series,
    SeriesQuery,
    StoredFields,
    check_points,
    counter_event,
    delta_series,
    hour_runs,
    hour_sums_from_minutes,
    lookback_ms,
    minute_query,
)

__all__ = ["EmbeddedStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, measurement TEXT NOT NULL, site TEXT NOT NULL, device TEXT NOT NULL,
    UNIQUE (measurement, site, device));
CREATE TABLE IF NOT EXISTS points (
    series_id INTEGER NOT NULL, field TEXT NOT NULL, ts INTEGER NOT NULL, value REAL, text TEXT,
    PRIMARY KEY (series_id, field, ts)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    series_id INTEGER NOT NULL, field TEXT NOT NULL, ts INTEGER NOT NULL, value REAL, text TEXT,
    PRIMARY KEY (series_id, field)) WITHOUT ROWID;
"""

UPSERT_LATEST = """
INSERT INTO latest (series_id, field, ts, value, text) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (series_id, field) DO UPDATE SET ts = excluded.ts, value = excluded.value, text = excluded.text
WHERE excluded.ts >= latest.ts
"""

AGG_SQL = {"mean": "AVG(p.value)", "min": "MIN(p.value)", "max": "MAX(p.value)", "sum": "SUM(p.value)",
           "count": "COUNT(p.value)", "last": "p.value"}

# delta (rules in SeriesQuery): the last value of each minute (bare column beside MAX), and per series with LAG
# the step to it and the time since the previous reading's minute; :r is the device's bound per ms (NULL: none).
STEPS_SQL = """
WITH m AS (
    SELECT s.site AS site, s.device AS device, p.ts - (p.ts % 60000) AS minute, p.value AS v, MAX(p.ts)
    FROM points p JOIN series s ON s.id = p.series_id
    WHERE s.measurement = :m AND p.field = :f AND p.ts >= :lookback AND p.ts < :end AND p.value IS NOT NULL
    {filters}
    GROUP BY p.series_id, minute),
d AS (SELECT site, device, minute, v, v - LAG(v) OVER w AS dv, minute - LAG(minute) OVER w AS e
      FROM m WINDOW w AS (PARTITION BY site, device ORDER BY minute)),
b AS (SELECT d.*, COALESCE((SELECT value FROM json_each(:bounds) WHERE key = d.device), :rate) AS r
      FROM d WHERE minute >= :start AND dv IS NOT NULL)
"""
DELTA_SQL = STEPS_SQL + """
SELECT site, device, :start + ((minute - :start) / :every) * :every AS w,
       SUM(CASE WHEN dv >= 0 AND e <= :gap AND (r IS NULL OR dv <= (e + 60000) * r) THEN dv ELSE 0 END),
       SUM(NOT (dv >= 0 AND e <= :gap AND (r IS NULL OR dv <= (e + 60000) * r)))
FROM b GROUP BY site, device, w ORDER BY site, device, w
"""
EVENTS_SQL = STEPS_SQL + """
SELECT site, device, minute, v, dv, e FROM b
WHERE dv < 0 OR e > :gap OR (r IS NOT NULL AND dv > (e + 60000) * r)
ORDER BY site, device, minute
"""

# Minute means of several fields with, per field, the count of readings whose flag is not a valid one.
MINUTES_SQL = """
SELECT s.device, p.field, p.ts - (p.ts % 60000) AS minute, AVG(p.value),
       SUM(f.text IS NOT NULL AND f.text NOT IN (SELECT value FROM json_each(:valid)))
FROM points p JOIN series s ON s.id = p.series_id
LEFT JOIN points f ON f.series_id = p.series_id AND f.field = p.field || '_flag' AND f.ts = p.ts
WHERE s.measurement = :m AND s.site = :site AND p.field IN (SELECT value FROM json_each(:fields))
  AND p.ts >= :start AND p.ts < :end AND p.value IS NOT NULL {filters}
GROUP BY s.device, p.field, minute
"""

# Per device, hour and field: the count and total of the values and the count of invalid flags (hour_fingerprints)
HOUR_PRINTS_SQL = """
SELECT s.device, p.ts - ((p.ts - :offset) % 3600000) AS hour, p.field, COUNT(*), TOTAL(p.value),
       TOTAL(f.text IS NOT NULL AND f.text NOT IN (SELECT value FROM json_each(:valid)))
FROM points p JOIN series s ON s.id = p.series_id
LEFT JOIN points f ON f.series_id = p.series_id AND f.field = p.field || '_flag' AND f.ts = p.ts
WHERE s.measurement = :m AND s.site = :site AND p.field IN (SELECT value FROM json_each(:fields))
  AND s.device IN (SELECT value FROM json_each(:devices)) AND p.ts >= :start AND p.ts < :end
  AND p.value IS NOT NULL
GROUP BY s.device, hour, p.field
"""

LATEST_SQL = """
SELECT s.device, s.measurement, l.field, l.ts, l.value, f.text
FROM latest l JOIN series s ON s.id = l.series_id
LEFT JOIN latest f ON f.series_id = l.series_id AND f.field = l.field || '_flag' AND f.ts = l.ts
WHERE s.site = ? AND l.value IS NOT NULL AND l.ts >= ?
ORDER BY s.device, l.field
"""


LOOKUP_CHUNK = 500  # times per stored_fields statement (SQLite's bound-parameter limit is far above)


class EmbeddedStore(ClosedOnExit):
    """SQLite-backed TimeSeriesStore; safe to use from several threads and processes."""

    def __init__(self, path: Path, catalog: Catalog) -> None:
        self.path = Path(path)
        self.catalog = catalog
        self._local = threading.local()
        self._series: dict[tuple[str, str, str], int] = {}
        self._write_lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            self._local.conn = conn
        return conn

    def init(self) -> None:
        try:
            self._conn().executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"embedded store {self.path}: {exc}") from exc

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT 1 FROM series LIMIT 1")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"embedded store {self.path}: {exc}") from exc

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- writes
    def _series_id(self, conn: sqlite3.Connection, key: tuple[str, str, str]) -> int:
        sid = self._series.get(key)
        if sid is None:
            conn.execute("INSERT OR IGNORE INTO series (measurement, site, device) VALUES (?, ?, ?)", key)
            row = conn.execute(
                "SELECT id FROM series WHERE measurement = ? AND site = ? AND device = ?", key).fetchone()
            sid = self._series[key] = row[0]
        return sid

    def write(self, points: Sequence[Point]) -> None:
        check_points(points)
        with self._write_lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                rows = self._rows(conn, points)
                conn.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?)", rows)
                conn.executemany(UPSERT_LATEST, rows)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._series.clear()  # ids cached in the rolled-back transaction no longer exist
                raise StoreUnavailable(f"embedded store write failed: {exc}") from exc

    def _rows(self, conn: sqlite3.Connection, points: Sequence[Point]) -> list[tuple[object, ...]]:
        rows: list[tuple[object, ...]] = []
        for p in points:
            sid = self._series_id(conn, (p.measurement, p.site, p.device))
            for name, value in p.fields.items():
                if isinstance(value, str):
                    rows.append((sid, name, p.ts_ms, None, value))
                else:
                    rows.append((sid, name, p.ts_ms, value, None))
        return rows

    # --- queries
    def stored_fields(self, points: Sequence[Point]) -> StoredFields:
        """Per series, the rows at the points' times (an index seek per chunk of LOOKUP_CHUNK times)."""
        stamps: dict[tuple[str, str, str], set[int]] = {}
        for p in points:
            stamps.setdefault((p.measurement, p.site, p.device), set()).add(p.ts_ms)
        conn = self._conn()
        out: StoredFields = {}
        for key, times in stamps.items():
            row = conn.execute("SELECT id FROM series WHERE measurement = ? AND site = ? AND device = ?",
                               key).fetchone()
            if row is None:
                continue
            ordered = sorted(times)
            for i in range(0, len(ordered), LOOKUP_CHUNK):
                part = ordered[i:i + LOOKUP_CHUNK]
                marks = ",".join("?" * len(part))
                sql = f"SELECT ts, field, value, text FROM points WHERE series_id = ? AND ts IN ({marks})"  # noqa: S608
                for ts, field, value, text in conn.execute(sql, (row[0], *part)):
                    out.setdefault((*key, ts), {})[field] = value if text is None else text
        return out

    def series(self, query: SeriesQuery) -> list[Series]:
        if query.every_ms <= 0:
            raise StoreRejected("every must be positive")
        if query.agg == "delta":
            return self._delta(query)
        device_col = "s.device" if query.group_by == "device" else "NULL"
        # `last` relies on SQLite's documented bare-column rule: with MAX(ts), value comes from that row.
        extra = ", MAX(p.ts)" if query.agg == "last" else ""
        # Only fixed SQL fragments are joined; every value is a bound parameter.
        sql = (
            f"SELECT s.site, {device_col} AS dev, p.ts - (p.ts % :every) AS w, {AGG_SQL[query.agg]}{extra} "  # noqa: S608
            "FROM points p JOIN series s ON s.id = p.series_id "
            "WHERE s.measurement = :m AND p.field = :f AND p.ts >= :start AND p.ts < :end "
            "AND p.value IS NOT NULL"
            + (" AND s.site = :site" if query.site is not None else "")
            + (" AND s.device = :device" if query.device is not None else "")
            + " GROUP BY s.site, dev, w ORDER BY s.site, dev, w"
        )
        params = {"every": query.every_ms, "m": query.measurement, "f": query.field,
                  "start": query.start_ms, "end": query.end_ms, "site": query.site, "device": query.device}
        out: dict[tuple[str, str | None], list[tuple[int, float]]] = {}
        for row in self._conn().execute(sql, params):
            out.setdefault((row[0], row[1]), []).append((row[2], float(row[3])))
        return [Series(site, dev, pts) for (site, dev), pts in out.items()]

    def _delta(self, query: SeriesQuery) -> list[Series]:
        return self.counter_deltas(query)[0]

    def counter_deltas(self, query: SeriesQuery) -> tuple[list[Series], list[CounterEvent]]:
        """Ordinary steps summed per window with a count of the others, which (rare) are then read and classified."""
        rows = self._steps(DELTA_SQL, query).fetchall()
        sums = [(site, dev, w, float(v)) for site, dev, w, v, _ in rows]
        events = self.counter_events(query) if any(odd for *_, odd in rows) else []
        return delta_series(query, sums, events), events

    def counter_events(self, query: SeriesQuery) -> list[CounterEvent]:
        out = []
        for site, device, minute, v, dv, e in self._steps(EVENTS_SQL, query):
            ev = counter_event(query, (site, device, minute, float(v), float(dv), int(e)))
            if ev is not None:
                out.append(ev)
        return out

    def _steps(self, sql: str, query: SeriesQuery) -> sqlite3.Cursor:
        filters = (" AND s.site = :site" if query.site is not None else "") + (
            " AND s.device = :device" if query.device is not None else "")
        rate = query.max_per_h / HOUR_MS if query.max_per_h is not None else None
        bounds = {d: v / HOUR_MS for d, v in query.device_max_per_h}
        params = {"every": query.every_ms, "m": query.measurement, "f": query.field, "start": query.start_ms,
                  "lookback": lookback_ms(query), "end": query.end_ms, "site": query.site, "device": query.device,
                  "gap": query.max_gap_ms, "rate": rate, "bounds": json.dumps(bounds)}
        return self._conn().execute(sql.format(filters=filters), params)

    def minute_means(self, query: MinuteQuery) -> list[MinuteRow]:
        sql = MINUTES_SQL.format(filters=" AND s.device = :device" if query.device is not None else "")
        params = {"m": query.measurement, "site": query.site, "fields": json.dumps(list(query.fields)),
                  "valid": json.dumps(list(query.valid_flags)), "start": query.start_ms, "end": query.end_ms,
                  "device": query.device}
        rows: dict[tuple[str, int], tuple[dict[str, float], set[str]]] = {}
        for device, field, minute, mean, bad in self._conn().execute(sql, params):
            values, invalid = rows.setdefault((device, minute), ({}, set()))
            values[field] = float(mean)
            if bad:
                invalid.add(field)
        return [MinuteRow(dev, ts, values, frozenset(invalid))
                for (dev, ts), (values, invalid) in sorted(rows.items())]

    def hour_sums(self, query: HourQuery, hours: Collection[int] | None = None) -> list[HourSum]:
        """From the minute means, in Python (the reference computation): one request per run of ``hours``."""
        if not query.devices or not query.fields or query.end_ms <= query.start_ms:
            return []
        if hours is None:
            return hour_sums_from_minutes(self.minute_means(minute_query(query)), query)
        rows = [r for start, end in hour_runs(query, hours) for r in self.minute_means(minute_query(query, start, end))]
        rows.sort(key=lambda r: (r.device, r.ts_ms))
        return hour_sums_from_minutes(rows, query)

    def hour_fingerprints(self, query: HourQuery) -> HourPrints:
        """Per field: the count and total of its values and its count of invalid flags (so a value overwritten
        in place changes it too, unlike InfluxDB's counts)."""
        if not query.devices or not query.fields or query.end_ms <= query.start_ms:
            return {}
        fields = minute_query(query).fields
        params = {"m": query.measurement, "site": query.site, "fields": json.dumps(list(fields)),
                  "devices": json.dumps([d for d, _ in query.devices]), "valid": json.dumps(list(query.valid_flags)),
                  "start": query.start_ms, "end": query.end_ms, "offset": query.offset_ms}
        acc: dict[tuple[str, int], list[float]] = {}
        at = {f: 3 * i for i, f in enumerate(fields)}
        for device, hour, field, count, total, bad in self._conn().execute(HOUR_PRINTS_SQL, params):
            prints = acc.setdefault((device, hour), [0.0] * (3 * len(fields)))
            prints[at[field]:at[field] + 3] = [count, total, bad]
        return {key: tuple(prints) for key, prints in acc.items()}

    def latest(self, site: str, *, lookback_ms: int = 7 * DAY_MS) -> list[LatestValue]:
        since = now_ms() - lookback_ms
        rows = self._conn().execute(LATEST_SQL, (site, since))
        return [LatestValue(site, dev, m, field, ts, value, flag) for dev, m, field, ts, value, flag in rows
                if field in self.catalog]

    def latest_many(self, sites: Sequence[str], *, lookback_ms: int = 7 * DAY_MS) -> dict[str, list[LatestValue]]:
        return {site: self.latest(site, lookback_ms=lookback_ms) for site in sites}  # an index seek each


