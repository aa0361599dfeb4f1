"""The two brokers as production runs them, with registry identities, a real ingest and real clients.

``Target`` is either the embedded amqtt broker or a real Mosquitto started with the repo's
deploy/mosquitto/mosquitto.conf and the files of `smartpark broker export`. Attack tests run against both.
"""

from __future__ import annotations

import queue
import re
import secrets
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from smartpark.core.catalog import default_catalog
from smartpark.core.mqtt import Endpoint
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.ingest.service import IngestService
from smartpark.mosquitto import ADMIN_USER, write_export

from factories import now_ms, park_registry, payload, reading, wait_for
from servers import MosquittoServer, free_port, start_mosquitto

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 10.0
INGEST_USER, ALERTS_USER = "smartpark-ingest", "smartpark-alerts"
DEVICES = ("sinter-cems", "steel-meter", "green-1")


def repo_mosquitto_config(tmp_path: Path, export_dir: Path) -> str:
    """deploy/mosquitto/mosquitto.conf with its paths moved into tmp_path (the test helper adds the listener)."""
    text = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"(?m)^include_dir /mosquitto/smartpark$", text), "the shipped config includes the export"
    text = re.sub(r"(?m)^listener .*$", "", text)
    # the devices' TLS listener (8883) needs the deployment's certificate: TLS is tested with a CA of its own
    # (tests/test_mqtt_tls.py); here the one plain listener the helper adds carries the identity rules
    text = re.sub(r"(?m)^(certfile|keyfile|cafile|require_certificate) .*$", "", text)
    text = re.sub(r"(?m)^log_dest .*$", "", text)
    text = text.replace("include_dir /mosquitto/smartpark", f"include_dir {export_dir}")
    text = text.replace("/mosquitto/data/", f"{tmp_path}/data/")
    (tmp_path / "data").mkdir(exist_ok=True)
    return text


class Probe:
    """A paho client (MQTT 5 to Mosquitto, 3.1.1 to amqtt) whose CONNACK, SUBACKs and messages are queued."""

    def __init__(self, target: Target, username: str, password: str, client_id: str, *,
                 clean: bool = True) -> None:
        self.mqtt5 = target.mqtt5
        protocol = mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {} if self.mqtt5 else {"clean_session": clean}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  reconnect_on_failure=False, **kwargs)
        self.client.username_pw_set(username, password)
        self.connacks: queue.Queue[ReasonCode] = queue.Queue()
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnects: list[object] = []
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connacks.put(rc)
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self.subacks.put(rcs)
        self.client.on_message = lambda _c, _u, m: self.messages.append(m)
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.append(rc)
        self.clean = clean
        self.host, self.port = target.host, target.port

    def connect(self) -> ReasonCode:
        if self.mqtt5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if self.clean else 3600
            self.client.connect(self.host, self.port, clean_start=self.clean, properties=props)
        else:
            self.client.connect(self.host, self.port)
        self.client.loop_start()
        return self.connacks.get(timeout=TIMEOUT_S)

    def subscribe(self, topic_filter: str) -> ReasonCode:
        self.client.subscribe(topic_filter, qos=1)
        return self.subacks.get(timeout=TIMEOUT_S)[0]

    def publish(self, topic: str, body: bytes | dict[str, Any], *, retain: bool = False) -> None:
        data = body if isinstance(body, bytes) else payload(body)
        info = self.client.publish(topic, data, qos=1, retain=retain)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Broker(Protocol):
    """What a test needs of either broker: where it listens and how to stop it."""

    host: str
    port: int

    def stop(self) -> None: ...


@dataclass
class Target:
    kind: str
    broker: Broker  # the EmbeddedBroker, or the MosquittoServer running the repo's config
    registry: Registry
    tmp_path: Path
    passwords: dict[str, str]
    services: dict[str, str]
    probes: list[Probe] = field(default_factory=list)
    ingests: list[IngestService] = field(default_factory=list)

    @property
    def mqtt5(self) -> bool:
        return self.kind == "mosquitto"

    @property
    def host(self) -> str:
        return self.broker.host

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def server(self) -> MosquittoServer | None:
        """The Mosquitto process (its log, SIGHUP reloads); None for the embedded broker."""
        return self.broker if isinstance(self.broker, MosquittoServer) else None

    @property
    def store_path(self) -> Path:
        return self.tmp_path / "ts.sqlite"

    def probe(self, username: str, password: str | None = None, client_id: str | None = None, *,
              clean: bool = True) -> Probe:
        password = password if password is not None else {**self.passwords, **self.services}[username]
        made = Probe(self, username, password, client_id or username, clean=clean)
        self.probes.append(made)
        return made

    def device(self, device: str) -> Probe:
        """A device connected as itself (client id = device id)."""
        made = self.probe(device)
        rc = made.connect()
        assert not rc.is_failure, f"{device} refused: {rc}"
        return made

    def start_ingest(self, *, shared: str = "") -> IngestService:
        settings = Settings(_env_file=None, data_dir=self.tmp_path / f"ingest-{len(self.ingests)}",  # type: ignore[call-arg]
                            ingest_client_id=f"{INGEST_USER}-{uuid.uuid4().hex[:8]}", ingest_shared=shared,
                            ingest_batch_age_s=0.1, retention_days=30, ingest_metrics_port=0)
        store = EmbeddedStore(self.store_path, default_catalog())
        store.init()
        endpoint = Endpoint(self.host, self.port, INGEST_USER, self.services[INGEST_USER])
        service = IngestService(settings, store, self.registry, default_catalog(), endpoint=endpoint, mqtt5=self.mqtt5)
        service.start()
        self.ingests.append(service)
        return service

    def stored(self, device: str) -> int:
        """Readings of ``device`` in the store (distinct timestamps of its points)."""
        with sqlite3.connect(self.store_path) as conn:
            (n,) = conn.execute("SELECT count(DISTINCT p.ts) FROM points p JOIN series s ON s.id = p.series_id "
                                "WHERE s.device = ?", (device,)).fetchone()
        return int(n)

    def send_readings(self, device: Probe, site: str, name: str, n: int, t0: int | None = None) -> int:
        """Publish ``n`` readings of distinct timestamps; returns the first timestamp."""
        t0 = t0 if t0 is not None else now_ms() - 60_000
        for i in range(n):
            device.publish(f"smartpark/v1/{site}/{name}/telemetry", reading(ts=t0 + i, seq=i, power_kw=i))
        return t0

    def close(self) -> None:
        for p in self.probes:
            p.close()
        for service in self.ingests:
            service.stop()
        self.broker.stop()
        self.registry.close()


def make_target(kind: str, tmp_path: Path) -> Target:
    registry = park_registry(tmp_path)
    passwords = {d: registry.provision_device(d) for d in DEVICES}
    services = {INGEST_USER: secrets.token_urlsafe(12), ALERTS_USER: secrets.token_urlsafe(12),
                ADMIN_USER: secrets.token_urlsafe(12)}
    if kind == "embedded":
        from smartpark.broker import EmbeddedBroker

        broker = EmbeddedBroker(registry, "127.0.0.1", free_port(), services)
        broker.start()
        return Target(kind, broker, registry, tmp_path, passwords, services)
    return mosquitto_target(registry, tmp_path, passwords, services)


def mosquitto_target(registry: Registry, tmp_path: Path, passwords: dict[str, str],
                     services: dict[str, str]) -> Target:
    """A Mosquitto running the repo's config on the `smartpark broker export` of ``registry``."""
    export = tmp_path / "smartpark"
    write_export(registry, export, services)
    server = start_mosquitto(repo_mosquitto_config(tmp_path, export), tmp_path / "mosquitto")
    return Target("mosquitto", server, registry, tmp_path, passwords, services)


def settle(target: Target, device: str, expected: int) -> None:
    wait_for(lambda: target.stored(device) >= expected)
    assert target.stored(device) == expected


def barrier(device: Probe, site: str, name: str) -> None:
    """A QoS-1 round trip on ``device``'s link: paho handles incoming packets in order on one thread, so
    whatever the broker sent the device before this PUBACK has reached ``messages`` by now."""
    device.publish(f"smartpark/v1/{site}/{name}/status", {"state": "online", "ts": now_ms()})
