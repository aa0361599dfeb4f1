"""The MQTT transport over TLS against a real Mosquitto with a TLS listener and a CA made by the test.

Every client of the platform (the ingest on MQTT 5 and on 3.1.1, the alert engine, the simulators' publishers
and live devices, the load generator) connects with a CA file, and with client certificates where the broker
requires them; a wrong CA, an expired or wrong-host certificate, a missing client certificate and a plain
listener behind an ``mqtts://`` URL each fail with a typed error naming the broker and the reason; and a
listener sees a TLS ClientHello first, never a CONNECT with the password in it.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.mqtt import BrokerUnreachable, ConnectRefused, Endpoint, TlsFiles, TlsHandshakeError
from smartpark.core.mqtt.paho_source import PahoSource
from smartpark.core.mqtt.session import Mqtt5Session
from smartpark.core.registry import Registry, parse_park_file, read_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.ingest.service import IngestService
from smartpark.platform import alert_engine, demo_park_path
from smartpark.simulators import LiveSimulator
from smartpark.simulators.loadgen import run_load
from smartpark.simulators.publisher import Connection, PublishError

from factories import PARK_YAML, accept_forever, now_ms, payload, reading, wait_for
from servers import MosquittoServer, TestPki, start_mosquitto, tls_listener_config

pytestmark = pytest.mark.mosquitto

BROKER = "allow_anonymous true\npersistence false\n"
TOPIC = "smartpark/v1/steel/steel-meter/telemetry"
SECRET = "s3cret-never-on-the-wire"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    pytest.importorskip("trustme")
    return TestPki(tmp_path_factory.mktemp("pki"))


def _broker(pki: TestPki, tmp: Path, cert: Path | None = None, key: Path | None = None, *,
            require_certificate: bool = False) -> Iterator[MosquittoServer]:
    config = tls_listener_config(cert or pki.server_cert, key or pki.server_key, pki.ca_file,
                                 require_certificate=require_certificate)
    server = start_mosquitto(BROKER + config, tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_broker(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A TLS listener with the test CA's certificate for 127.0.0.1; no client certificate needed."""
    yield from _broker(pki, tmp_path_factory.mktemp("mosquitto-tls"))


@pytest.fixture(scope="module")
def mtls_broker(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A TLS listener that requires a client certificate signed by the test CA (mutual TLS)."""
    yield from _broker(pki, tmp_path_factory.mktemp("mosquitto-mtls"), require_certificate=True)


def tls_of(pki: TestPki, *, client_cert: bool) -> TlsFiles:
    return TlsFiles(pki.ca_file, pki.client_cert if client_cert else None, pki.client_key if client_cert else None)


@pytest.fixture(params=["ca-file", "mutual"])
def secure(request: pytest.FixtureRequest, pki: TestPki) -> Endpoint:
    """The endpoint of a TLS broker: verified with the CA file only, or with a client certificate too."""
    mutual = request.param == "mutual"
    server = request.getfixturevalue("mtls_broker" if mutual else "tls_broker")
    return Endpoint(server.host, server.port, tls=tls_of(pki, client_cert=mutual))


def core_of(tmp_path: Path, **settings: Any) -> tuple[Settings, EmbeddedStore, Registry]:
    """Settings (unique client ids), an embedded store and a registry of the test park, under ``tmp_path``."""
    ids = {"ingest_client_id": f"smartpark-ingest-{uuid.uuid4().hex[:8]}",
              "alerts_client_id": f"smartpark-alerts-{uuid.uuid4().hex[:8]}"}
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    return Settings(_env_file=None, data_dir=tmp_path, **(ids | settings)), store, registry  # type: ignore[call-arg]


def publish_readings(endpoint: Endpoint, n: int) -> int:
    """n readings from steel-meter through the simulators' publisher (mqtt5 codec, QoS 1); returns the base ts."""
    t0 = now_ms() - 60_000
    conn = Connection(endpoint, f"steel-meter-{uuid.uuid4().hex[:6]}")
    conn.connect()
    for k in range(n):
        conn.publish(TOPIC, payload(reading(ts=t0 + k, power_kw=float(k))))
    conn.drain()
    conn.close()
    return t0


# ------------------------------------------------------------------------------------- clients over TLS


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5-session", "paho-3.1.1"])
def test_ingest_stores_everything_over_tls(tmp_path: Path, secure: Endpoint, mqtt5: bool) -> None:
    settings, store, registry = core_of(tmp_path, ingest_batch_age_s=0.2)
    service = IngestService(settings, store, registry, default_catalog(), endpoint=secure, mqtt5=mqtt5)
    service.start()
    try:
        assert isinstance(service.source, Mqtt5Session if mqtt5 else PahoSource)
        publish_readings(secure, 300)
        wait_for(lambda: service.stats.counters["readings_stored"] >= 300)
    finally:
        service.stop()
        registry.close()
    latest = {(v.device, v.metric): v.value for v in store.latest("steel")}
    assert latest["steel-meter", "power_kw"] == 299.0
    assert service.stats.counters["readings_stored"] == 300


def test_alert_engine_receives_over_mutual_tls(tmp_path: Path, pki: TestPki, mtls_broker: MosquittoServer) -> None:
    endpoint = Endpoint(mtls_broker.host, mtls_broker.port, tls=tls_of(pki, client_cert=True))
    settings, store, registry = core_of(tmp_path, retention_days=30)
    engine = alert_engine(settings, registry, store, default_catalog(), endpoint=endpoint, mqtt5=True)
    engine.start()
    try:
        publish_readings(endpoint, 5)
        wait_for(lambda: engine.processed >= 5)
    finally:
        engine.stop()
        registry.close()
    assert engine.failed_batches == 0


@pytest.mark.parametrize("mqtt5", [False, True], ids=["paho-3.1.1", "paho-5"])
def test_live_simulator_publishes_over_mutual_tls(pki: TestPki, mtls_broker: MosquittoServer, mqtt5: bool) -> None:
    endpoint = Endpoint(mtls_broker.host, mtls_broker.port, tls=tls_of(pki, client_cert=True))
    park = read_park_file(demo_park_path())
    park.sites[:] = park.sites[:1]  # one site's devices are enough
    creds = {d.id: "pw" for s in park.sites for d in s.devices}
    with LiveSimulator(park, creds, endpoint, interval_s=0.2, mqtt5=mqtt5) as sim:
        assert sim.wait_connected(15)
        wait_for(lambda: sim.acked >= 2 * sim.device_count)
    assert sim.errors == 0


def test_load_generator_publishes_over_tls(pki: TestPki, tls_broker: MosquittoServer) -> None:
    """The endpoint crosses into spawned workers (a frozen value); each builds its own TLS context."""
    endpoint = Endpoint(tls_broker.host, tls_broker.port, tls=tls_of(pki, client_cert=False))
    result = run_load(endpoint, [("load", f"m{d:03d}") for d in range(10)], 2_000, processes=2, connections=1)
    assert result.messages == 2_000


# ------------------------------------------------------------------------------------- refused handshakes


@pytest.fixture(scope="module")
def expired_broker(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    now = dt.datetime.now(dt.UTC)
    cert, key = pki.issue("expired", "127.0.0.1", "localhost", not_before=now - dt.timedelta(days=30),
                          not_after=now - dt.timedelta(days=1))
    yield from _broker(pki, tmp_path_factory.mktemp("mosquitto-expired"), cert, key)


@pytest.fixture(scope="module")
def wrong_host_broker(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    cert, key = pki.issue("elsewhere", "broker.elsewhere.example")
    yield from _broker(pki, tmp_path_factory.mktemp("mosquitto-wrong-host"), cert, key)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return TestPki(tmp_path_factory.mktemp("other-pki")).ca_file


CASES: dict[str, tuple[str, bool, str]] = {  # case: (broker fixture, use the other CA, reason expected)
    "wrong-ca": ("tls_broker", True, r"certificate verify failed: (unable to get local issuer|self.signed)"),
    "expired": ("expired_broker", False, r"certificate verify failed: certificate has expired"),
    "wrong-host": ("wrong_host_broker", False, r"certificate verify failed: (IP address|Hostname) mismatch"),
    "plain-listener": ("mosquitto", False, r"closed the connection during the handshake \(is this a TLS listener"),
    "no-client-cert": ("mtls_broker", False, r"(CERTIFICATE_REQUIRED|requires a client certificate)"),
}


def _session(endpoint: Endpoint) -> None:
    Mqtt5Session(endpoint, client_id=f"t-{uuid.uuid4().hex[:6]}", receive_maximum=10, filters=["t/#"],
                 on_message=lambda *_: None).start()


def _paho(mqtt5: bool) -> Callable[[Endpoint], None]:
    def start(endpoint: Endpoint) -> None:
        PahoSource(endpoint, client_id=f"t-{uuid.uuid4().hex[:6]}", receive_maximum=10, filters=["t/#"],
                   on_message=lambda *_: None, mqtt5=mqtt5).start()
    return start


def _publisher(endpoint: Endpoint) -> None:
    try:
        Connection(endpoint, f"t-{uuid.uuid4().hex[:6]}").connect()
    except PublishError as exc:  # the publisher's own error; the transport's typed error is its cause
        if isinstance(exc.__cause__, TlsHandshakeError):
            raise exc.__cause__ from None
        raise


CLIENTS: dict[str, Callable[[Endpoint], None]] = {
    "mqtt5-session": _session, "paho-3.1.1": _paho(False), "paho-5": _paho(True), "publisher": _publisher}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("client", CLIENTS)
def test_a_bad_tls_peer_is_a_clear_error(request: pytest.FixtureRequest, pki: TestPki, other_ca: Path, case: str,
                                         client: str) -> None:
    fixture, wrong_ca, reason = CASES[case]
    server: MosquittoServer = request.getfixturevalue(fixture)
    endpoint = Endpoint(server.host, server.port, "user", SECRET, TlsFiles(other_ca if wrong_ca else pki.ca_file))
    with pytest.raises(TlsHandshakeError, match=reason) as info:
        CLIENTS[client](endpoint)
    assert info.value.broker == f"mqtts://{server.host}:{server.port}"
    assert str(info.value).startswith(f"MQTT broker mqtts://{server.host}:{server.port}: TLS handshake failed: ")
    assert SECRET not in str(info.value)


def test_a_refused_login_over_tls_is_not_a_tls_error(pki: TestPki, tmp_path: Path) -> None:
    """The handshake worked: a bad password is a refused CONNECT, and says so."""
    with_auth = "allow_anonymous false\npersistence false\npassword_file /dev/null\n"
    server = start_mosquitto(with_auth + tls_listener_config(pki.server_cert, pki.server_key, pki.ca_file), tmp_path)
    try:
        endpoint = Endpoint(server.host, server.port, "nobody", "wrong", TlsFiles(pki.ca_file))
        with pytest.raises(ConnectRefused, match=r"mqtts://.*CONNACK (NOT_AUTHORIZED|BAD_USER_NAME_OR_PASSWORD)"):
            _session(endpoint)
    finally:
        server.stop()


# ------------------------------------------------------------------------------------- nothing in plain text


class FirstBytes:
    """A TCP listener that records what each client sends first (up to 4 KiB), then hangs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        accept_forever(self.sock, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                    if len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big"):
                        break  # one whole TLS record (or whatever a plain client sent)
            except OSError:
                pass
            self.received.append(data)

    def close(self) -> None:
        self.sock.close()


def _live(endpoint: Endpoint) -> None:
    park = parse_park_file(PARK_YAML)
    with LiveSimulator(park, {"steel-meter": endpoint.password or ""}, endpoint, interval_s=1) as sim:
        sim.wait_connected(1)


@pytest.mark.parametrize("client", [*CLIENTS, "live-simulator"])
def test_nothing_is_sent_in_plain_text(pki: TestPki, client: str) -> None:
    """The defect: mqtts:// was parsed and ignored, CONNECT went out in plain text with the password in it."""
    listener = FirstBytes()
    try:
        endpoint = Endpoint("127.0.0.1", listener.port, "steel-meter", SECRET, TlsFiles(pki.ca_file))
        start: Callable[[Endpoint], Any] = _live if client == "live-simulator" else CLIENTS[client]
        with suppress(BrokerUnreachable, PublishError):  # the listener speaks no TLS: the handshake must fail
            start(endpoint)
        wait_for(lambda: listener.received, timeout=10)
    finally:
        listener.close()
    first = listener.received[0]
    assert first[:1] == b"\x16", f"not a TLS handshake record: {first[:16]!r}"  # 0x16: handshake, 0x10: CONNECT
    assert first[5:6] == b"\x01"  # ClientHello
    assert all(SECRET.encode() not in data for data in listener.received)
