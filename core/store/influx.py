"""The production time-series store: InfluxDB over its v1 HTTP API (line protocol in, InfluxQL out).

``InfluxStore`` composes the seams, each in a module of its own:

- ``influx_http.py``: the transport (httpx for /query and /ping, lean http.client connections for /write, TLS
  verification, errors typed as StoreError);
- ``line_protocol.py``: line protocol escaping and InfluxQL quoting;
- ``influx_schema.py``: database, retention policies, rollup continuous queries, users (``init``);
- ``influx_queries.py``: the InfluxQL query families (series, counter deltas, minute means, hour sums, latest);
- here: the writes (chunked, concurrent /write requests, then the late marks of core/store/rollups.py).

Computed emission hours are kept by ``core/store/hour_cache.py``, a wrapper over any store.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from smartpark.core import clock
from smartpark.core.catalog import Catalog
from smartpark.core.points import Point
from smartpark.core.store import base
from smartpark.core.store.base import DAY_MS
from smartpark.core.store.influx_http import InfluxHttp
from smartpark.core.store.influx_queries import InfluxQueries
from smartpark.core.store.influx_schema import create_schema
from smartpark.core.store.influx_schema import ensure_user as _ensure_user

# re-exported for the bulk writers (backfill), which write line protocol themselves
from smartpark.core.store.line_protocol import escape_measurement, escape_tag, lines, quote_ident
from smartpark.core.store.rollups import RAW_RP, RESAMPLE_FOR, ROLLUPS, late_spans, marks_body

__all__ = [
    "RAW_RP",
    "RESAMPLE_FOR",
    "ROLLUPS",
    "InfluxStore",
    "escape_measurement",
    "escape_tag",
    "lines",
    "quote_ident",
]


WRITE_CHUNK = 2500  # points per /write request of a large batch
# /write requests in flight at once: InfluxDB answers each after its WAL write, so with two the server idled
# between requests; four (two ingest batches of two chunks) took batch payloads from ~240k to ~270k readings/s
WRITE_REQUESTS = 4


class InfluxStore(base.ClosedOnExit):
    """TimeSeriesStore over the InfluxDB v1 HTTP API (influx_http.py; thread-safe)."""

    def __init__(
        self,
        url: str,
        database: str,
        catalog: Catalog,
        *,
        username: str = "",
        password: str = "",
        token: str = "",
        timeout_s: float = 10.0,
        retention_days: int = 3650,
        transport: httpx.BaseTransport | None = None,
        gzip_writes: bool = False,
        ca_file: Path | None = None,
    ) -> None:
        """``transport`` replaces the network (tests: ``httpx.MockTransport``); ``gzip_writes`` compresses write
        bodies; ``ca_file`` verifies an https:// server against that CA bundle instead of the system CAs."""
        if retention_days < 1:
            raise ValueError(f"retention_days must be >= 1, got {retention_days}")
        self.http = InfluxHttp(url, database, username=username, password=password, token=token,
                               timeout_s=timeout_s, transport=transport, ca_file=ca_file)
        self.url, self.database = self.http.url, database
        self.catalog = catalog
        self.queries = InfluxQueries(self.http, catalog)
        self._rolled_up = frozenset(m.domain for m in catalog.metrics.values())  # measurements with rollups
        self._v1: bool | None = None  # InfluxDB 1.x (rollup CQs exist), asked once
        self.retention_days = retention_days
        self.gzip_writes = gzip_writes
        self._writers = ThreadPoolExecutor(WRITE_REQUESTS, thread_name_prefix="influx-write")

    @property
    def rp(self) -> str | None:
        """Retention policy named in writes and FROM clauses; None = the database's DEFAULT policy, which
        init() makes "raw" on 1.x, so a process that did not run init() reads where the writers write."""
        return self.queries.rp

    @rp.setter
    def rp(self, value: str | None) -> None:
        self.queries.rp = value

    # --- transport and schema

    def query(self, statements: str, *, with_db: bool = True) -> list[dict[str, Any]]:
        """Run InfluxQL (``;``-separated statements built with quote_ident/quote_literal); see InfluxHttp.query."""
        return self.http.query(statements, with_db=with_db)

    def ping(self) -> None:
        self.http.ping()

    def server_version(self) -> str:
        """The server's version from /ping (``X-Influxdb-Version``), "" if it does not say."""
        return self.http.server_version()

    def is_v1(self) -> bool:
        return self.http.is_v1()

    def _is_v1_cached(self) -> bool:
        if self._v1 is None:
            self._v1 = self.is_v1()
        return self._v1

    def init(self) -> None:
        """Create the database, retention policies and continuous queries (1.x; idempotent; influx_schema.py)."""
        rp = create_schema(self.http, self.catalog, self.retention_days)
        if rp is not None:
            self.rp = rp

    def ensure_user(self, user: str, password: str, privilege: str) -> None:
        """Create or update a non-admin 1.x user with exactly ``privilege`` on the database (influx_schema.py)."""
        _ensure_user(self.http, user, password, privilege)

    # --- writes

    def write(self, points: Sequence[Point]) -> None:
        """Write points; large batches go as WRITE_CHUNK-point requests, several at a time, so InfluxDB parses one
        while the next is being encoded (a write is idempotent: a failed batch is simply written again)."""
        if not points:  # line() refuses empty field sets, as check_points does for the embedded store
            return
        now = clock.now_ms()
        if len(points) <= WRITE_CHUNK:
            self.write_lines(lines(points))
        else:
            chunks = [points[i:i + WRITE_CHUNK] for i in range(0, len(points), WRITE_CHUNK)]
            for future in [self._writers.submit(lambda c: self.write_lines(lines(c)), c) for c in chunks]:
                future.result()  # re-raises the first failure, typed as the store's errors
        self.mark_late(late_spans(points, now, self._rolled_up), now)

    def mark_late(self, spans: dict[str, list[tuple[int, int]]], now_ms: int | None = None) -> None:
        """Record spans written too late for the rollup CQs (after the data: see core/store/rollups.py)."""
        if spans and self._is_v1_cached():
            self.write_lines(marks_body(spans, clock.now_ms() if now_ms is None else now_ms))

    def write_lines(self, body: bytes, *, compress: bool | None = None) -> None:
        """Write ready line protocol (ms timestamps), for bulk writers that build it themselves (backfill).

        The body must follow line_protocol.py's escaping rules; it is sent gzip'd when ``compress`` (default:
        the store's ``gzip_writes``).
        """
        params = {"db": self.database, "precision": "ms"}
        if self.rp:
            params["rp"] = self.rp
        self.http.write(params, body, compress=self.gzip_writes if compress is None else compress)

    # --- queries (influx_queries.py)

    def stored_fields(self, points: Sequence[Point]) -> base.StoredFields:
        return self.queries.stored_fields(points)

    def series(self, query: base.SeriesQuery) -> list[base.Series]:
        return self.queries.series(query)

    def counter_deltas(self, query: base.SeriesQuery) -> tuple[list[base.Series], list[base.CounterEvent]]:
        return self.queries.counter_deltas(query)

    def minute_means(self, query: base.MinuteQuery) -> list[base.MinuteRow]:
        return self.queries.minute_means(query)

    def hour_sums(self, query: base.HourQuery, hours: Collection[int] | None = None) -> list[base.HourSum]:
        return self.queries.hour_sums(query, hours)

    def hour_fingerprints(self, query: base.HourQuery) -> base.HourPrints:
        return self.queries.hour_fingerprints(query)

    def latest(self, site: str, *, lookback_ms: int = 7 * DAY_MS) -> list[base.LatestValue]:
        return self.queries.latest(site, lookback_ms=lookback_ms)

    def latest_many(self, sites: Sequence[str], *, lookback_ms: int = 7 * DAY_MS) -> dict[str, list[base.LatestValue]]:
        return self.queries.latest_many(sites, lookback_ms=lookback_ms)

    def close(self) -> None:
        self._writers.shutdown(wait=True)
        self.queries.close()
        self.http.close()

    def __repr__(self) -> str:
        return f"InfluxStore({self.url!r}, {self.database!r}, rp={self.rp!r})"
