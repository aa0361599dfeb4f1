"""Hostile webhook receivers: one that trickles its answer, one that answers 128 MiB, eight slow ones at once,
and addresses that carry an internal IPv4 address inside an IPv6 one.

The receivers are real HTTP servers on 127.0.0.1 (a raw socket for the trickle, so it controls every byte).
"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from test_alerts import Receiver, make_registry, settings_for
from test_alerts_faults import enqueue, subscription

from smartpark.alerts import UnsafeDestination
from smartpark.alerts.delivery import Dispatcher, Sender
from smartpark.alerts.repo import AlertRepo
from smartpark.alerts.ssrf import resolve_target

from factories import HookServer, accept_forever, wait_for

SECRET = "whsec_" + "A" * 32


class Trickle:
    """Accepts a webhook, then sends its answer one byte every ``every`` seconds for ``hold`` seconds: in the
    status line's headers (``where="head"``) or, after a complete 200 head, in the body (``where="body"``)."""

    def __init__(self, where: str = "head", every: float = 0.2, hold: float = 12.0) -> None:
        self.where, self.every, self.hold = where, every, hold
        self.open = 0  # connections being trickled to right now
        self.served = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        accept_forever(self.sock, lambda conn: threading.Thread(target=self._serve, args=(conn,), daemon=True).start())

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
        try:
            conn.recv(65536)  # the request (a small JSON body: one read)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            conn.sendall(head + (b"X-Pad: " if self.where == "head" else b"Content-Length: 1000000\r\n\r\n"))
            ends = time.monotonic() + self.hold
            while time.monotonic() < ends:
                conn.sendall(b"a")
                time.sleep(self.every)
            conn.sendall(b"\r\nContent-Length: 0\r\n\r\n" if self.where == "head" else b"")
        except OSError:
            pass  # the sender hung up: what the test wants
        finally:
            with self.lock:
                self.open -= 1
                self.served += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


class Huge(HookServer):
    """Answers 200 with a ``size`` body, written from one preallocated chunk (the server holds 1 MiB)."""

    CHUNK = b"x" * (1 << 20)

    def __init__(self, size: int) -> None:
        self.size, self.written = size, 0
        super().__init__()

    def post(self, request: BaseHTTPRequestHandler) -> None:
        request.rfile.read(int(request.headers.get("content-length", 0)))
        request.send_response(200)
        request.send_header("content-length", str(self.size))
        request.end_headers()
        try:
            while self.written < self.size:
                request.wfile.write(Huge.CHUNK)
                self.written += len(Huge.CHUNK)
        except OSError:
            pass


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_trickling_receiver_is_cut_at_the_attempts_deadline(where: str) -> None:
    trickle = Trickle(where, every=0.2, hold=12.0)
    sender = Sender(timeout_s=1, allow_private=True)
    try:
        attempt = sender.send(trickle.url, SECRET, "msg_trickle", b"{}")
    finally:
        sender.close()
        trickle.close()
    # A byte every 0.2 s never trips a 1 s per-read timeout: before the deadline the attempt took the 12 s the
    # receiver held it. Now the attempt ends at its 1 s deadline (bound: 4 s on a loaded machine).
    assert attempt.latency_ms < 4000
    if where == "head":
        assert attempt.status is None
        assert "timed out" in attempt.error
        assert attempt.retryable
    else:  # the status came in time: it decides, the trickled body is not waited for
        assert attempt.status == 200


def test_a_huge_response_is_not_read() -> None:
    size = 128 << 20
    huge = Huge(size)
    sender = Sender(timeout_s=30, allow_private=True)
    tracemalloc.start()
    try:
        attempt = sender.send(huge.url, SECRET, "msg_huge", b"{}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sender.close()
        huge.close()
    assert attempt.status == 200
    assert peak < 8 << 20, f"the sender held {peak / 2**20:.0f} MiB of a {size >> 20} MiB answer"
    assert huge.written < size  # the sender hung up instead of reading it all


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[tuple[AlertRepo, Dispatcher]]:
    settings = settings_for(tmp_path, alerts_webhook_timeout_s=4.0, alerts_webhook_max_attempts=1)
    registry = make_registry(tmp_path)
    repo = AlertRepo(registry.engine)
    repo.init()
    dispatcher = Dispatcher(repo, settings)
    dispatcher.start()
    yield repo, dispatcher
    dispatcher.stop()
    registry.close()


def test_eight_slow_receivers_leave_workers_for_the_others(dispatcher: tuple[AlertRepo, Dispatcher]) -> None:
    repo, disp = dispatcher
    slow = [Trickle("head", every=0.2, hold=8.0) for _ in range(8)]
    fast = Receiver()
    try:
        slow_subs = [subscription(repo, t.url) for t in slow]
        for sub in slow_subs:
            for _ in range(3):  # a backlog each: more than one worker's worth
                enqueue(repo, sub)
        time.sleep(0.01)  # the fast delivery is due after every slow one
        enqueue(repo, subscription(repo, fast.url))
        disp.wake.set()
        wait_for(fast.ok, timeout=30)
        # Delivered while all eight slow receivers still hold their first attempt: none has been recorded.
        # Before: eight workers, all eight held until a slow receiver let go (its 8 s, whatever the timeout).
        held = sum(t.open for t in slow)
        recorded = sum(len(a) for sub in slow_subs for _, a in repo.deliveries(sub.id))
        assert (held, recorded) == (8, 0)
    finally:
        fast.close()
        for t in slow:
            t.close()


# ------------------------------------------------------------------------------------------------ SSRF
CARRIED = [
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",  # NAT64 well-known prefix -> 169.254.169.254
    "http://[64:ff9b::7f00:1]:8080/hook",  # NAT64 -> 127.0.0.1
    "http://[64:ff9b:1:a00:0:1::]/hook",  # NAT64 local-use /48 -> 10.0.0.1
    "http://[2002:a9fe:a9fe::1]/hook",  # 6to4 -> 169.254.169.254
    "http://[2002:7f00:1::]/hook",  # 6to4 -> 127.0.0.1
    "http://[::7f00:1]/hook",  # IPv4-compatible -> 127.0.0.1
    "http://[::ffff:0:a00:1]/hook",  # IPv4-translated -> 10.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",  # Teredo, client 127.0.0.1
    "http://[2a00:1450:4001::5efe:a00:1]/hook",  # ISATAP interface id -> 10.0.0.1
]


@pytest.mark.parametrize("url", CARRIED)
def test_ssrf_guard_refuses_an_internal_ipv4_address_carried_in_ipv6(url: str) -> None:
    with pytest.raises(UnsafeDestination) as info:
        resolve_target(url, allow_private=False)
    assert info.value.address is not None


def test_ssrf_guard_lets_a_public_ipv4_address_through_nat64_and_6to4() -> None:
    for url in ("http://[64:ff9b::808:808]/hook", "http://[2002:808:808::1]/hook"):
        assert resolve_target(url, allow_private=False).address.startswith(("64:ff9b", "2002"))
