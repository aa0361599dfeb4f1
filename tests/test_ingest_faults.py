"""The ingest under faults, against real Mosquitto and InfluxDB, counting every reading.

Every reading has a unique (device, ts), so the count stored in InfluxDB is exact: below N is loss, and a
redelivered reading overwrites itself instead of doubling.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.influx import InfluxStore
from smartpark.ingest.service import IngestService

from factories import (
    ServiceProcess,
    endpoint_of,
    forget_session,
    load_messages,
    load_park_yaml,
    now_ms,
    publish_many,
    wait_for,
)
from servers import InfluxServer, MosquittoServer, free_port, start_influxd

SITE = "load"


def stored(store: InfluxStore) -> int:
    result = store.query('SELECT count("power_kw") FROM "energy"')[0]
    return int(result["series"][0]["values"][0][1]) if result.get("series") else 0


@pytest.fixture
def registry_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    registry = Registry(url)
    registry.init()
    registry.load_park(parse_park_file(load_park_yaml(SITE, 200)))
    registry.close()
    return url


@pytest.fixture
def ingest_process(tmp_path: Path, mosquitto: MosquittoServer, influx_store: InfluxStore,
                   registry_url: str) -> Iterator[ServiceProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")}
    env |= {"SMARTPARK_MQTT_URL": f"mqtt://{mosquitto.host}:{mosquitto.port}",
            "SMARTPARK_INFLUX_URL": influx_store.url, "SMARTPARK_INFLUX_DB": influx_store.database,
            "SMARTPARK_DATA_DIR": str(tmp_path / "data"), "SMARTPARK_DATABASE_URL": registry_url,
            "SMARTPARK_INGEST_CLIENT_ID": f"smartpark-ingest-{uuid.uuid4().hex[:8]}",
            "SMARTPARK_INGEST_METRICS_PORT": str(free_port())}
    proc = ServiceProcess("ingest", "ingest subscribed", tmp_path, env)
    proc.start()
    yield proc
    if proc.running():
        proc.kill()
    forget_session(mosquitto.host, mosquitto.port, env["SMARTPARK_INGEST_CLIENT_ID"])


def test_sigkill_three_times_during_100k_messages_loses_and_doubles_nothing(
        ingest_process: ServiceProcess, mosquitto: MosquittoServer, influx_store: InfluxStore) -> None:
    messages = load_messages(SITE, 200, 500, now_ms() - 3600_000)
    publisher = threading.Thread(target=publish_many, args=(mosquitto.host, mosquitto.port, messages))
    publisher.start()
    for fraction in (0.2, 0.45, 0.7):  # kill at points of real progress, not at guessed times
        wait_for(lambda f=fraction: stored(influx_store) >= f * len(messages), timeout=120, every=0.2)
        ingest_process.kill()
        ingest_process.start()
    publisher.join(timeout=300)
    wait_for(lambda: stored(influx_store) >= len(messages), timeout=120, every=0.5)
    time.sleep(1.5)  # anything still redelivered would show as a count above N
    assert stored(influx_store) == len(messages)
    scrape = httpx.get(f"http://127.0.0.1:{ingest_process.env['SMARTPARK_INGEST_METRICS_PORT']}/metrics").text
    assert re.search(r"^smartpark_ingest_messages_committed_total [1-9]", scrape, re.MULTILINE), scrape
    assert ingest_process.stop() == 0
    assert ingest_process.runs == 4


def _service(tmp_path: Path, mosquitto: MosquittoServer, store: InfluxStore, registry: Registry,
             client_id: str) -> IngestService:
    """An in-process ingest; its broker session is deleted at the end of the test."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", ingest_client_id=client_id,  # type: ignore[call-arg]
                        ingest_batch_age_s=0.2, influx_timeout_s=2)
    service = IngestService(settings, store, registry, default_catalog(), endpoint=endpoint_of(mosquitto), mqtt5=True)
    service.start()
    return service


@pytest.fixture
def service(tmp_path: Path, mosquitto: MosquittoServer, influx_store: InfluxStore,
            registry_url: str) -> Iterator[IngestService]:
    """`_service` on the shared InfluxDB and the load park, stopped and cleaned up after the test."""
    service = _service(tmp_path, mosquitto, influx_store, Registry(registry_url),
                       f"smartpark-ingest-{uuid.uuid4().hex[:8]}")
    yield service
    service.stop()
    forget_session(mosquitto.host, mosquitto.port, service.settings.ingest_client_id)
    service.registry.close()


@pytest.fixture
def own_influxd(tmp_path: Path) -> Iterator[InfluxServer]:
    server = start_influxd(tmp_path / "influxd")
    yield server
    server.stop()


def _store_on(server: InfluxServer) -> InfluxStore:
    store = InfluxStore(server.url, "faults", default_catalog(), timeout_s=2)
    store.init()
    return store


@pytest.mark.parametrize("outage_s", [3, pytest.param(60, marks=pytest.mark.slow)])
def test_influxdb_down_mid_run_spools_and_replays(
        tmp_path: Path, mosquitto: MosquittoServer, own_influxd: InfluxServer, registry_url: str, outage_s: int
) -> None:
    store, registry = _store_on(own_influxd), Registry(registry_url)
    service = _service(tmp_path, mosquitto, store, registry, f"smartpark-ingest-{uuid.uuid4().hex[:8]}")
    messages = load_messages(SITE, 200, 100, now_ms() - 3600_000)
    third = len(messages) // 3
    publish_many(mosquitto.host, mosquitto.port, messages[:third])
    wait_for(lambda: stored(store) == third, timeout=60)
    own_influxd.stop()
    outage_started = time.monotonic()
    publish_many(mosquitto.host, mosquitto.port, messages[third:2 * third])
    # During the outage every message is acked, because it is fsynced in the spool.
    wait_for(lambda: service.stats.counters["messages_committed"] >= 2 * third, timeout=60)
    assert service.stats.counters["points_spooled"] >= third
    time.sleep(max(0.0, outage_s - (time.monotonic() - outage_started)))
    own_influxd.start()
    publish_many(mosquitto.host, mosquitto.port, messages[2 * third:])
    wait_for(lambda: stored(store) >= len(messages), timeout=120, every=0.5)
    assert stored(store) == len(messages)
    assert service.stats.counters["points_replayed"] >= third
    wait_for(lambda: not service.spool, timeout=30)
    service.stop()
    forget_session(mosquitto.host, mosquitto.port, service.settings.ingest_client_id)
    registry.close()
    store.close()


def test_restart_while_the_spool_holds_data_replays_it(
        tmp_path: Path, mosquitto: MosquittoServer, own_influxd: InfluxServer, registry_url: str) -> None:
    store, registry = _store_on(own_influxd), Registry(registry_url)
    client_id = f"smartpark-ingest-{uuid.uuid4().hex[:8]}"
    own_influxd.stop()
    service = _service(tmp_path, mosquitto, store, registry, client_id)
    messages = load_messages(SITE, 200, 20, now_ms() - 3600_000)
    publish_many(mosquitto.host, mosquitto.port, messages)
    wait_for(lambda: service.stats.counters["messages_committed"] >= len(messages), timeout=60)
    service.stop()
    assert list((tmp_path / "data" / "spool").glob("seg-*.log")), "the spool should hold the outage's data"
    own_influxd.start()
    restarted = _service(tmp_path, mosquitto, store, registry, client_id)
    wait_for(lambda: stored(store) >= len(messages), timeout=60, every=0.5)
    assert stored(store) == len(messages)
    wait_for(lambda: not restarted.spool, timeout=30)
    assert restarted.stats.counters["messages_received"] == 0  # it all came from the spool, nothing redelivered
    restarted.stop()
    forget_session(mosquitto.host, mosquitto.port, client_id)
    registry.close()
    store.close()


MALFORMED: list[tuple[str, str, bytes, str]] = [
    # (site, device, payload, reason); device m000..m199 belong to site "load"
    ("load", "m001", b"{oops", "bad_json"),
    ("load", "m001", b"\xff\xfe\x00\x01", "bad_json"),
    ("load", "m001", b"", "bad_json"),
    ("load", "m001", b"[1, 2, 3]", "bad_schema"),
    ("load", "m001", b'"just a string"', "bad_schema"),
    ("load", "m001", b'{"metrics": {"power_kw": NaN}}', "non_finite"),
    ("load", "m001", b'{"metrics": {"power_kw": Infinity}}', "non_finite"),
    ("load", "m001", b'{"metrics": {"power_kw": 1e999}}', "non_finite"),
    ("load", "m001", b'{"metrics": {"power_kw": "12.5"}}', "bad_schema"),
    ("load", "m001", b'{"metrics": {"power_kw": {"a": [1, {"b": [null]}]}}}', "bad_schema"),
    ("load", "m001", b'{"metrics": {"power_kw": 1}, "pad": "' + b"x" * 70_000 + b'"}', "too_large"),
    ("load", "m001", b'{"metrics": {"vibration_mm_s": 1}}', "unknown_metric"),
    ("load", "m001", b'{"metrics": {"o2_pct": 30}}', "out_of_range"),
    ("other-site", "m001", b'{"metrics": {"power_kw": 1}}', "topic_mismatch"),
    ("load", "ghost", b'{"metrics": {"power_kw": 1}}', "unknown_device"),
    ("load", "m001", b'{"ts": 99999999999999, "metrics": {"power_kw": 1}}', "ts_out_of_window"),
    ("load", "m001", b'{"ts": 1795000000, "metrics": {"power_kw": 1}}', "ts_out_of_window"),  # seconds
    ("load", "m001", b'{"readings": []}', "bad_schema"),
    ("load", "m001", b'{"readings": [' + b",".join([b'{"metrics": {"power_kw": 1}}'] * 1001) + b"]}", "too_large"),
    ("load", "m001", b'{"metrics": {"power_kw": 1}, "flags": {"power_kw": "X"}}', "bad_schema"),
    ("load", "m001", b'{"metrics": {"power_kw": true}}', "bad_schema"),
    ("load", "m001", b'{"metrics": {"\xff": 1}}', "bad_json"),  # invalid UTF-8 inside a string
    ("load", "m001", b'{"readings": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "bad_json"),  # deep nesting
    ("load", "m001", b'{"x": NaN, "y": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "bad_json"),
]


def test_twenty_kinds_of_malformed_input_interleaved_with_good_traffic(
        service: IngestService, influx_store: InfluxStore, mosquitto: MosquittoServer) -> None:
    good = load_messages(SITE, 200, 10, now_ms() - 3600_000)
    stream: list[tuple[str, bytes]] = []
    for i, (site, device, body, _) in enumerate(MALFORMED):
        stream += good[i * 90:(i + 1) * 90]
        stream.append((f"smartpark/v1/{site}/{device}/telemetry", body))
    stream += good[len(MALFORMED) * 90:]
    publish_many(mosquitto.host, mosquitto.port, stream)
    wait_for(lambda: service.stats.counters["messages_committed"] >= len(stream), timeout=60)
    wait_for(lambda: stored(influx_store) >= len(good), timeout=30)
    assert stored(influx_store) == len(good)
    expected: dict[str, int] = {}
    for *_, reason in MALFORMED:
        expected[reason] = expected.get(reason, 0) + 1
    assert service.stats.snapshot()["rejected"] == expected
    assert service.dead_letters.counts() == expected
    assert len(MALFORMED) >= 20


def test_two_ingests_on_a_shared_subscription_split_the_stream(
        tmp_path: Path, mosquitto: MosquittoServer, influx_store: InfluxStore, registry_url: str) -> None:
    registry = Registry(registry_url)
    services = []
    group = f"grp-{uuid.uuid4().hex[:6]}"  # offline members of a group still get their share queued
    for i in range(2):
        settings = Settings(_env_file=None, data_dir=tmp_path / f"data-{i}", ingest_shared=group,  # type: ignore[call-arg]
                            ingest_client_id=f"smartpark-ingest-{i}-{uuid.uuid4().hex[:8]}", ingest_batch_age_s=0.2)
        service = IngestService(settings, influx_store, registry, default_catalog(), endpoint=endpoint_of(mosquitto),
                                mqtt5=True)
        service.start()
        services.append(service)
    messages = load_messages(SITE, 200, 100, now_ms() - 3600_000)
    publish_many(mosquitto.host, mosquitto.port, messages)
    wait_for(lambda: stored(influx_store) >= len(messages), timeout=60)
    # the counters are published after each batch's write: wait for them rather than race them
    wait_for(lambda: sum(s.stats.counters["messages_committed"] for s in services) >= len(messages), timeout=30)
    received = [s.stats.counters["messages_received"] for s in services]
    assert sum(received) == len(messages), received  # each message went to exactly one ingest
    assert min(received) > len(messages) // 10, received  # and both took a real share
    assert stored(influx_store) == len(messages)
    for s in services:
        s.stop()
        forget_session(mosquitto.host, mosquitto.port, s.settings.ingest_client_id)
    registry.close()


def test_points_the_store_refuses_are_dead_lettered_and_the_rest_stored(
        service: IngestService, influx_store: InfluxStore, mosquitto: MosquittoServer) -> None:
    t0 = now_ms() - 3600_000
    # power_kw already holds a string in this shard: InfluxDB refuses every float power_kw (a type conflict)
    influx_store.write([Point("energy", "load", "m199", t0 - 1000, {"power_kw": "oops"})])
    messages = [(f"smartpark/v1/load/m{d:03d}/telemetry",
                 b'{"ts": %d, "metrics": {"power_kw": 1.5, "o2_pct": 18.0}}' % (t0 + d)) for d in range(40)]
    publish_many(mosquitto.host, mosquitto.port, messages)
    wait_for(lambda: service.stats.counters["messages_committed"] >= len(messages), timeout=60)
    o2 = influx_store.query('SELECT count("o2_pct") FROM "emissions"')[0]["series"][0]["values"][0][1]
    assert o2 == 40  # the emissions half of every reading was stored
    assert service.dead_letters.counts() == {"bad_schema": 40}  # the energy half, refused, dead-lettered
    assert all("store refused" in d.detail for d in service.dead_letters.recent())


def test_writer_survives_a_failing_metadata_database(
        service: IngestService, influx_store: InfluxStore, mosquitto: MosquittoServer) -> None:
    registry = service.registry
    with registry.engine.begin() as conn:  # the metadata DB breaks under the running ingest
        conn.execute(text("ALTER TABLE devices RENAME TO devices_away"))
    ts = now_ms() - 60_000
    publish_many(mosquitto.host, mosquitto.port, [
        ("smartpark/v1/load/m007/status", b'{"state": "online"}'),
        ("smartpark/v1/load/m007/telemetry", b'{"ts": %d, "metrics": {"power_kw": 7.5}}' % ts),
        ("smartpark/v1/load/m007/telemetry", b"{not json")])
    wait_for(lambda: service.stats.counters["writer_errors"] >= 2, timeout=30)
    assert service.stats.counters["messages_committed"] == 0  # nothing acked while the commit fails
    with registry.engine.begin() as conn:
        conn.execute(text("ALTER TABLE devices_away RENAME TO devices"))
    wait_for(lambda: service.stats.counters["messages_committed"] >= 3, timeout=60)
    assert stored(influx_store) == 1
    assert service.dead_letters.counts() == {"bad_json": 1}  # recorded once, however often the commit ran
    (device,) = [d for d in registry.devices("load") if d.id == "m007"]
    assert device.online is True


class _ScriptedStore:
    """The real store, with chosen write calls (1-based) failing with a chosen exception after an optional
    hold: the faults the writer pipeline must survive without losing, wedging or reordering."""

    def __init__(self, store: InfluxStore, fail: dict[int, BaseException], hold: int = 0) -> None:
        self.store, self.fail, self.hold = store, fail, hold
        self.calls, self.release, self._lock = 0, threading.Event(), threading.Lock()

    def write(self, points: list[Point]) -> None:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call == self.hold:
            assert self.release.wait(30)
        if call in self.fail:
            raise self.fail[call]
        self.store.write(points)

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


def test_a_slow_write_holds_back_the_acks_of_later_batches(
        service: IngestService, influx_store: InfluxStore, mosquitto: MosquittoServer) -> None:
    """Two batches are in the store's hands at once; the second must not be acked before the first."""
    slow = _ScriptedStore(influx_store, {}, hold=1)  # its first write held until released
    service.store = slow  # type: ignore[assignment]
    acked: list[list[tuple[int, int]]] = []
    ack = service.source.ack
    service.source.ack = lambda acks: (acked.append(list(acks)), ack(acks))[1]  # type: ignore[method-assign]
    t0 = now_ms() - 3600_000
    publish_many(mosquitto.host, mosquitto.port, [("smartpark/v1/load/m001/telemetry",
                                                   b'{"ts": %d, "metrics": {"power_kw": 1.0}}' % t0)])
    wait_for(lambda: slow.calls >= 1)  # batch 1 is being written, slowly
    publish_many(mosquitto.host, mosquitto.port, [("smartpark/v1/load/m002/telemetry",
                                                   b'{"ts": %d, "metrics": {"power_kw": 2.0}}' % t0)])
    wait_for(lambda: stored(influx_store) == 1)  # batch 2 is in InfluxDB before batch 1...
    time.sleep(0.5)
    assert acked == []  # ...but not acked
    slow.release.set()
    wait_for(lambda: service.stats.counters["messages_committed"] >= 2)
    assert stored(influx_store) == 2
    order = [mid for batch in acked for _, mid in batch]
    assert len(order) == 2
    assert order[0] < order[1]  # receive order


def test_a_write_failing_with_an_unexpected_error_is_written_again(
        service: IngestService, influx_store: InfluxStore, mosquitto: MosquittoServer) -> None:
    service.store = _ScriptedStore(influx_store, {1: RuntimeError("a driver bug")})  # type: ignore[assignment]
    t0 = now_ms() - 3600_000
    body = b'{"ts": %d, "metrics": {"power_kw": 1.0}}' % t0
    publish_many(mosquitto.host, mosquitto.port, [(f"smartpark/v1/load/m{d:03d}/telemetry", body) for d in range(50)])
    wait_for(lambda: service.stats.counters["messages_committed"] >= 50, timeout=30)
    assert stored(influx_store) == 50


def test_a_batch_written_while_an_earlier_one_was_spooled_keeps_the_newer_value(
        service: IngestService, influx_store: InfluxStore, mosquitto: MosquittoServer) -> None:
    """Batch 1 (value 1.0) fails and is spooled while batch 2 (a correction: same device and time, value
    2.0) is already in the store: after the replay the store must hold 2.0, not batch 1's older value."""
    from smartpark.core.errors import StoreUnavailable

    down = StoreUnavailable("influxdb down (injected)")
    scripted = _ScriptedStore(influx_store, {1: down, 3: down}, hold=1)  # 3: batch 1's synchronous retry
    service.store = scripted  # type: ignore[assignment]
    t0 = now_ms() - 3600_000
    topic, body = "smartpark/v1/load/m001/telemetry", b'{"ts": %d, "metrics": {"power_kw": %s}}'
    publish_many(mosquitto.host, mosquitto.port, [(topic, body % (t0, b"1.0"))])
    wait_for(lambda: scripted.calls >= 1)  # batch 1 is being written
    publish_many(mosquitto.host, mosquitto.port, [(topic, body % (t0, b"2.0"))])
    wait_for(lambda: scripted.calls >= 2)  # batch 2 written meanwhile
    scripted.release.set()
    wait_for(lambda: service.stats.counters["messages_committed"] >= 2, timeout=30)
    wait_for(lambda: not service.spool, timeout=30)  # replayed
    (value,) = [v for v in influx_store.latest("load") if v.device == "m001"]
    assert value.value == 2.0
