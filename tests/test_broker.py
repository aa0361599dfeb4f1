"""The embedded broker against a real paho client: authentication, the topic ACL, last wills, a taken port."""

from __future__ import annotations

import contextlib
import queue
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from smartpark.broker import MAX_PACKET_BYTES, EmbeddedBroker, PortInUse
from smartpark.core.registry import Registry, parse_park_file

PARK = """
park: {id: test-park}
sites:
- id: plant-a
  name: Plant A
  enterprise: A Co.
  industry: steel
  area_m2: 1000
  devices:
  - {id: meter-1, kind: energy_meter}
  - {id: meter-2, kind: energy_meter}
  - {id: meter-3, kind: energy_meter}
"""
SERVICE, SERVICE_PASSWORD = "smartpark-ingest", "in-memory-secret"
TIMEOUT_S = 10.0


def topic(device: str, leaf: str = "telemetry", site: str = "plant-a") -> str:
    return f"smartpark/v1/{site}/{device}/{leaf}"


def default_client_id(username: str | None) -> str:
    """What the brokers accept: a device's own id; for a service, a client id in its namespace."""
    if username is None or not username.startswith("smartpark-"):
        return username or f"anon-{uuid.uuid4().hex[:8]}"
    return f"{username}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Probe:
    """A paho MQTTv311 client whose CONNACK, SUBACK and messages land in queues the test can wait on."""

    def __init__(
        self, port: int, username: str | None, password: str | None, will: tuple[str, str] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.port = port
        self.connacks: queue.Queue[ReasonCode] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else default_client_id(username),
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connacks.put(rc)
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.put(rcs)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)

    def connect(self) -> ReasonCode:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        return self.connacks.get(timeout=TIMEOUT_S)

    def subscribe(self, topic_filter: str) -> int:
        self.client.subscribe(topic_filter, qos=1)
        return self.subacks.get(timeout=TIMEOUT_S)[0].value

    def publish(self, to: str, payload: str, *, retain: bool = False) -> None:
        self.client.publish(to, payload, qos=1, retain=retain).wait_for_publish(TIMEOUT_S)

    def next_message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Vanish like a device losing power: the socket ends, no DISCONNECT is ever sent."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()  # the loop sees the lost connection and, with reconnect_on_failure off, ends


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(f"sqlite:///{tmp_path}/meta.sqlite")
    reg.init()
    reg.load_park(parse_park_file(PARK))
    yield reg
    reg.close()


@pytest.fixture
def broker(registry: Registry) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(registry, "127.0.0.1", free_port(), {SERVICE: SERVICE_PASSWORD}) as b:
        yield b


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for p in made:
        p.close()


@pytest.fixture
def connect(broker: EmbeddedBroker, probes: list[Probe]):
    def _connect(username: str | None, password: str | None, will: tuple[str, str] | None = None) -> Probe:
        probe = Probe(broker.port, username, password, will)
        probes.append(probe)
        rc = probe.connect()
        assert rc == "Success", f"{username} refused: {rc}"
        return probe

    return _connect


@pytest.fixture
def ingest(connect) -> Probe:
    probe = connect(SERVICE, SERVICE_PASSWORD)
    assert probe.subscribe("smartpark/v1/#") == 1
    return probe


def test_device_telemetry_reaches_the_service_subscriber(registry: Registry, ingest: Probe, connect) -> None:
    device = connect("meter-1", registry.provision_device("meter-1"))
    device.publish(topic("meter-1"), '{"metrics": {"power_kw": 1.5}}')
    msg = ingest.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (topic("meter-1"), b'{"metrics": {"power_kw": 1.5}}', 1)


@pytest.mark.parametrize(
    ("username", "password"),
    [("meter-1", "wrong"), (None, None), ("meter-2", ""), (SERVICE, "wrong"), ("no-such-device", "x")],
    ids=["wrong-password", "anonymous", "not-provisioned", "wrong-service-password", "unknown-device"],
)
def test_bad_credentials_are_refused_at_connect(
    registry: Registry,
    broker: EmbeddedBroker,
    probes: list[Probe],
    username: str | None,
    password: str | None,
) -> None:
    registry.provision_device("meter-1")
    probe = Probe(broker.port, username, password)
    probes.append(probe)
    rc = probe.connect()
    assert rc.is_failure
    assert rc == "Not authorized"


def test_publish_outside_own_topics_never_arrives(registry: Registry, ingest: Probe, connect) -> None:
    device = connect("meter-1", registry.provision_device("meter-1"))
    for bad in (
        topic("meter-2"),
        topic("meter-2", "status"),
        topic("meter-1", site="plant-b"),
        topic("meter-1", "commands"),
        "smartpark/v1/plant-a/meter-1",
        "other/topic",
    ):
        device.publish(bad, "forged")
    device.publish(topic("meter-1", "status"), "barrier")  # in order after the forged ones on one session
    assert ingest.next_message().payload == b"barrier"
    assert ingest.messages.empty()


def test_device_may_not_subscribe(registry: Registry, connect) -> None:
    device = connect("meter-1", registry.provision_device("meter-1"))
    assert device.subscribe(topic("meter-2")) == 0x80
    assert device.subscribe("smartpark/v1/#") == 0x80


def test_service_subscriptions_are_limited_to_v1(connect) -> None:
    service = connect(SERVICE, SERVICE_PASSWORD)
    assert service.subscribe("smartpark/v1/+/+/status") == 1
    assert service.subscribe("#") == 0x80


def test_last_will_is_delivered_and_retained(registry: Registry, ingest: Probe, connect) -> None:
    status = topic("meter-1", "status")
    device = connect("meter-1", registry.provision_device("meter-1"), will=(status, '{"state": "offline"}'))
    device.drop()
    msg = ingest.next_message()
    assert (msg.topic, msg.payload, msg.qos) == (status, b'{"state": "offline"}', 1)

    late = connect(SERVICE, SERVICE_PASSWORD)
    assert late.subscribe("smartpark/v1/plant-a/+/status") == 1
    retained = late.next_message()
    assert (retained.topic, retained.payload, retained.retain) == (status, b'{"state": "offline"}', True)


def test_will_on_a_foreign_topic_is_refused_at_connect(
    registry: Registry, broker: EmbeddedBroker, probes: list[Probe]
) -> None:
    password = registry.provision_device("meter-1")
    probe = Probe(broker.port, "meter-1", password, will=(topic("meter-2", "status"), "forged"))
    probes.append(probe)
    assert probe.connect() == "Not authorized"


def test_device_provisioned_after_start_connects(registry: Registry, connect) -> None:
    connect("meter-1", registry.provision_device("meter-1"))  # fills the credentials cache
    connect("meter-3", registry.provision_device("meter-3"))


def test_taken_port_raises_port_in_use(registry: Registry, broker: EmbeddedBroker) -> None:
    second = EmbeddedBroker(registry, "127.0.0.1", broker.port, {})
    with pytest.raises(PortInUse, match="SMARTPARK_MQTT_EMBEDDED_PORT"):
        second.start()
    broker.stop()
    broker.stop()  # idempotent
    with second:  # the port is free again once stopped
        pass


# ----------------------------------------------------------------------- hygiene: connections and logins


def test_a_connection_without_connect_is_closed(registry: Registry) -> None:
    with EmbeddedBroker(registry, "127.0.0.1", free_port(), {SERVICE: SERVICE_PASSWORD},
                        connect_timeout_s=0.3) as b, socket.create_connection(("127.0.0.1", b.port)) as idle:
        idle.settimeout(TIMEOUT_S)
        assert idle.recv(16) == b""  # the broker closed it: it never sent CONNECT


def test_connections_beyond_the_bound_are_closed(registry: Registry, probes: list[Probe]) -> None:
    with EmbeddedBroker(registry, "127.0.0.1", free_port(), {SERVICE: SERVICE_PASSWORD}, max_connections=2) as b:
        for _ in range(2):
            probe = Probe(b.port, SERVICE, SERVICE_PASSWORD)
            probes.append(probe)
            assert probe.connect() == "Success"
        with socket.create_connection(("127.0.0.1", b.port)) as third:
            third.settimeout(TIMEOUT_S)
            assert third.recv(16) == b""


def _attempt(probes: list[Probe], port: int, username: str, password: str, client_id: str | None = None) -> str:
    probe = Probe(port, username, password, client_id=client_id)
    probes.append(probe)
    return str(probe.connect())


def test_failed_logins_are_throttled_per_user_and_address(broker: EmbeddedBroker, registry: Registry,
                                                          probes: list[Probe], connect) -> None:
    password = registry.provision_device("meter-1")
    broker.authority.throttle.base_s = broker.authority.throttle.max_s = 60.0  # no retry window in this test
    assert _attempt(probes, broker.port, "meter-1", "wrong") != "Success"
    assert _attempt(probes, broker.port, "meter-1", password) != "Success"  # refused without a check
    assert broker.authority.throttle.refused == 1
    connect("meter-2", registry.provision_device("meter-2"))  # another user from the same address is not
    broker.authority.throttle.record("127.0.0.1|meter-1", ok=True)  # what the delay's end does
    connect("meter-1", password)


def test_a_device_connects_only_with_its_own_id_as_client_id(broker: EmbeddedBroker, registry: Registry,
                                                             probes: list[Probe]) -> None:
    password = registry.provision_device("meter-1")
    broker.authority.throttle.base_s = broker.authority.throttle.max_s = 0.0  # each refusal for its own reason
    for client_id in ("meter-2", "smartpark-ingest", "meter-1x"):
        assert _attempt(probes, broker.port, "meter-1", password, client_id) != "Success", client_id
    assert _attempt(probes, broker.port, SERVICE, SERVICE_PASSWORD, "meter-1") != "Success"
    assert _attempt(probes, broker.port, "meter-1", password, "meter-1") == "Success"


def _raw_connect(port: int, device: str, password: str) -> socket.socket:
    """A device's MQTT 3.1.1 CONNECT by hand (paho would refuse to send what the broker must refuse)."""
    def field(value: str) -> bytes:
        return len(value.encode()).to_bytes(2, "big") + value.encode()
    body = field("MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big") + field(device) + field(device) + field(password)
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    return sock


def test_a_packet_beyond_the_size_limit_closes_the_connection(registry: Registry, ingest: Probe, connect,
                                                               broker: EmbeddedBroker) -> None:
    """amqtt reads any packet whole: one device could keep a 256 MB retained message in the broker's memory."""
    password = registry.provision_device("meter-1")
    topic_name = topic("meter-1", "status").encode()
    size = MAX_PACKET_BYTES + 1
    header = bytes([0x33]) + bytes([(size & 0x7F) | 0x80, ((size >> 7) & 0x7F) | 0x80, size >> 14])  # QoS 1, retain
    with _raw_connect(broker.port, "meter-1", password) as sock:
        sock.sendall(header + len(topic_name).to_bytes(2, "big") + topic_name + b"\x00\x01")
        with contextlib.suppress(OSError):  # the broker may close while the body is still being sent
            sock.sendall(b"x" * (size - len(topic_name) - 4))
        assert sock.recv(4) == b""  # closed, no PUBACK
    device = connect("meter-1", password)
    device.publish(topic("meter-1", "status"), "online", retain=True)
    msg = ingest.next_message()  # the oversized message never reached a subscriber
    assert (msg.topic, msg.payload) == (topic("meter-1", "status"), b"online")


def _publish(to: str, body: bytes, mid: int) -> bytes:
    """A QoS-1 retained PUBLISH by hand (any topic, even a wildcard one, which paho would refuse)."""
    rest = len(to.encode()).to_bytes(2, "big") + to.encode() + mid.to_bytes(2, "big") + body
    size, length = len(rest), b""
    while True:
        size, byte = size >> 7, size & 0x7F
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return b"\x33" + length + rest


def test_an_oversized_packet_smuggled_after_a_bad_one_closes_the_connection(
        registry: Registry, ingest: Probe, connect, broker: EmbeddedBroker) -> None:
    """amqtt gives up on a PUBLISH with a wildcard topic after its topic and parses its body as packets: the
    body here carries the header of a 1 MB packet, which must not get past the size limit that way."""
    password = registry.provision_device("meter-1")
    inner = _publish(topic("meter-1", "status"), b"x" * (4 * MAX_PACKET_BYTES), mid=2)
    with _raw_connect(broker.port, "meter-1", password) as sock:
        sock.sendall(_publish("smartpark/v1/plant-a/meter-1/#", inner[:8], mid=1))
        with contextlib.suppress(OSError):
            sock.sendall(inner[8:])
        assert sock.recv(4) == b""
    device = connect("meter-1", password)
    device.publish(topic("meter-1", "status"), "online", retain=True)
    msg = ingest.next_message()
    assert (msg.topic, msg.payload) == (topic("meter-1", "status"), b"online")


@pytest.mark.parametrize("revoke", ["new-password", "deleted"])
def test_a_revoked_device_publishes_nothing_more_on_its_open_session(registry: Registry, ingest: Probe, connect,
                                                                     broker: EmbeddedBroker, revoke: str) -> None:
    """Renewing a stolen password (or deleting the device) must stop the thief's session already connected."""
    thief = connect("meter-1", registry.provision_device("meter-1"))
    thief.publish(topic("meter-1"), "before")
    assert ingest.next_message().payload == b"before"
    if revoke == "new-password":
        registry.provision_device("meter-1")
    else:
        registry.delete_device("meter-1")
    broker.authority._loaded_at = -1e9  # the cache's few seconds have passed
    thief.publish(topic("meter-1"), "after")
    connect("meter-2", registry.provision_device("meter-2")).publish(topic("meter-2"), "other")
    assert ingest.next_message().payload == b"other"  # "after" was dropped


BROKER_UNDER_A_LOW_FILE_LIMIT = """
import resource, sys, tempfile
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))  # a hard limit as low as a common soft one, scaled down
from smartpark.broker import EmbeddedBroker
from smartpark.core.registry import Registry
registry = Registry(f"sqlite:///{sys.argv[1]}/meta.sqlite")
registry.init()
with EmbeddedBroker(registry, "127.0.0.1", int(sys.argv[2]), {"smartpark-ingest": "x"}, connect_timeout_s=300):
    print("ready", flush=True)
    sys.stdin.readline()  # the test's idle connections are open now
    files = [tempfile.TemporaryFile() for _ in range(40)]  # what the API and the store open meanwhile
    print("opened", len(files), flush=True)
"""


def test_idle_connections_cannot_exhaust_the_process_file_limit(tmp_path: Path) -> None:
    """The embedded broker shares `smartpark up`'s process: its connection bound must leave files to the rest."""
    port = free_port()
    idle: list[socket.socket] = []
    with subprocess.Popen([sys.executable, "-c", BROKER_UNDER_A_LOW_FILE_LIMIT, str(tmp_path), str(port)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            for _ in range(300):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S))
            login = b"\x00\x04MQTT\x04\xc2\x00\x1e\x00\x05probe\x00\x05probe\x00\x01x"
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as last:
                last.sendall(bytes([0x10, len(login)]) + login)
                with contextlib.suppress(ConnectionResetError):  # refused or closed: connections are taken in
                    last.recv(4)  # order, so all the idle ones are too (a broker out of files never answers)
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "opened 40"
        finally:
            for s in idle:
                s.close()
            child.kill()
