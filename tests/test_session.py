"""Mqtt5Session against a real Mosquitto: delivery, backpressure, session resumption, reconnects, keepalive."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from smartpark.core.mqtt import BrokerUnreachable, Endpoint, platform_filters
from smartpark.core.mqtt.session import BUFFER_BYTES, Mqtt5Session

from factories import accept_forever, forget_session, publish_many, wait_for
from servers import MOSQUITTO, MosquittoServer, need, start_mosquitto

pytestmark = pytest.mark.mosquitto

PRIVATE_CONFIG = "allow_anonymous true\npersistence false\nmax_queued_messages 1000000\n"


class Inbox:
    """on_message target: keeps (topic, payload, packet_id, generation); optionally acks right away."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes, int, int]] = []
        self.session: Mqtt5Session | None = None
        self.auto_ack = False
        self.lock = threading.Lock()

    def __call__(self, topic: str, payload: bytes, packet_id: int, generation: int) -> None:
        with self.lock:
            self.items.append((topic, payload, packet_id, generation))
        if self.auto_ack and self.session is not None:
            self.session.ack([(generation, packet_id)])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def payloads(self) -> list[bytes]:
        return [item[1] for item in self.items]

    def acks(self) -> list[tuple[int, int]]:
        return [(item[3], item[2]) for item in self.items]


def new_id(tag: str) -> str:
    return f"test-{tag}-{uuid.uuid4().hex[:8]}"


def session(server: MosquittoServer | tuple[str, int], client_id: str, inbox: Inbox, *, receive_maximum: int = 100,
            shared: str = "", auto_ack: bool = False, start: bool = True, **kwargs: object) -> Mqtt5Session:
    host, port = (server.host, server.port) if isinstance(server, MosquittoServer) else server
    endpoint = Endpoint(host, port, kwargs.pop("username", None), kwargs.pop("password", None),  # type: ignore[arg-type]
                        kwargs.pop("tls", None))  # type: ignore[arg-type]
    s = Mqtt5Session(endpoint, client_id=client_id, receive_maximum=receive_maximum, filters=platform_filters(shared),
                     on_message=inbox, **kwargs)  # type: ignore[arg-type]
    inbox.session, inbox.auto_ack = s, auto_ack
    if start:
        s.start()
        assert s.subscribed.wait(10), "no SUBACK"
    return s


def messages(tag: str, n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"smartpark/v1/{tag}/dev{i % 3}/telemetry", b'{"seq": %d}' % i) for i in range(start, start + n)]


forget = forget_session


@pytest.fixture
def cleanup(mosquitto: MosquittoServer) -> Iterator[list[Mqtt5Session]]:
    """Sessions to stop after the test; their persistent broker sessions are deleted too."""
    sessions: list[Mqtt5Session] = []
    yield sessions
    for s in sessions:
        s.stop()
    for client_id in {s.client_id for s in sessions if s.port == mosquitto.port}:
        forget(mosquitto.host, mosquitto.port, client_id)


def restart_mosquitto(server: MosquittoServer) -> None:
    """Stop the broker process and start it again on the same config file and port."""
    server.stop()
    with (server.root / "mosquitto.stderr").open("ab") as err:
        server.proc = subprocess.Popen([MOSQUITTO, "-c", str(server.root / "mosquitto.conf")], stdout=err,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def listening() -> bool:
        assert server.proc.poll() is None, server.log
        try:
            with socket.create_connection((server.host, server.port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(listening, timeout=30)


class Proxy:
    """A TCP relay to the broker whose connections can be cut (a network failure without a broker restart)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.threads = [accept_forever(self.listener, self._relay)]

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        with self.lock:
            self.conns += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            t = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
            self.threads.append(t)
            t.start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        # Half-close only: the other direction may still carry the last bytes (acks, then DISCONNECT).
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for s in conns:
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()
        for t in self.threads:
            t.join(5)
        self.cut()


# --------------------------------------------------------------------------------------------- tests


def test_messages_arrive_intact_and_in_order(mosquitto: MosquittoServer, cleanup: list[Mqtt5Session]) -> None:
    inbox = Inbox()
    cleanup.append(session(mosquitto, new_id("order"), inbox, auto_ack=True))
    sent = messages("order", 500)
    publish_many(mosquitto.host, mosquitto.port, sent)
    wait_for(lambda: len(inbox) >= len(sent))
    time.sleep(0.2)
    assert [(t, p) for t, p, _, _ in inbox.items] == sent
    assert all(pid > 0 and gen == 1 for _, _, pid, gen in inbox.items)


def test_receive_maximum_is_backpressure(mosquitto: MosquittoServer, cleanup: list[Mqtt5Session]) -> None:
    inbox = Inbox()
    s = session(mosquitto, new_id("backpressure"), inbox, receive_maximum=10)
    cleanup.append(s)
    sent = messages("backpressure", 50)
    publish_many(mosquitto.host, mosquitto.port, sent)
    wait_for(lambda: len(inbox) >= 10)
    time.sleep(1.0)
    assert len(inbox) == 10  # nothing beyond Receive Maximum while unacked
    inbox.auto_ack = True
    assert s.ack(inbox.acks()) == 10
    wait_for(lambda: len(inbox) >= 50)
    time.sleep(0.2)
    assert inbox.payloads == [p for _, p in sent]


def test_maximum_packet_size_bounds_what_the_broker_sends(mosquitto: MosquittoServer,
                                                          cleanup: list[Mqtt5Session]) -> None:
    """MQTT 5 Maximum Packet Size in CONNECT: the broker drops a bigger message instead of sending it."""
    inbox = Inbox()
    cleanup.append(session(mosquitto, new_id("maxpkt"), inbox, auto_ack=True, max_packet_bytes=8192))
    big, small = ("smartpark/v1/maxpkt/dev0/telemetry", b"x" * 20_000), ("smartpark/v1/maxpkt/dev0/telemetry", b"{}")
    publish_many(mosquitto.host, mosquitto.port, [big, small])
    wait_for(lambda: len(inbox) >= 1)
    time.sleep(0.3)
    assert inbox.payloads == [b"{}"]


def test_receive_buffer_returns_to_its_size_after_a_large_packet(mosquitto: MosquittoServer,
                                                                 cleanup: list[Mqtt5Session]) -> None:
    """One large packet must not pin its memory for the life of the process."""
    sizes: list[int] = []

    class Sizes(Inbox):
        def __call__(self, topic: str, payload: bytes, packet_id: int, generation: int) -> None:
            sizes.append(len(s._buf))  # the reader thread, while the packet is in the buffer
            super().__call__(topic, payload, packet_id, generation)

    inbox = Sizes()
    s = session(mosquitto, new_id("bigpkt"), inbox, auto_ack=True)
    cleanup.append(s)
    topic = "smartpark/v1/bigpkt/dev0/telemetry"
    publish_many(mosquitto.host, mosquitto.port, [(topic, b"y" * (3 << 20)), (topic, b"{}")])
    wait_for(lambda: len(inbox) >= 2)
    assert inbox.payloads == [b"y" * (3 << 20), b"{}"]
    assert sizes[0] >= 3 << 20  # grown to hold it
    wait_for(lambda: len(s._buf) == BUFFER_BYTES)


def test_session_resumes_after_stop_start(mosquitto: MosquittoServer, cleanup: list[Mqtt5Session]) -> None:
    client_id = new_id("resume")
    first = Inbox()
    s1 = session(mosquitto, client_id, first)
    cleanup.append(s1)
    publish_many(mosquitto.host, mosquitto.port, messages("resume", 20))
    wait_for(lambda: len(first) >= 20)
    s1.stop()  # none acked
    publish_many(mosquitto.host, mosquitto.port, messages("resume", 30, start=20))  # queued while away
    second = Inbox()
    s2 = session(mosquitto, client_id, second, auto_ack=True)
    cleanup.append(s2)
    wait_for(lambda: len(second) >= 50)
    time.sleep(0.3)
    assert sorted(second.payloads) == sorted(p for _, p in messages("resume", 50))  # none lost, none doubled
    assert second.payloads[:20] == first.payloads  # the unacked ones first
    s2.stop()
    third = Inbox()
    cleanup.append(session(mosquitto, client_id, third))
    time.sleep(1.0)
    assert len(third) == 0  # everything was acked for good


def test_acks_of_an_old_generation_are_ignored(mosquitto: MosquittoServer, cleanup: list[Mqtt5Session]) -> None:
    proxy = Proxy(mosquitto.host, mosquitto.port)
    client_id = new_id("generation")
    inbox = Inbox()
    try:
        s = session(("127.0.0.1", proxy.port), client_id, inbox)
        cleanup.append(s)
        publish_many(mosquitto.host, mosquitto.port, messages("generation", 5))
        wait_for(lambda: len(inbox) >= 5)
        old = inbox.acks()
        assert {gen for gen, _ in old} == {1}
        proxy.cut()
        wait_for(lambda: s.generation == 2 and s.subscribed.is_set())
        wait_for(lambda: len(inbox) >= 10)  # redelivered on the new connection
        assert s.ack(old) == 0
        new = inbox.acks()[5:]
        assert {gen for gen, _ in new} == {2}
        assert inbox.payloads[5:] == inbox.payloads[:5]
        assert s.ack(new) == 5
        s.stop()
    finally:
        proxy.close()
    check = Inbox()
    cleanup.append(session(mosquitto, client_id, check))
    time.sleep(1.0)
    assert len(check) == 0  # the generation-2 acks counted


def test_reconnects_after_broker_restart(tmp_path: Path) -> None:
    server = start_mosquitto(PRIVATE_CONFIG, tmp_path)
    inbox = Inbox()
    s = session(server, new_id("restart"), inbox, auto_ack=True)
    try:
        publish_many(server.host, server.port, messages("restart", 5))
        wait_for(lambda: len(inbox) >= 5)
        restart_mosquitto(server)
        wait_for(lambda: s.generation == 2 and s.subscribed.is_set(), timeout=30)
        publish_many(server.host, server.port, messages("restart", 5, start=5))
        wait_for(lambda: len(inbox) >= 10)
        assert inbox.payloads == [p for _, p in messages("restart", 10)]
        assert [gen for *_, gen in inbox.items] == [1] * 5 + [2] * 5
    finally:
        s.stop()
        server.stop()


def test_keepalive_holds_an_idle_connection(tmp_path: Path) -> None:
    server = start_mosquitto(PRIVATE_CONFIG, tmp_path)
    inbox = Inbox()
    s = session(server, new_id("keepalive"), inbox, auto_ack=True, keepalive_s=2)
    try:
        time.sleep(6.5)  # > 3 keepalive periods without traffic; the broker drops us after 3 s of silence
        assert s.generation == 1
        assert s.subscribed.is_set()
        publish_many(server.host, server.port, messages("keepalive", 3))
        wait_for(lambda: len(inbox) >= 3)
        assert {gen for *_, gen in inbox.items} == {1}
        assert "exceeded timeout" not in server.log
    finally:
        s.stop()
        server.stop()


def test_bad_credentials_fail_start(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run([need("mosquitto_passwd"), "-b", "-c", str(passwd), "user", "pass"], check=True, timeout=30)
    server = start_mosquitto(f"allow_anonymous false\npassword_file {passwd}\n", tmp_path / "broker")
    try:
        with pytest.raises(BrokerUnreachable, match=r"BAD_USER_NAME_OR_PASSWORD|NOT_AUTHORIZED") as info:
            session(server, new_id("auth"), Inbox(), username="user", password="wrong")
        assert (info.value.host, info.value.port) == (server.host, server.port)
        with pytest.raises(BrokerUnreachable, match=r"BAD_USER_NAME_OR_PASSWORD|NOT_AUTHORIZED"):
            session(server, new_id("anon"), Inbox())
        good = session(server, new_id("auth"), Inbox(), username="user", password="pass")
        good.stop()
    finally:
        server.stop()


def test_unreachable_broker_fails_start(tmp_path: Path) -> None:
    server = start_mosquitto(PRIVATE_CONFIG, tmp_path)
    server.stop()
    with pytest.raises(BrokerUnreachable) as info:
        session(server, new_id("down"), Inbox())
    assert info.value.port == server.port


def test_shared_subscription_splits_the_load(mosquitto: MosquittoServer, cleanup: list[Mqtt5Session]) -> None:
    inboxes = [Inbox(), Inbox()]
    group = new_id("grp")
    for i, inbox in enumerate(inboxes):
        cleanup.append(session(mosquitto, new_id(f"shared{i}"), inbox, shared=group, auto_ack=True))
    sent = messages("shared", 2000)
    publish_many(mosquitto.host, mosquitto.port, sent)
    wait_for(lambda: sum(map(len, inboxes)) >= len(sent))
    time.sleep(0.5)
    received = inboxes[0].payloads + inboxes[1].payloads
    assert sorted(received) == sorted(p for _, p in sent)  # none lost, none doubled
    assert all(len(inbox) > 0 for inbox in inboxes)
