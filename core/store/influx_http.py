"""The InfluxDB v1 HTTP transport: one keep-alive client, TLS verification, ``/query`` and ``/ping``, and the
mapping of what goes wrong to the typed StoreError tree.

The v1 API (``POST /write``, ``POST /query``) is what InfluxDB 1.x serves natively and 2.x/3.x serve for
compatibility, so one small client covers all three (contract "InfluxDB layout"). Auth is basic user/password
on 1.x and ``Authorization: Token`` on 2.x/3.x. Errors are typed for the caller's retry logic: down, timed out,
5xx or 429 -> StoreUnavailable (retryable); anything else the server refuses -> StoreRejected with InfluxDB's
own message.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from smartpark.core.errors import StoreRejected, StoreUnavailable
from smartpark.core.redact import split_credentials
from smartpark.core.tls import TlsFiles, tls_context

__all__ = ["InfluxHttp"]


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error") or body.get("message"), str):
        return str(body.get("error") or body.get("message"))
    return resp.text.strip()[:500] or resp.reason_phrase


def _verify(url: str, ca_file: Path | None) -> ssl.SSLContext | bool:
    """How httpx verifies the server: the CA file's context, or the system CAs for https://. For http:// an empty
    (still verifying) context: nothing is verified on plain HTTP, and httpx's default would load the certifi
    bundle into every process (~3 MiB of the ingest's memory)."""
    if ca_file is not None:
        return tls_context(TlsFiles(ca_file))
    if url.startswith("https://"):
        return True
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
        self._client = httpx.Client(base_url=self.url, headers=headers, auth=auth, timeout=timeout_s,
                                    transport=transport, verify=_verify(self.url, ca_file))

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
        self._client.close()
