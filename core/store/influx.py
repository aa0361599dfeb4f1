"""The production time-series store: InfluxDB over its v1 HTTP API (line protocol in, InfluxQL out).

Why this shape:

- The v1 API (``POST /write``, ``POST /query``) is what InfluxDB 1.x serves natively and 2.x/3.x serve for
  compatibility, so one small client covers all three (contract "InfluxDB layout"). Auth is basic
  user/password on 1.x and ``Authorization: Token`` on 2.x/3.x.
- Line protocol and InfluxQL are text languages: every name and value taken from outside is escaped
  (``line``) or quoted (``quote_ident``, ``quote_literal``), never pasted into a statement. What line
  protocol cannot carry at all is refused with ValueError instead of being silently mangled.
- Errors are typed for the caller's retry logic: down, timed out, 5xx or 429 -> StoreUnavailable
  (retryable); anything else the server refuses -> StoreRejected with InfluxDB's own message.

Line protocol as InfluxDB 1.6 parses it (checked against the real server by tests/test_store_influx.py):

- Measurement: comma and space are escaped with a backslash. A leading ``#`` makes the line a comment that
  is dropped without an error, so such a name is refused.
- Tag keys, tag values, field keys: comma, equals sign and space are escaped. A backslash is *not* an escape
  for itself there: ``a\\b`` is stored with both backslashes (2.x documents the opposite), so a backslash is
  written as is and refused where it would change the meaning: before a backslash, comma, equals sign or
  space, or at the end. Quotes need no escaping. Newline and carriage return cannot be escaped at all, and
  a tag value cannot be empty.
- String field values are double-quoted with backslash and double quote escaped. A raw newline or carriage
  return inside the quotes round-trips on 1.6 (``\\n`` would be stored as backslash + n), so they are
  written raw.
- Floats are written with ``repr`` (shortest round-trip form); NaN and infinities cannot be written.
- Timestamps are epoch milliseconds (``precision=ms``); a point with the same measurement, tags and time
  overwrites the previous one, which makes redelivery safe.

On 1.x ``init()`` lays out the retention policies: ``raw`` (the default, ``retention_days``), ``rp_1m``
and ``rp_1h`` (longer), filled by continuous queries ``cq_<measurement>_1m`` / ``cq_<measurement>_1h``
that keep the field names (gauges by ``mean``, counters by ``last``), so a dashboard switches resolution
by switching the retention policy alone. On 2.x/3.x the bucket and its DBRP mapping are the operator's.
"""

from __future__ import annotations

import gzip
import math
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from math import isfinite
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx
import msgspec

from smartpark.core.catalog import Catalog, Metric
from smartpark.core.errors import StoreRejected, StoreUnavailable
from smartpark.core.points import Point
from smartpark.core.redact import split_credentials
from smartpark.core.store.base import (
    AGGREGATES,
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    CounterEvent,
    HourQuery,
    HourSum,
    LatestValue,
    MinuteQuery,
    MinuteRow,
    Series,
    SeriesQuery,
    StoredFields,
    counter_event,
    delta_series,
    hour_sums_from_minutes,
    lookback_ms,
    minute_query,
)
from smartpark.core.store.influx_writes import WriteConnections
from smartpark.core.store.rollups import RAW_RP, RESAMPLE_FOR, ROLLUPS, late_spans, marks_body, rollup_select
from smartpark.core.tls import TlsFiles, tls_context

__all__ = [
    "RAW_RP",
    "RESAMPLE_FOR",
    "ROLLUPS",
    "InfluxStore",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "line",
    "lines",
    "quote_ident",
    "quote_literal",
]


WRITE_CHUNK = 2500  # points per /write request of a large batch
# /write requests in flight at once: InfluxDB answers each after its WAL write, so with two the server idled
# between requests; four (two ingest batches of two chunks) took batch payloads from ~240k to ~270k readings/s
WRITE_REQUESTS = 4

# stored_fields: times of one series closer than this are read in one range; statements per request
LOOKUP_SPAN_MS = 15 * MINUTE_MS
LOOKUP_STATEMENTS = 100

# hour_sums: hourly results kept per query (LRU) and how many requests compute uncached hours concurrently
HOUR_CACHE_QUERIES = 256  # kept HourQuery keys (about one per site with stacks)
SINGLE_FLIGHT_HOURS = 24  # more hours to compute than this: one computation per key at a time (hour_sums)
EXACT_REQUESTS = 2
# latest_many's statements go as this many concurrent requests: InfluxDB runs the statements of one request
# one after the other, on one core (the park's overview: p50 212 ms in one request, see bench/bench_api.py)
LATEST_REQUESTS = 3

_NO_NEWLINES = ("\n", "\r")
_MEASUREMENT_SPECIALS = {",": "\\,", " ": "\\ "}
_TAG_SPECIALS = {",": "\\,", "=": "\\=", " ": "\\ "}
_AFTER_BACKSLASH = ("", "\\", ",", "=", " ")  # a backslash before these (or at the end) changes the meaning


# ------------------------------------------------------------------------------------------ line protocol


def _escape(value: str, what: str, specials: dict[str, str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if value == "":
        raise ValueError(f"{what} cannot be empty in InfluxDB line protocol")
    if any(c in value for c in _NO_NEWLINES):
        raise ValueError(f"{what} {value!r} has a newline or carriage return: line protocol cannot carry it")
    out = []
    for i, c in enumerate(value):
        if c == "\\":
            nxt = value[i + 1] if i + 1 < len(value) else ""
            if nxt in _AFTER_BACKSLASH:
                raise ValueError(
                    f"{what} {value!r} has a backslash before {nxt!r} or at its end, which InfluxDB line "
                    "protocol cannot carry unambiguously"
                )
        out.append(specials.get(c, c))
    return "".join(out)


def escape_measurement(name: str) -> str:
    """A measurement for line protocol: comma and space escaped; what it cannot carry raises ValueError."""
    if name.startswith("#"):
        raise ValueError(f"measurement {name!r} starts with '#': line protocol would drop it as a comment")
    return _escape(name, "measurement", _MEASUREMENT_SPECIALS)


def escape_tag(text: str, what: str = "tag key, tag value or field key") -> str:
    """A tag key, tag value or field key for line protocol: comma, equals sign and space escaped.

    ``what`` names the value in the ValueError raised for what line protocol cannot carry.
    """
    return _escape(text, what, _TAG_SPECIALS)


def escape_string_field(value: str) -> str:
    """A string field value, quoted: backslash and double quote escaped, newlines raw (they round-trip)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _field_value(key: str, value: object) -> str:
    if type(value) is float and math.isfinite(value):  # the hot path: metric values
        return repr(value)
    if isinstance(value, str):
        return escape_string_field(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"field {key!r}: a value must be a float or a string, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"field {key!r}: {value!r} is not finite; InfluxDB cannot store it")
    return repr(number)


# Escaping walks every character: cache it. A park has a few thousand series and a hundred field names.
@lru_cache(maxsize=65536)
def _series_prefix(measurement: str, site: str, device: str) -> str:
    # tags sorted by key (device < site), as InfluxDB recommends
    return (f"{escape_measurement(measurement)},device={escape_tag(device, 'tag device')},"
            f"site={escape_tag(site, 'tag site')} ")


@lru_cache(maxsize=4096)
def _field_key(key: str) -> str:
    return escape_tag(key, "field key") + "="


def line(point: Point) -> str:
    """One point as a line of InfluxDB line protocol with a millisecond timestamp (no trailing newline)."""
    if not point.fields:
        raise ValueError(f"point {point.measurement}/{point.site}/{point.device}@{point.ts_ms} has no fields")
    if type(point.ts_ms) is not int:
        raise TypeError(f"ts_ms must be an integer (epoch milliseconds), got {point.ts_ms!r}")
    fields = ",".join([
        _field_key(k) + (repr(v) if type(v) is float and isfinite(v) else _field_value(k, v))
        for k, v in point.fields.items()])
    return f"{_series_prefix(point.measurement, point.site, point.device)}{fields} {point.ts_ms}"


def lines(points: Iterable[Point]) -> bytes:
    """Points as a line-protocol body (UTF-8, one line each). The ingest's hot path, so line() inlined for
    the plain point (float fields, int timestamp): about 1 µs a point. (Formatting all floats in one msgspec
    call and laying out fields by template was measured no faster on typical sensor values.)"""
    out: list[str] = []
    append = out.append
    keys = _FIELD_KEYS
    for p in points:
        fields = p.fields
        if not fields or type(p.ts_ms) is not int:
            append(line(p))  # raises the precise error
            continue
        parts = []
        for k, v in fields.items():
            key = keys.get(k)
            if key is None:
                key = _field_key(k)
                if len(keys) < 4096:
                    keys[k] = key
            parts.append(key + (repr(v) if type(v) is float and isfinite(v) else _field_value(k, v)))
        append(f"{_series_prefix(p.measurement, p.site, p.device)}{','.join(parts)} {p.ts_ms}")
    return "\n".join(out).encode("utf-8")


_FIELD_KEYS: dict[str, str] = {}  # _field_key's results by key, for lines(): a dict lookup beats a call


def _spans(stamps: list[int], span_ms: int) -> list[tuple[int, int]]:
    """Sorted times grouped into (first, last) ranges no longer than ``span_ms``."""
    out: list[tuple[int, int]] = []
    for ts in stamps:
        if out and ts - out[-1][0] <= span_ms:
            out[-1] = (out[-1][0], ts)
        else:
            out.append((ts, ts))
    return out


# ------------------------------------------------------------------------------------------------ InfluxQL


def _quote(text: str, quote: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"InfluxQL quoting needs a string, got {type(text).__name__}")
    # InfluxQL strings know the escapes \\ \" \' \n; a raw newline ends the statement with an error
    return quote + text.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n") + quote


def quote_ident(name: str) -> str:
    """An InfluxQL identifier (database, retention policy, measurement, field, tag key) in double quotes."""
    return _quote(name, '"')


def quote_literal(value: str) -> str:
    """An InfluxQL string literal (a tag value in WHERE) in single quotes."""
    return _quote(value, "'")


# ------------------------------------------------------------------------------------------------- store


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error") or body.get("message"), str):
        return str(body.get("error") or body.get("message"))
    return resp.text.strip()[:500] or resp.reason_phrase


def _proxied(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy (HTTP_PROXY, ALL_PROXY; not in NO_PROXY)."""
    parts = urlsplit(url)
    proxies = getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not proxy_bypass(parts.hostname or "")


def _verify(url: str, ca_file: Path | None) -> ssl.SSLContext | bool:
    """How httpx verifies the server: the CA file's context, or the system CAs for https://. For http:// an empty
    (still verifying) context: nothing is verified on plain HTTP, and httpx's default would load the certifi
    bundle into every process (~3 MiB of the ingest's memory)."""
    if ca_file is not None:
        return tls_context(TlsFiles(ca_file))
    if url.startswith("https://"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class InfluxStore:
    """TimeSeriesStore over the InfluxDB v1 HTTP API (one keep-alive ``httpx.Client``; thread-safe)."""

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
        hour_cache_s: float = 900.0,
        gzip_writes: bool = False,
        ca_file: Path | None = None,
    ) -> None:
        """``transport`` replaces the network (tests: ``httpx.MockTransport``); ``hour_cache_s`` bounds how
        long hour_sums keeps an hour's result (0: not at all); ``gzip_writes`` compresses write bodies;
        ``ca_file`` verifies an https:// server against that CA bundle instead of the system CAs."""
        if not database:
            raise ValueError("InfluxDB database name is empty")
        if retention_days < 1:
            raise ValueError(f"retention_days must be >= 1, got {retention_days}")
        # user:password in the URL become basic auth; self.url (in every message and repr) never carries them
        url, url_user, url_password = split_credentials(url.rstrip("/"))
        if url_user is not None and not username and not token:
            username, password = url_user, url_password or ""
        self.url = url
        self.database = database
        self.catalog = catalog
        self._rolled_up = frozenset(m.domain for m in catalog.metrics.values())  # measurements with rollups
        self._v1: bool | None = None  # InfluxDB 1.x (rollup CQs exist), asked once
        self.retention_days = retention_days
        self.token = token
        self.hour_cache_s = hour_cache_s
        self.gzip_writes = gzip_writes
        self._hour_lock = threading.Lock()
        self._computing: dict[HourQuery, threading.Lock] = {}  # per cache key (a site's stacks): see hour_sums
        self._hour_cache: dict[HourQuery, dict[tuple[str, int], tuple[tuple[int, ...], float, list[HourSum]]]] = {}
        # Retention policy named in writes and FROM clauses; None = the database's DEFAULT policy, which
        # init() makes "raw" on 1.x, so a process that did not run init() reads where the writers write.
        self.rp: str | None = None
        headers = {"User-Agent": "smartpark"}
        auth: httpx.BasicAuth | None = None
        if token:
            headers["Authorization"] = f"Token {token}"
        elif username:
            auth = httpx.BasicAuth(username, password)
        self._writers = ThreadPoolExecutor(WRITE_REQUESTS, thread_name_prefix="influx-write")
        self._readers = ThreadPoolExecutor(LATEST_REQUESTS, thread_name_prefix="influx-read")
        verify = _verify(self.url, ca_file)
        self._client = httpx.Client(
            base_url=self.url, headers=headers, auth=auth, timeout=timeout_s, transport=transport, verify=verify
        )
        # writes: their own lean connections (core/store/influx_writes.py), unless the network is replaced
        # (tests) or a proxy is configured for InfluxDB (httpx honours the proxy environment, http.client not)
        self._writes = None if transport is not None or _proxied(self.url) else WriteConnections(
            self.url, headers=headers, username=username if not token else "", password=password, timeout_s=timeout_s,
            tls=tls_context(TlsFiles(ca_file)) if self.url.startswith("https://") else None)

    # --- plumbing

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise StoreUnavailable(f"InfluxDB {self.url}{path}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"InfluxDB {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code < 300:
            return resp
        message = f"InfluxDB {path} answered {resp.status_code}: {_error_message(resp)}"
        if resp.status_code >= 500 or resp.status_code == 429:
            raise StoreUnavailable(message, status=resp.status_code)
        if resp.status_code == 404 and "database not found" in message:
            # Not the data's fault: spool until `smartpark db init` has created it, never dead-letter.
            raise StoreUnavailable(f"{message} (run `smartpark db init`)", status=404)
        raise StoreRejected(message, status=resp.status_code)

    def query(self, statements: str, *, with_db: bool = True) -> list[dict[str, Any]]:
        """Run InfluxQL (one or more ``;``-separated statements); one result dict per statement.

        ``statements`` must already be built with quote_ident/quote_literal. A statement that fails
        raises StoreRejected with InfluxDB's message.
        """
        form = {"q": statements, "epoch": "ms"}
        if with_db:
            form["db"] = self.database
        resp = self._send("POST", "/query", data=form)
        try:
            body = resp.json()
        except ValueError as exc:
            raise StoreRejected(f"InfluxDB /query answered non-JSON: {resp.text[:200]!r}") from exc
        if "error" in body:
            raise StoreRejected(f"InfluxDB query failed: {body['error']}", status=resp.status_code)
        results: list[dict[str, Any]] = body.get("results", [])
        for result in results:
            if "error" in result:
                raise StoreRejected(f"InfluxDB query failed: {result['error']}", status=resp.status_code)
            if any(s.get("partial") for s in result.get("series", [])):
                raise StoreRejected("InfluxDB truncated the result (max-row-limit); narrow the query")
        return results

    def _from(self, measurement: str) -> str:
        m = quote_ident(measurement)
        return f"{quote_ident(self.rp)}.{m}" if self.rp else m

    # --- TimeSeriesStore

    def ping(self) -> None:
        resp = self._send("GET", "/ping")
        if resp.status_code != 204:
            raise StoreUnavailable(f"InfluxDB /ping answered {resp.status_code}", status=resp.status_code)

    def server_version(self) -> str:
        """The server's version from /ping (``X-Influxdb-Version``), "" if it does not say."""
        resp = self._send("GET", "/ping")
        return str(resp.headers.get("X-Influxdb-Version", ""))

    def is_v1(self) -> bool:
        version = self.server_version().lstrip("v")
        return version.startswith("1.") if version else not self.token

    def _is_v1_cached(self) -> bool:
        if self._v1 is None:
            self._v1 = self.is_v1()
        return self._v1

    def init(self) -> None:
        """Create the database, retention policies and continuous queries (1.x; idempotent).

        On 2.x/3.x the compatibility API runs no DDL: only check that the server answers.
        """
        if not self.is_v1():
            self.ping()
            return
        db = quote_ident(self.database)
        self.query(f"CREATE DATABASE {db}", with_db=False)
        existing = {
            row[0]
            for result in self.query(f"SHOW RETENTION POLICIES ON {db}")
            for series in result.get("series", [])
            for row in series.get("values", [])
        }
        wanted = [(RAW_RP, f"{self.retention_days}d", True)]
        wanted += [(rp, f"{self.retention_days * k}d" if k else "INF", False) for rp, _, _, k in ROLLUPS]
        statements = []
        for rp, duration, default in wanted:
            verb = "ALTER" if rp in existing else "CREATE"
            statement = f"{verb} RETENTION POLICY {quote_ident(rp)} ON {db} DURATION {duration} REPLICATION 1"
            statements.append(statement + (" DEFAULT" if default else ""))
        self.query("; ".join(statements))
        self.rp = RAW_RP
        for name, create in self._continuous_queries():
            try:
                self.query(create)  # 1.6 accepts a CQ identical to an existing one as a no-op
            except StoreRejected as exc:
                if "already exists" not in str(exc):
                    raise
                # same name, other text (the catalog changed): replace it
                self.query(f"DROP CONTINUOUS QUERY {quote_ident(name)} ON {db}; {create}")

    def ensure_user(self, user: str, password: str, privilege: str) -> None:
        """Create or update a non-admin 1.x user with exactly ``privilege`` (READ, WRITE, ALL) on the database.

        Needs admin credentials (`smartpark db init`). An existing user gets the password given here (rotation:
        change it in the settings and run init again) and loses admin rights and other grants on this database.
        Errors never carry the password.
        """
        if privilege not in ("READ", "WRITE", "ALL"):
            raise ValueError(f"privilege must be READ, WRITE or ALL, not {privilege!r}")
        who, db, secret = quote_ident(user), quote_ident(self.database), quote_literal(password)
        users = {row[0]: row[1] for result in self.query("SHOW USERS", with_db=False)
                 for series in result.get("series", []) for row in series.get("values", [])}
        statements = [f"SET PASSWORD FOR {who} = {secret}" if user in users
                      else f"CREATE USER {who} WITH PASSWORD {secret}"]
        if users.get(user):
            statements.append(f"REVOKE ALL PRIVILEGES FROM {who}")  # no admin
        statements += [f"REVOKE ALL ON {db} FROM {who}", f"GRANT {privilege} ON {db} TO {who}"]
        try:
            self.query("; ".join(statements), with_db=False)
        except StoreRejected as exc:
            message = str(exc).replace(password, "***") if password else str(exc)
            raise StoreRejected(f"InfluxDB user {user!r}: {message}", status=exc.status) from None

    def _continuous_queries(self) -> list[tuple[str, str]]:
        """(name, CREATE statement) of every rollup CQ, one per measurement of the catalog and rollup."""
        db = quote_ident(self.database)
        out = []
        for domain in sorted({m.domain for m in self.catalog.metrics.values()}):
            for rp, every, suffix, _ in ROLLUPS:
                name = f"cq_{domain}_{suffix}"
                select = f"{rollup_select(self.catalog, self.database, domain, rp)} GROUP BY time({every}), *"
                resample = f"RESAMPLE FOR {RESAMPLE_FOR[rp]} " if rp in RESAMPLE_FOR else ""
                out.append((name, f"CREATE CONTINUOUS QUERY {quote_ident(name)} ON {db} {resample}BEGIN {select} END"))
        return out

    def write(self, points: Sequence[Point]) -> None:
        """Write points; large batches go as WRITE_CHUNK-point requests, several at a time, so InfluxDB parses one
        while the next is being encoded (a write is idempotent: a failed batch is simply written again)."""
        if not points:  # line() refuses empty field sets, as check_points does for the embedded store
            return
        now = time.time_ns() // 1_000_000
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
            self.write_lines(marks_body(spans, time.time_ns() // 1_000_000 if now_ms is None else now_ms))

    def write_lines(self, body: bytes, *, compress: bool | None = None) -> None:
        """Write ready line protocol (ms timestamps), for bulk writers that build it themselves (backfill).

        The body must come from this module's escaping rules; it is sent gzip'd when ``compress`` (default:
        the store's ``gzip_writes``).
        """
        params = {"db": self.database, "precision": "ms"}
        if self.rp:
            params["rp"] = self.rp
        compress = self.gzip_writes if compress is None else compress
        if self._writes is not None:
            self._writes.write(params, body, compress=compress)
            return
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if compress:
            body = gzip.compress(body, compresslevel=1)  # level 1: 90 % smaller for 0.16 µs a point (+ InfluxDB's)
            headers["Content-Encoding"] = "gzip"
        self._send("POST", "/write", params=params, content=body, headers=headers)

    def stored_fields(self, points: Sequence[Point]) -> StoredFields:
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
        out: StoredFields = {}
        for i in range(0, len(statements), LOOKUP_STATEMENTS):
            part = statements[i:i + LOOKUP_STATEMENTS]
            for (key, stamps, _), result in zip(part, self.query("; ".join(s for _, _, s in part)), strict=True):
                for series in result.get("series", []):
                    names = series["columns"][1:]
                    for row in series.get("values", []):
                        if int(row[0]) in stamps:
                            out[(*key, int(row[0]))] = {n: v for n, v in zip(names, row[1:], strict=True)
                                                        if v is not None}
        return out

    def series(self, query: SeriesQuery) -> list[Series]:
        if query.agg not in AGGREGATES:
            raise ValueError(f"unknown aggregate {query.agg!r}; one of {', '.join(AGGREGATES)}")
        if query.every_ms <= 0 or query.end_ms <= query.start_ms:
            raise ValueError(f"bad window: every {query.every_ms} ms from {query.start_ms} to {query.end_ms}")
        if query.agg == "delta":
            return self._delta(query)
        out = []
        for result in self.query(self._agg_statement(query)):
            for s in result.get("series", []):
                tags = s.get("tags", {})
                points = [(int(row[0]), float(row[1])) for row in s.get("values", []) if row[1] is not None]
                if points:
                    device = tags.get("device") if query.group_by == "device" else None
                    out.append(Series(tags.get("site", query.site or ""), device, points))
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

    def _agg_statement(self, query: SeriesQuery) -> str:
        where = self._where(query.site, query.device, query.start_ms, query.end_ms)
        group = '"site"' if query.group_by == "site" else '"site", "device"'
        return (
            f"SELECT {query.agg}({quote_ident(query.field)}) FROM {self._from(query.measurement)} "  # noqa: S608 (InfluxQL; names and values quoted)
            f"WHERE {where} GROUP BY time({int(query.every_ms)}ms), {group} fill(none)"
        )

    def _delta(self, query: SeriesQuery) -> list[Series]:
        return self.counter_deltas(query)[0]

    def counter_deltas(self, query: SeriesQuery) -> tuple[list[Series], list[CounterEvent]]:
        """One pass over the minute steps per window and device: the sum, the smallest step, the longest elapsed
        time and the highest rate. A window whose steps are all ordinary (none negative, none longer than the gap,
        none faster than the bound) keeps InfluxDB's sum; the rare others (a reset, a jump, a gap, a step near the
        bound) are read step by step and classified here, with the rules of SeriesQuery ``delta``."""
        offset = query.start_ms % query.every_ms
        (result,) = self.query(
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
        return delta_series(query, sums, events), events

    def _suspect_windows(self, query: SeriesQuery, windows: list[tuple[str, str, int]],
                         sums: list[tuple[str, str, int, float]]) -> list[CounterEvent]:
        """Each window's steps read one by one: ordinary ones added to ``sums``, the others as events."""
        if not windows:
            return []
        statements = []
        for site, device, w in windows:
            part = msgspec.structs.replace(query, site=site, device=device, start_ms=w,
                                           end_ms=min(w + query.every_ms, query.end_ms))
            statements.append(f'SELECT "v", "d", "e" FROM ({self._steps(part)})')  # noqa: S608
        results = self._statements(statements)
        events: list[CounterEvent] = []
        for (site, device, w), result in zip(windows, results, strict=True):
            total = 0.0
            for s in result.get("series", []):
                for ts, v, d, e in s.get("values", []):
                    if int(ts) < w or None in (v, d, e):
                        continue
                    ev = counter_event(query, (site, device, int(ts), float(v), float(d), int(e)))
                    if ev is None:
                        total += float(d)
                    else:
                        events.append(ev)
            sums.append((site, device, w, total))
        events.sort(key=lambda ev: (ev.site, ev.device, ev.ts_ms))
        return events

    def _steps(self, query: SeriesQuery, *, rate: bool = False) -> str:
        """Per device and minute: the minute's last reading, the step to it and the time since the previous
        reading's minute (with ``rate``: the step per hour instead of the reading), from a gap before the start
        (so the first step is found); rules in SeriesQuery."""
        where = self._where(query.site, query.device, lookback_ms(query), query.end_ms)
        f = quote_ident(query.field)
        # each function is an iterator over the raw points in InfluxDB 1.x: the first pass asks for no reading
        fields = (f'difference(last({f})) AS "d", elapsed(last({f}), 1ms) AS "e", derivative(last({f}), 1h) AS "r"'
                  if rate else f'last({f}) AS "v", difference(last({f})) AS "d", elapsed(last({f}), 1ms) AS "e"')
        return (f'SELECT {fields} '  # noqa: S608 (InfluxQL; names and values quoted)
                f"FROM {self._from(query.measurement)} WHERE {where} "
                f'GROUP BY time({MINUTE_MS}ms), "site", "device" fill(none)')

    def minute_means(self, query: MinuteQuery) -> list[MinuteRow]:
        """Day by day: a month of minutes per device is more rows than InfluxDB returns in one series."""
        out: list[MinuteRow] = []
        for start in range(query.start_ms, query.end_ms, DAY_MS):
            chunk = msgspec.structs.replace(query, start_ms=start, end_ms=min(start + DAY_MS, query.end_ms))
            out += self._minute_means(chunk)
        out.sort(key=lambda r: (r.device, r.ts_ms))
        return out

    def _minute_means(self, query: MinuteQuery) -> list[MinuteRow]:
        return self._minute_rows(query, self.query("; ".join(self._minute_statements(query))))

    def _minute_statements(self, query: MinuteQuery) -> list[str]:
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
    def _minute_rows(query: MinuteQuery, results: list[dict[str, Any]]) -> list[MinuteRow]:
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
                out.append(MinuteRow(device, int(row[0]), values, frozenset(invalid.get((device, int(row[0])), ()))))
        out.sort(key=lambda r: (r.device, r.ts_ms))
        return out

    def hour_sums(self, query: HourQuery, *, renew_within_s: float = 0.0) -> list[HourSum]:
        """From the minute means (the reference computation), with the results of whole hours kept in memory
        for ``hour_cache_s`` and revalidated on every call.

        Every call asks InfluxDB for the per-hour point counts of each field and flag (plain aggregates: about
        a tenth of the minute means' cost); an hour whose counts differ from those it was computed with (late
        or resent readings, a flag added afterwards, the current hour) is computed again, from its minutes only.
        Not detected: a reading overwritten in place by a different value with the same fields; that is
        picked up when the hour's entry expires. (Summing corrected minute means per hour in InfluxDB with a
        subquery was measured slower on 1.6 than the minute means themselves: 17 s against 6 s for a month.)
        """
        if not query.devices or not query.fields or query.end_ms <= query.start_ms:
            return []
        if not 0 <= query.offset_ms < HOUR_MS:
            raise ValueError(f"offset_ms must be in [0, {HOUR_MS}), got {query.offset_ms}")
        key = msgspec.structs.replace(query, start_ms=0, end_ms=0)
        counts = self._hour_counts(query)
        out, todo = self._kept_hours(key, counts, renew_within_s)
        if len(todo) <= SINGLE_FLIGHT_HOURS:  # the usual call: the current hour and a few late ones
            return self._computed_hours(query, key, counts, out, todo)
        # a big computation (a cold month, the warmer's renewal) runs once per key at a time: a request arriving
        # meanwhile waits for it and then finds the hours kept, instead of asking InfluxDB for them again
        with self._hour_lock:
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:
            out, todo = self._kept_hours(key, counts, renew_within_s)
            return self._computed_hours(query, key, counts, out, todo)

    def _kept_hours(self, key: HourQuery, counts: dict[tuple[str, int], tuple[int, ...]],
                    renew_within_s: float) -> tuple[list[HourSum], set[int]]:
        """(the kept sums still valid for ``counts``, the hours to compute). Hours due for renewal (expiring
        within ``renew_within_s``) are to compute, but stay kept for other callers until replaced."""
        now = time.monotonic()
        with self._hour_lock:
            cached = self._hour_cache.pop(key, {})
            self._hour_cache[key] = cached  # most recently used last
            while len(self._hour_cache) > HOUR_CACHE_QUERIES:
                old = next(iter(self._hour_cache))
                self._hour_cache.pop(old)
                self._computing.pop(old, None)  # a caller holding it still finishes; the next makes a new one
            for k in [k for k, entry in cached.items() if entry[1] <= now]:
                del cached[k]  # expired
            todo = {k[1] for k, fingerprint in counts.items()
                    if k not in cached or cached[k][0] != fingerprint or cached[k][1] <= now + renew_within_s}
            out = [h for k in counts if k[1] not in todo for h in cached[k][2]]
        return out, todo

    def _computed_hours(self, query: HourQuery, key: HourQuery, counts: dict[tuple[str, int], tuple[int, ...]],
                        out: list[HourSum], todo: set[int]) -> list[HourSum]:
        """``out`` plus the hours of ``todo`` computed from their minutes; whole hours kept."""
        if todo:
            fresh: dict[tuple[str, int], list[HourSum]] = {}
            for h in self._exact_hours(query, todo):
                fresh.setdefault((h.device, h.ts_ms), []).append(h)
            expires = time.monotonic() + self.hour_cache_s
            with self._hour_lock:
                cached = self._hour_cache.setdefault(key, {})
                for (device, hour), fingerprint in counts.items():
                    if hour not in todo:
                        continue
                    sums = fresh.get((device, hour), [])
                    out += sums
                    whole = query.start_ms <= hour and hour + HOUR_MS <= query.end_ms
                    if whole and self.hour_cache_s > 0:
                        cached[(device, hour)] = (fingerprint, expires, sums)
                    else:
                        cached.pop((device, hour), None)
        out.sort(key=lambda h: (h.device, h.field, h.ts_ms))
        return out

    def _hour_counts(self, query: HourQuery) -> dict[tuple[str, int], tuple[int, ...]]:
        """(device, hour) -> the counts of each field's points and flags in the hour (the hours with data)."""
        src = self._from(query.measurement)
        fields = minute_query(query).fields
        where = (f"{self._where(query.site, None, query.start_ms, query.end_ms)} "
                 f"AND ({self._devices([d for d, _ in query.devices])})")
        group = f'GROUP BY time({HOUR_MS}ms, {int(query.offset_ms)}ms), "device" fill(none)'
        statements = [
            f"SELECT {', '.join(f'count({quote_ident(f + suffix)})' for f in fields)} "  # noqa: S608
            f"FROM {src} WHERE {where} {group}" for suffix in ("", "_flag")]
        values, flags = self.query("; ".join(statements))
        out: dict[tuple[str, int], tuple[int, ...]] = {}
        for s in values.get("series", []):
            for row in s.get("values", []):
                out[s["tags"]["device"], int(row[0])] = tuple(int(v or 0) for v in row[1:])
        for s in flags.get("series", []):
            for row in s.get("values", []):
                k = (s["tags"]["device"], int(row[0]))
                if k in out:
                    out[k] += tuple(int(v or 0) for v in row[1:])
        return out

    def _exact_hours(self, query: HourQuery, hours: set[int]) -> list[HourSum]:
        """HourSums of some hours from their minute means: runs of hours of at most a day each, in a few
        concurrent requests (InfluxDB computes each on a core of its own)."""
        ranges: list[list[int]] = []
        for h in sorted(hours):
            start, end = max(h, query.start_ms), min(h + HOUR_MS, query.end_ms)
            if ranges and ranges[-1][1] == start and end - ranges[-1][0] <= DAY_MS:
                ranges[-1][1] = end
            else:
                ranges.append([start, end])
        chunks = [minute_query(query, start, end) for start, end in ranges]
        batches = [chunks[i::EXACT_REQUESTS] for i in range(min(EXACT_REQUESTS, len(chunks)))]

        def run(batch: list[MinuteQuery]) -> list[MinuteRow]:
            results = self.query("; ".join(s for chunk in batch for s in self._minute_statements(chunk)))
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
        return hour_sums_from_minutes(rows, query)

    @staticmethod
    def _devices(devices: Sequence[str]) -> str:
        return " OR ".join(f'"device" = {quote_literal(d)}' for d in devices)

    def latest(self, site: str, *, lookback_ms: int = 7 * DAY_MS) -> list[LatestValue]:
        return self.latest_many([site], lookback_ms=lookback_ms)[site]

    def latest_many(self, sites: Sequence[str], *, lookback_ms: int = 7 * DAY_MS) -> dict[str, list[LatestValue]]:
        """One statement per catalog metric for all ``sites`` at once (the overview's whole park in one
        request, not one per site: a tenth of the statements)."""
        out: dict[str, list[LatestValue]] = {site: [] for site in sites}
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
            answers = [self._statements(statements)]
        else:
            answers = list(self._readers.map(lambda part: self._statements([statements[i] for i in part]), parts))
        for part, results in zip(parts, answers, strict=True):
            for i, result in zip(part, results, strict=True):
                self._add_latest(out, metrics[i], result)
        for values in out.values():
            values.sort(key=lambda v: (v.device, v.measurement, v.metric))
        return out

    def _statements(self, statements: list[str]) -> list[dict[str, Any]]:
        """query() for several statements, with the real message when the first one fails."""
        try:
            return self.query("; ".join(statements))
        except StoreRejected as exc:
            if not str(exc).endswith("not executed"):
                raise
            # InfluxDB 1.6 reports a failed first statement of several (e.g. no such database) only as
            # "not executed": run it alone for the real message
            self.query(statements[0])
            raise

    @staticmethod
    def _add_latest(out: dict[str, list[LatestValue]], metric: Metric, result: dict[str, Any]) -> None:
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
                values.append(LatestValue(
                    site=tags["site"], device=tags.get("device", ""), measurement=metric.domain,
                    metric=metric.name, ts_ms=int(record["time"]), value=float(value),
                    flag=flag if isinstance(flag, str) and flag else None))

    def close(self) -> None:
        self._writers.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        if self._writes is not None:
            self._writes.close()
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"InfluxStore({self.url!r}, {self.database!r}, rp={self.rp!r})"
