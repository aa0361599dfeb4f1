"""Bounds on what one request and one key may cost the API and the store.

- ``BodyLimit``: a pure ASGI middleware that refuses a body past ``SMARTPARK_API_MAX_BODY_BYTES`` with 413,
  by its Content-Length before a byte is read, or as it streams: it runs before routing, so before the key
  is checked (FastAPI reads a route's body before its dependencies: a 300 MB POST was read whole for a 401).
- ``KeyLimits``: per key a token bucket over every authenticated request, and per key and park-wide a cap on
  series, CSV and KPI requests running at once; over either, 429 with Retry-After. The heavy requests of one
  tenant then hold a bounded share of the threads and of the store, and others' cheap calls keep answering.
- ``check_cost``: the size of a series or KPI request (devices x windows), refused with 422 naming what to
  narrow before the store is asked.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from smartpark.api.deps import Principal, PrincipalDep
from smartpark.api.errors import TooManyRequests, Unprocessable, error_body
from smartpark.core.settings import Settings

__all__ = ["BodyLimit", "HeavyDep", "KeyLimits", "check_cost"]

MINUTE_MS = 60_000


class BodyLimit:
    """413 for a request body past ``max_bytes``; what the app would have answered is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)  # not one byte of the body read
            return
        state = {"received": 0, "started": False, "refused": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not state["refused"]:
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["refused"] = True
                    if not state["started"]:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}  # the app stops reading: its answer goes nowhere
            return message

        async def guarded_send(message: Message) -> None:
            if state["refused"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body("too_large", f"the request body is limited to {self.max_bytes} bytes",
                                     {"max_bytes": self.max_bytes})).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})  # the rest of the body is not wanted: the connection ends here
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class KeyLimits:
    """Per key: a request rate (token bucket) and heavy requests in flight; park-wide: heavy requests in flight."""

    def __init__(self, settings: Settings) -> None:
        self.rate, self.burst = settings.api_key_rate_per_s, float(settings.api_key_burst)
        self.per_key, self.total = settings.api_key_concurrency, settings.api_heavy_concurrency
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when counted)
        self._running: dict[str, int] = {}
        self._heavy = 0

    def take(self, key_id: str) -> None:
        """Count one request of ``key_id``; 429 when its bucket is empty."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < 1:
                self._buckets[key_id] = (tokens, now)
                wait = math.ceil((1 - tokens) / self.rate)
                raise TooManyRequests(f"this key is limited to {self.rate:g} requests per second "
                                      f"(bursts of {self.burst:g}): slow down", wait)
            self._buckets[key_id] = (tokens - 1, now)

    @contextmanager
    def heavy(self, key_id: str) -> Iterator[None]:
        """A slot for one series, CSV or KPI request of ``key_id``, or 429."""
        with self._lock:
            if self._running.get(key_id, 0) >= self.per_key:
                raise TooManyRequests(f"this key already has {self.per_key} series or KPI requests running: "
                                      "wait for them (or ask for less: a shorter range, a longer `every`, one device)")
            if self._heavy >= self.total:
                raise TooManyRequests("the API is answering as many series and KPI requests as it takes at once: "
                                      "retry shortly", 2)
            self._running[key_id] = self._running.get(key_id, 0) + 1
            self._heavy += 1
        try:
            yield
        finally:
            with self._lock:
                self._heavy -= 1
                self._running[key_id] -= 1
                if not self._running[key_id]:
                    del self._running[key_id]


async def _heavy(request: Request, who: PrincipalDep) -> AsyncIterator[Principal]:
    limits: KeyLimits = request.app.state.limits
    with limits.heavy(who.key_id):
        yield who


HeavyDep = Annotated[Principal, Depends(_heavy)]
"""The caller of a series, CSV or KPI route, holding one of its key's slots while the route runs."""


def check_cost(settings: Settings, *, devices: int, range_ms: int, window_ms: int, narrow: list[str],
               what: str = "request") -> None:
    """422 when devices x (range / window) passes SMARTPARK_API_MAX_QUERY_COST; ``narrow`` says how to ask less."""
    cost = max(devices, 1) * -(-range_ms // window_ms)
    if cost > settings.api_max_query_cost:
        raise Unprocessable(
            f"this {what} would cost {cost:,} device-windows, over the limit of {settings.api_max_query_cost:,}: "
            + ", or ".join(narrow), {"cost": cost, "max": settings.api_max_query_cost, "narrow": narrow})

