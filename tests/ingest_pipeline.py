"""The ingest end to end for a test: a registry of the test park, the ingest service, a publisher, on real
Mosquitto + InfluxDB or on the embedded broker + SQLite store (test_ingest.py and test_history.py run both)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.mqtt import Endpoint
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.ingest.service import IngestService

from factories import Publisher, forget_session, park_registry, wait_for
from servers import free_port

BACKENDS = ["mosquitto-influx", "embedded"]  # the params of a `pipeline` fixture that calls run_pipeline


@dataclass
class Pipeline:
    kind: str
    host: str
    port: int
    store: TimeSeriesStore
    registry: Registry
    service: IngestService
    publisher: Publisher

    def publish(self, site: str, device: str, body: bytes | dict[str, Any], kind: str = "telemetry") -> None:
        self.publisher.publish(f"smartpark/v1/{site}/{device}/{kind}", body)

    def settle(self, messages: int) -> None:
        """Wait until the ingest has received and committed ``messages`` messages."""
        wait_for(lambda: self.service.stats.counters["messages_committed"] >= messages)


def ingest_settings(tmp_path: Path) -> Settings:
    """The default store-and-forward window (a retention of 30 days, longer than it), quick batches and stats."""
    return Settings(_env_file=None, data_dir=tmp_path, ingest_client_id=f"smartpark-ingest-{uuid.uuid4().hex[:8]}",
                    ingest_batch_age_s=0.1, retention_days=30, ingest_stats_interval_s=0.3)  # type: ignore[call-arg]


def run_pipeline(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pipeline]:
    """The body of a `pipeline` fixture parametrized over BACKENDS: yields the running pipeline, then stops it."""
    registry = park_registry(tmp_path)
    settings = ingest_settings(tmp_path)
    if request.param == "embedded":
        from smartpark.broker import EmbeddedBroker

        ingest_pw, tester_pw = secrets.token_hex(8), secrets.token_hex(8)
        host, port = "127.0.0.1", free_port()
        broker = EmbeddedBroker(registry, host, port, {"smartpark-ingest": ingest_pw, "smartpark-tester": tester_pw})
        broker.start()
        request.addfinalizer(broker.stop)
        store: TimeSeriesStore = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
        store.init()
        creds: dict[str, Any] = {"username": "smartpark-ingest", "password": ingest_pw, "mqtt5": False}
        pub_creds: dict[str, Any] = {"username": "smartpark-tester", "password": tester_pw}
    else:
        server = request.getfixturevalue("mosquitto")
        store = request.getfixturevalue("influx_store")
        host, port = server.host, server.port
        creds, pub_creds = {"username": None, "password": None, "mqtt5": True}, {"mqtt5": True}
    endpoint = Endpoint(host, port, creds.pop("username"), creds.pop("password"))
    service = IngestService(settings, store, registry, default_catalog(), endpoint=endpoint, **creds)
    service.start()
    publisher = Publisher(host, port, **pub_creds)
    yield Pipeline(request.param, host, port, store, registry, service, publisher)
    publisher.close()
    service.stop()
    registry.close()
    if request.param != "embedded":
        forget_session(host, port, settings.ingest_client_id)
