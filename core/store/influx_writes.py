"""The InfluxDB write path: line protocol POSTed to ``/write`` over keep-alive ``http.client`` connections,
one per writing thread.

Why not the store's ``httpx.Client``: a /write is the ingest's hottest request and httpx spends ~0.8 ms of
CPU on each (a 2,500-point body), http.client ~0.27 ms (bench/bench_ingest.py: ~0.06 CPU-seconds per 100k
messages). And httpx's request objects sit in reference cycles (its connection pool's events) that hold the
body until a full garbage collection: at ingest rates hundreds of KiB a batch, the ingest's memory grew by
~20 MiB per 100k messages. Queries stay on httpx (few, small, and its API is worth it there).

Same contract as the store's other requests: verified TLS (the CA file, or the system CAs), the token or
basic credentials, the timeout, and every failure typed (StoreUnavailable: retry or spool; StoreRejected:
the data's fault). A connection the server closed while idle is reopened once: a write is idempotent.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import ssl
import threading
from urllib.parse import urlencode, urlsplit

from smartpark.core.errors import StoreRejected, StoreUnavailable

__all__ = ["WriteConnections", "error_text"]

_RETRY_ON_REUSE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                   http.client.BadStatusLine)


def error_text(status: int, reason: str, body: bytes) -> str:
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
        self._local = threading.local()
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def write(self, params: dict[str, str], body: bytes, *, compress: bool) -> None:
        """One /write request; raises StoreUnavailable or StoreRejected."""
        headers = {**self._headers, "Content-Type": "text/plain; charset=utf-8"}
        if compress:
            body = gzip.compress(body, compresslevel=1)  # level 1: 90 % smaller for 0.16 µs a point (+ InfluxDB's)
            headers["Content-Encoding"] = "gzip"
        path = f"{self._base}/write?{urlencode(params)}"
        status, reason, answer = self._post(path, body, headers)
        if status < 300:
            return
        message = f"InfluxDB /write answered {status}: {error_text(status, reason, answer)}"
        if status >= 500 or status == 429:
            raise StoreUnavailable(message, status=status)
        if status == 404 and "database not found" in message:
            # Not the data's fault: spool until `smartpark db init` has created it, never dead-letter.
            raise StoreUnavailable(f"{message} (run `smartpark db init`)", status=404)
        raise StoreRejected(message, status=status)

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        reused = conn is not None
        if conn is None:
            conn = self._connect()
        try:
            try:
                return self._exchange(conn, path, body, headers)
            except _RETRY_ON_REUSE:
                if not reused:
                    raise
                self._drop(conn)  # the server closed it while idle: once more on a fresh connection
                conn = self._connect()
                return self._exchange(conn, path, body, headers)
        except TimeoutError as exc:
            self._drop(conn)
            raise StoreUnavailable(f"InfluxDB {self.url}/write: timed out ({type(exc).__name__})") from exc
        except ssl.SSLCertVerificationError as exc:
            self._drop(conn)
            raise StoreUnavailable(f"InfluxDB {self.url}/write: TLS verification failed: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            self._drop(conn)
            raise StoreUnavailable(f"InfluxDB {self.url}/write: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _exchange(conn: http.client.HTTPConnection, path: str, body: bytes,
                  headers: dict[str, str]) -> tuple[int, str, bytes]:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        answer = resp.read()
        if resp.will_close:
            conn.close()  # http.client reconnects on the next request
        return resp.status, resp.reason, answer

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        self._local.conn = conn
        with self._lock:
            self._open.add(conn)
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()
