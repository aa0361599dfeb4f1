"""Webhook delivery from the durable outbox: signed attempts, retries with backoff, a log per attempt.

A delivery row is written in the same transaction as its episode, so once the engine has accepted an event
it is delivered even after a crash (at least once; the stable ``webhook-id`` lets receivers deduplicate).
Retried: timeouts, network errors, 5xx and 429 (``Retry-After`` honoured), with exponential backoff and
jitter. Not retried: other 4xx and 3xx (redirects are never followed: a redirect could lead past the SSRF
guard). 410 Gone disables the subscription.

A receiver cannot hold the sender: an attempt has one deadline in total (alerts/transport.py), at most
``alerts_webhook_max_response_bytes`` of the answer are read, a subscription has one attempt in flight at a
time (a few once it has answered in time), and subscriptions whose last attempt was slow share a quarter of
the workers: eight receivers that trickle their answer leave the other half of the workers to everyone else.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import NamedTuple

import httpx

from smartpark.alerts.errors import DeliveryError, UnsafeDestination
from smartpark.alerts.models import Delivery, DeliveryAttempt, WebhookSubscription
from smartpark.alerts.repo import AlertRepo, now_ms
from smartpark.alerts.signing import signed_headers
from smartpark.alerts.ssrf import resolve_target
from smartpark.alerts.transport import DeadlineTransport, deadline
from smartpark.core.settings import Settings

__all__ = ["Attempt", "Dispatcher", "Sender", "backoff_s", "next_state", "record", "retry_after", "send_once",
           "sender_for"]

log = logging.getLogger("smartpark.alerts")
WORKERS = 16  # threads waiting on receivers: cheap, and a slow receiver holds one for a deadline at most
SLOW_WORKERS = WORKERS // 4  # what subscriptions whose last attempt was slow may hold together
FAST_PER_SUBSCRIPTION = 4  # attempts in flight for a subscription whose last one was fast (else one)
BATCH = 32
IDLE_S = 1.0


class Attempt(NamedTuple):
    """One attempt's outcome, as logged."""

    status: int | None
    latency_ms: float
    error: str
    retryable: bool
    retry_after_s: float | None


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value.strip()), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


class Sender:
    """Sends one signed attempt through the SSRF guard (one shared httpx client, no redirects), within
    ``timeout_s`` in total, reading at most ``max_response_bytes`` of the answer."""

    def __init__(self, *, timeout_s: float, allow_private: bool, max_response_bytes: int = 16384) -> None:
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.client = httpx.Client(transport=DeadlineTransport(max_connections=2 * WORKERS), timeout=timeout_s,
                                   follow_redirects=False, trust_env=False,
                                   headers={"user-agent": "smartpark-webhooks/1"})

    def close(self) -> None:
        self.client.close()

    def send(self, url: str, secret: str, msg_id: str, body: bytes) -> Attempt:
        started = time.perf_counter()
        try:
            status = self._post(url, secret, msg_id, body)
        except DeliveryError as exc:
            return Attempt(exc.status, _ms(started), str(exc)[:500], exc.retryable, exc.retry_after_s)
        except UnsafeDestination as exc:
            return Attempt(None, _ms(started), f"refused: {exc}"[:500], False, None)
        return Attempt(status, _ms(started), "", False, None)

    def _post(self, url: str, secret: str, msg_id: str, body: bytes) -> int:
        target = resolve_target(url, allow_private=self.allow_private)
        headers = signed_headers(secret, msg_id, int(time.time()), body) | {"host": target.host_header()}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            with deadline(self.timeout_s), self.client.stream("POST", target.pinned_url(), content=body,
                                                                headers=headers, extensions=extensions) as resp:
                _drain(resp, self.max_response_bytes)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"timed out after {self.timeout_s:g} s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        return _judge(resp)


def _drain(resp: httpx.Response, cap: int) -> None:
    """Read the answer's body up to ``cap`` bytes and no further (closing it then drops the connection).

    The status decides the attempt: a body cut short by the cap or the deadline changes nothing."""
    read = 0
    try:
        for chunk in resp.iter_raw():
            read += len(chunk)
            if read > cap:
                return
    except httpx.HTTPError:
        return


def _judge(resp: httpx.Response) -> int:
    """The status if 2xx; else a DeliveryError saying whether a retry may help."""
    code = resp.status_code
    if 200 <= code < 300:
        return code
    wait = retry_after(resp.headers.get("retry-after")) if code in (429, 503) else None
    retryable = code >= 500 or code == 429
    reason = "redirects are not followed" if 300 <= code < 400 else resp.reason_phrase
    raise DeliveryError(f"HTTP {code} {reason}", status=code, retryable=retryable, retry_after_s=wait)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def sender_for(settings: Settings) -> Sender:
    return Sender(timeout_s=settings.alerts_webhook_timeout_s, allow_private=settings.alerts_webhook_allow_private,
                  max_response_bytes=settings.alerts_webhook_max_response_bytes)


class Dispatcher:
    """Takes due deliveries from the outbox and attempts them on a small thread pool: one attempt in flight
    per subscription (FAST_PER_SUBSCRIPTION once it has answered in time), and at most SLOW_WORKERS for
    subscriptions whose last attempt was slow."""

    def __init__(self, repo: AlertRepo, settings: Settings) -> None:
        self.repo = repo
        self.settings = settings
        self.sender = sender_for(settings)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: dict[str, str] = {}  # delivery id -> subscription id
        self._slow: set[str] = set()  # subscriptions whose last attempt took half the deadline or more
        self._fast: set[str] = set()  # subscriptions whose last attempt took less
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._run, name="alerts-dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout=10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.sender.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = 0
            try:
                started = self._dispatch_due()
            except Exception:  # the outbox is durable: log, wait, try again
                log.exception("webhook dispatch failed")
            # Nothing started while attempts run: what is due waits for a free worker or subscription, and
            # every finished attempt sets `wake`.
            self.wake.wait(self._idle_s() if started or not self._inflight else IDLE_S)
            self.wake.clear()

    def _idle_s(self) -> float:
        nxt = self.repo.next_due_ms()
        return IDLE_S if nxt is None else min(max((nxt - now_ms()) / 1000, 0.01), IDLE_S)

    def _dispatch_due(self) -> int:
        """Start what is due, as far as free workers and the per-subscription limits allow; how many started."""
        with self._lock:
            free = WORKERS - len(self._inflight)
            if free <= 0:
                return 0
            running = Counter(self._inflight.values())
            slow_free = SLOW_WORKERS - sum(n for sub, n in running.items() if sub in self._slow)
            full = {sub for sub, n in running.items() if n >= self._limit(sub)}
            skip = frozenset(full | (self._slow if slow_free <= 0 else set()))
            picked: list[Delivery] = []
            for d in self.repo.due(now_ms(), BATCH, set(self._inflight), skip):
                sub = d.subscription_id
                if len(picked) == free:
                    break
                if running[sub] >= self._limit(sub) or (sub in self._slow and slow_free <= 0):
                    continue
                slow_free -= sub in self._slow
                running[sub] += 1
                picked.append(d)
                self._inflight[d.id] = sub
        for d in picked:
            self._pool.submit(self._attempt, d)
        return len(picked)

    def _attempt(self, d: Delivery) -> None:
        try:
            sub = self.repo.subscription(d.subscription_id)
            if sub is None or not sub.enabled:
                self._record(d, Attempt(None, 0.0, "subscription disabled or deleted", False, None), sub)
                return
            attempt = self.sender.send(sub.url, sub.secret, d.id, d.body.encode())
            self._judge_pace(d.subscription_id, attempt)
            self._record(d, attempt, sub)
        except Exception:
            log.exception("webhook attempt %s failed unexpectedly", d.id)
        finally:
            with self._lock:
                self._inflight.pop(d.id, None)
            self.wake.set()

    def _limit(self, sub_id: str) -> int:
        """Attempts in flight a subscription may have: a few once it has answered in time, else one."""
        return FAST_PER_SUBSCRIPTION if sub_id in self._fast else 1

    def _judge_pace(self, sub_id: str, attempt: Attempt) -> None:
        """A subscription is slow from an attempt that took half the deadline until one that did not (then
        fast: it may have a few attempts in flight)."""
        slow = attempt.latency_ms >= self.settings.alerts_webhook_timeout_s * 500
        with self._lock:
            (self._slow.add if slow else self._slow.discard)(sub_id)
            (self._fast.discard if slow else self._fast.add)(sub_id)

    def _record(self, d: Delivery, a: Attempt, sub: WebhookSubscription | None) -> None:
        record(self.repo, self.settings, d, a, sub)


def record(repo: AlertRepo, settings: Settings, d: Delivery, a: Attempt, sub: WebhookSubscription | None) -> None:
    """Log attempt ``d.attempts + 1`` and move the delivery on (delivered, retry later, failed, gone)."""
    n = d.attempts + 1
    state, next_ms = next_state(settings, n, a)
    disable = "the receiver answered 410 Gone" if a.status == 410 else ""
    if disable:
        state = "gone"
    repo.record_attempt(DeliveryAttempt(delivery_id=d.id, attempt=n, at_ms=now_ms(), status=a.status,
                                        latency_ms=a.latency_ms, error=a.error),
                        state=state, next_ms=next_ms, disable=disable)
    if disable and sub is not None:
        log.warning("webhook %s (%s) disabled: %s", sub.id, sub.url, disable)


def next_state(settings: Settings, n: int, a: Attempt) -> tuple[str, int]:
    """(state, next attempt ms) after attempt ``n``."""
    if a.status is not None and 200 <= a.status < 300:
        return "delivered", now_ms()
    if not a.retryable or n >= settings.alerts_webhook_max_attempts:
        return "failed", now_ms()
    return "pending", now_ms() + int(backoff_s(settings, n, a.retry_after_s) * 1000)


def backoff_s(settings: Settings, n: int, retry_after_s: float | None) -> float:
    """Exponential backoff with jitter (half fixed, half random); at least what Retry-After asked."""
    cap = settings.alerts_webhook_backoff_max_s
    delay = min(settings.alerts_webhook_backoff_s * 2 ** (n - 1), cap)
    delay = delay / 2 + random.uniform(0, delay / 2)
    return min(max(delay, retry_after_s or 0.0), cap)


def send_once(repo: AlertRepo, settings: Settings, sub: WebhookSubscription, d: Delivery) -> Attempt:
    """One synchronous, logged attempt outside the dispatcher (the API's test ping)."""
    sender = sender_for(settings)
    try:
        attempt = sender.send(sub.url, sub.secret, d.id, d.body.encode())
    finally:
        sender.close()
    record(repo, settings, d, attempt, sub)
    return attempt
