"""The InfluxDB v1 HTTP transport: one keep-alive client for ``/query`` and ``/ping``, lean connections for
``/write``, TLS verification, and the mapping of what goes wrong to the typed StoreError tree.

The v1 API (``POST /write``, ``POST /query``) is what InfluxDB 1.x serves natively and 2.x/3.x serve for
compatibility, so one small client covers all three (contract "InfluxDB layout"). Auth is basic user/password
on 1.x and ``Authorization: Token`` on 2.x/3.x. Errors are typed for the caller's retry logic: down, timed out,
5xx or 429 -> StoreUnavailable (retryable); anything else the server refuses -> StoreRejected with InfluxDB's
own message.

Why writes do not use the httpx client: a /write is the ingest's hottest request and httpx spends ~0.8 ms of
CPU on each (a 2,500-point body), http.client ~0.27 ms (bench/bench_ingest.py: ~0.06 CPU-seconds per 100k
messages); and httpx's request objects sit in reference cycles (its connection pool's events) that hold the
body until a full garbage collection: at ingest rates hundreds of KiB a batch, the ingest's memory grew by
~20 MiB per 100k messages. ``WriteConnections`` keeps one keep-alive ``http.client`` connection per writing
thread, with the same TLS context (one for reads and writes: the CA file or the system CAs), credentials,
timeout and typed errors; a connection idle for IDLE_S is opened anew, and one the server closed meanwhile is
reopened once (a write is idempotent). Queries stay on httpx (few, and its API is worth it).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx

from smartpark.core.errors import ConfigError, StoreError, StoreRejected, StoreUnavailable
from smartpark.core.redact import split_credentials
from smartpark.core.tls import TlsFiles, tls_context

__all__ = ["InfluxHttp", "WriteConnections"]

_RETRY_ON_REUSE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.BadStatusLine)
MAX_ANSWER_BYTES = 64 * 1024  # what is read of an answer to a write (the network is not trusted)
IDLE_S = 5.0  # a write connection idle longer is opened anew (as httpx's pool did): a NAT or a load balancer
# may have dropped it silently, and the write would wait out the whole timeout before failing


def _error_text(status: int, reason: str, body: bytes) -> str:
    """InfluxDB's own message from an error answer (its JSON ``error``), else the body's start or the reason."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = parsed.get("error") or parsed.get("message")
        if isinstance(message, str):
            return message
    return body.decode("utf-8", "replace").strip()[:500] or reason or str(status)


def _status_error(path: str, status: int, reason: str, body: bytes) -> StoreError:
    """An error answer typed: 5xx and 429 retryable, a missing database too (until `smartpark db init`)."""
    message = f"InfluxDB {path} answered {status}: {_error_text(status, reason, body)}"
    if status >= 500 or status == 429:
        return StoreUnavailable(message, status=status)
    if status == 404 and "database not found" in message:
        # Not the data's fault: spool until `smartpark db init` has created it, never dead-letter.
        return StoreUnavailable(f"{message} (run `smartpark db init`)", status=404)
    return StoreRejected(message, status=status)


def _proxied(url: str) -> bool:
    """Whether the environment routes ``url`` through a proxy (HTTP_PROXY, ALL_PROXY; not in NO_PROXY)."""
    parts = urlsplit(url)
    proxies = getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not proxy_bypass(parts.hostname or "")


def _is_https(url: str) -> bool:
    return urlsplit(url).scheme == "https"  # urlsplit lowers the scheme: HTTPS:// is https too


def _verify(url: str, ca_file: Path | None) -> ssl.SSLContext:
    """The one verifying context of reads and writes: the CA file, or the system CAs (not httpx's certifi
    bundle: reads and writes must trust the same CAs). For http:// an empty context, which verifies nothing
    because nothing is encrypted (httpx's default would load certifi into every process: ~3 MiB)."""
    if ca_file is not None or _is_https(url):
        return tls_context(TlsFiles(ca_file))
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class InfluxHttp:
    """The HTTP side of one database on one server (thread-safe: httpx.Client is)."""

    def __init__(self, url: str, database: str, *, username: str = "", password: str = "", token: str = "",
                 timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None,
                 ca_file: Path | None = None) -> None:
        """``transport`` replaces the network (tests: ``httpx.MockTransport``); ``ca_file`` verifies an https://
        server against that CA bundle instead of the system CAs."""
        if not database:
            raise ValueError("InfluxDB database name is empty")
        # user:password in the URL become basic auth; self.url (in every message and repr) never carries them
        url, url_user, url_password = split_credentials(url.rstrip("/"))
        if url_user is not None and not username and not token:
            username, password = url_user, url_password or ""
        self.url, self.database, self.token = url, database, token
        headers = {"User-Agent": "smartpark"}
        auth: httpx.BasicAuth | None = None
        if token:
            headers["Authorization"] = f"Token {token}"
        elif username:
            auth = httpx.BasicAuth(username, password)
        verify = _verify(self.url, ca_file)
        self._client = httpx.Client(base_url=self.url, headers=headers, auth=auth, timeout=timeout_s,
                                    transport=transport, verify=verify)
        # writes: lean connections of their own, unless the network is replaced (tests) or a proxy is configured
        # for InfluxDB (httpx honours the proxy environment, http.client does not)
        self._writes = None if transport is not None or _proxied(self.url) else WriteConnections(
            self.url, headers=headers, username="" if token else username, password=password, timeout_s=timeout_s,
            tls=verify if _is_https(self.url) else None)

    def write(self, params: dict[str, str], body: bytes, *, compress: bool) -> None:
        """POST /write of line protocol (gzip'd when ``compress``); raises StoreUnavailable or StoreRejected."""
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if compress:
            body = gzip.compress(body, compresslevel=1)  # level 1: 90 % smaller for 0.16 µs a point (+ InfluxDB's)
            headers["Content-Encoding"] = "gzip"
        if self._writes is not None:
            self._writes.write(params, body, headers)
        else:
            self.send("POST", "/write", params=params, content=body, headers=headers)

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a failure raised as StoreUnavailable (retryable) or StoreRejected."""
        try:
            resp = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise StoreUnavailable(f"InfluxDB {self.url}{path}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"InfluxDB {self.url}{path}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code < 300:
            return resp
        raise _status_error(path, resp.status_code, resp.reason_phrase, resp.content)

    def query(self, statements: str, *, with_db: bool = True) -> list[dict[str, Any]]:
        """Run InfluxQL (one or more ``;``-separated statements); one result dict per statement.

        ``statements`` must already be built with quote_ident/quote_literal. A statement that fails
        raises StoreRejected with InfluxDB's message.
        """
        form = {"q": statements, "epoch": "ms"}
        if with_db:
            form["db"] = self.database
        resp = self.send("POST", "/query", data=form)
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

    def statements(self, statements: list[str]) -> list[dict[str, Any]]:
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

    def ping(self) -> None:
        resp = self.send("GET", "/ping")
        if resp.status_code != 204:
            raise StoreUnavailable(f"InfluxDB /ping answered {resp.status_code}", status=resp.status_code)

    def server_version(self) -> str:
        """The server's version from /ping (``X-Influxdb-Version``), "" if it does not say."""
        resp = self.send("GET", "/ping")
        return str(resp.headers.get("X-Influxdb-Version", ""))

    def is_v1(self) -> bool:
        version = self.server_version().lstrip("v")
        return version.startswith("1.") if version else not self.token

    def close(self) -> None:
        if self._writes is not None:
            self._writes.close()
        self._client.close()


class WriteConnections:
    """POST /write for any thread: each thread keeps its own connection (http.client is not thread-safe)."""

    def __init__(self, url: str, *, headers: dict[str, str], username: str = "", password: str = "",
                 timeout_s: float, tls: ssl.SSLContext | None) -> None:
        """``url``: the server without credentials; ``tls``: the verifying context of an https:// url."""
        parts = urlsplit(url)
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._timeout = timeout_s
        self._tls = tls
        self._headers = dict(headers)
        if username and "Authorization" not in self._headers:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        if any(c in value for value in self._headers.values() for c in "\r\n\0"):
            # http.client would refuse each request with the header (the credential) in its message
            raise ConfigError("the InfluxDB credentials contain a line break or NUL")
        self._local = threading.local()  # .conn, .used: this thread's connection and when it was last used
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._closed = False

    def write(self, params: dict[str, str], body: bytes, headers: dict[str, str]) -> None:
        """One /write request of a ready body (``headers``: its type and encoding); raises StoreUnavailable or
        StoreRejected."""
        status, reason, answer = self._post(f"{self._base}/write?{urlencode(params)}", body,
                                            {**self._headers, **headers})
        if status >= 300:
            raise _status_error("/write", status, reason, answer)

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        if self._closed:
            raise StoreUnavailable(f"InfluxDB {self.url}/write: the store is closed")
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        now = time.monotonic()
        if conn is not None and now - self._local.used > IDLE_S:
            self._drop(conn)
            conn = None
        reused = conn is not None
        if conn is None:
            conn = self._connect()
        try:
            try:
                answer = self._exchange(conn, path, body, headers)
            except _RETRY_ON_REUSE:
                if not reused:
                    raise
                self._drop(conn)  # the server closed it while idle: once more on a fresh connection
                conn = self._connect()
                answer = self._exchange(conn, path, body, headers)
            self._local.used = time.monotonic()  # idle from the end of this exchange
            return answer
        except TimeoutError as exc:
            self._drop(conn)
            raise StoreUnavailable(f"InfluxDB {self.url}/write: timed out ({type(exc).__name__})") from exc
        except ssl.SSLCertVerificationError as exc:
            self._drop(conn)
            raise StoreUnavailable(f"InfluxDB {self.url}/write: TLS verification failed: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            self._drop(conn)
            raise StoreUnavailable(f"InfluxDB {self.url}/write: {type(exc).__name__}: {exc}") from exc
        except BaseException:  # whatever else: the connection is in an unknown state
            self._drop(conn)
            raise

    @staticmethod
    def _exchange(conn: http.client.HTTPConnection, path: str, body: bytes,
                  headers: dict[str, str]) -> tuple[int, str, bytes]:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        answer = resp.read(MAX_ANSWER_BYTES)  # a write's answer is empty or an error message: never more
        if resp.will_close or not resp.isclosed():
            conn.close()  # closed by the server, or more answer than we read: http.client reconnects next time
        return resp.status, resp.reason, answer

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        with self._lock:
            if self._closed:  # close() came meanwhile: no connection it would not close
                raise StoreUnavailable(f"InfluxDB {self.url}/write: the store is closed")
            self._open.add(conn)
        self._local.conn, self._local.used = conn, time.monotonic()
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()
