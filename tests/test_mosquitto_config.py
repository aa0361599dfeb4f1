"""The repo's production Mosquitto config with auth files exported from the registry, on a real Mosquitto."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from smartpark.core.registry import Registry, parse_park_file
from smartpark.mosquitto import write_auth_files

from factories import PARK_YAML, wait_for
from servers import MosquittoServer, start_mosquitto

ROOT = Path(__file__).resolve().parent.parent
INGEST_PASSWORD = "ingest-" + uuid.uuid4().hex


def repo_config(tmp_path: Path) -> str:
    """deploy/mosquitto/mosquitto.conf with its paths moved into tmp_path (the helper adds the listener)."""
    text = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    text = re.sub(r"(?m)^listener .*$", "", text)
    text = re.sub(r"(?m)^log_dest .*$", "", text)
    text = text.replace("/mosquitto/config/", f"{tmp_path}/config/").replace("/mosquitto/data/", f"{tmp_path}/data/")
    (tmp_path / "data").mkdir()
    return text


@dataclass
class Broker:
    server: MosquittoServer
    passwords: dict[str, str]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    passwords = {d: registry.provision_device(d) for d in ("sinter-cems", "steel-meter")}
    write_auth_files(registry, tmp_path / "config", {"ingest": INGEST_PASSWORD})
    registry.close()
    server = start_mosquitto(repo_config(tmp_path), tmp_path)
    yield Broker(server, passwords)
    server.stop()


class Client:
    def __init__(self, broker: Broker, username: str | None, password: str | None) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        if username:
            self.c.username_pw_set(username, password)
        self.result: object = None
        self.done = threading.Event()
        self.received: list[tuple[str, bytes]] = []
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda _c, _u, m: self.received.append((m.topic, m.payload))
        self.subacks = threading.Semaphore(0)
        self.c.on_subscribe = lambda *_: self.subacks.release()
        self.c.connect(broker.server.host, broker.server.port)
        self.c.loop_start()
        assert self.done.wait(10)

    def _on_connect(self, _c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        self.result = reason
        self.done.set()

    def subscribe(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)
        assert self.subacks.acquire(timeout=10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_anonymous_and_wrong_password_are_refused(broker: Broker) -> None:
    for user, password in [(None, None), ("sinter-cems", "wrong"), ("nobody", "x")]:
        client = Client(broker, user, password)
        assert client.result.is_failure, (user, client.result)  # type: ignore[attr-defined]
        client.close()


def test_device_publishes_only_its_own_topics(broker: Broker) -> None:
    ingest = Client(broker, "ingest", INGEST_PASSWORD)
    assert not ingest.result.is_failure  # type: ignore[attr-defined]
    ingest.subscribe("$share/g/smartpark/v1/+/+/telemetry")
    ingest.subscribe("smartpark/v1/+/+/status")
    device = Client(broker, "sinter-cems", broker.passwords["sinter-cems"])
    assert not device.result.is_failure  # type: ignore[attr-defined]
    device.c.publish("smartpark/v1/steel/steel-meter/telemetry", b"forged", qos=1).wait_for_publish(5)
    device.c.publish("smartpark/v1/park-green/sinter-cems/telemetry", b"wrong site", qos=1).wait_for_publish(5)
    device.c.publish("smartpark/v1/steel/sinter-cems/status", b"online", qos=1).wait_for_publish(5)
    device.c.publish("smartpark/v1/steel/sinter-cems/telemetry", b"mine", qos=1).wait_for_publish(5)
    wait_for(lambda: len(ingest.received) >= 2)
    assert ingest.received == [("smartpark/v1/steel/sinter-cems/status", b"online"),
                               ("smartpark/v1/steel/sinter-cems/telemetry", b"mine")]
    device.close()
    ingest.close()


def test_device_cannot_read_others(broker: Broker) -> None:
    spy = Client(broker, "steel-meter", broker.passwords["steel-meter"])
    spy.subscribe("smartpark/v1/#")
    device = Client(broker, "sinter-cems", broker.passwords["sinter-cems"])
    device.c.publish("smartpark/v1/steel/sinter-cems/telemetry", b"private", qos=1).wait_for_publish(5)
    ingest = Client(broker, "ingest", INGEST_PASSWORD)
    ingest.subscribe("smartpark/v1/+/+/telemetry")
    device.c.publish("smartpark/v1/steel/sinter-cems/telemetry", b"barrier", qos=1).wait_for_publish(5)
    wait_for(lambda: ingest.received)
    assert spy.received == []
    for c in (spy, device, ingest):
        c.close()


def test_export_command(tmp_path: Path) -> None:
    env = {"SMARTPARK_DATA_DIR": str(tmp_path), "SMARTPARK_MQTT_URL": "mqtt://ingest:s3cret-pass@broker:1883",
           "PATH": "/usr/bin:/bin"}
    park = tmp_path / "park.yaml"
    park.write_text(PARK_YAML)
    subprocess.run([sys.executable, "-m", "smartpark", "park", "load", str(park)], env=env, check=True,
                   capture_output=True)
    result = subprocess.run([sys.executable, "-m", "smartpark", "broker", "export", str(tmp_path / "conf")],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    acl = (tmp_path / "conf" / "acl").read_text()
    assert "user green-1\ntopic write smartpark/v1/park-green/green-1/telemetry" in acl
    assert "user ingest\ntopic read smartpark/v1/#" in acl
    passwd = (tmp_path / "conf" / "passwd").read_text()
    assert passwd.startswith("ingest:$7$")  # no device is provisioned yet: only the service account
    assert oct((tmp_path / "conf" / "passwd").stat().st_mode & 0o777) == "0o600"
