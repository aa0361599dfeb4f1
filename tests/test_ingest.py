"""The ingest end to end: a real MQTT client publishes, the ingest writes, the store holds it.

Run twice: against real Mosquitto + InfluxDB, and against the embedded broker + SQLite store.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from smartpark.core.catalog import default_catalog
from smartpark.core.mqtt import Endpoint
from smartpark.core.store.base import SeriesQuery
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.ingest.service import IngestService

from factories import Publisher, forget_session, now_ms, park_registry, payload, reading, wait_for
from ingest_pipeline import BACKENDS, Pipeline, ingest_settings, run_pipeline
from servers import free_port

TOPIC = "smartpark/v1/{}/{}/telemetry"


@pytest.fixture(params=BACKENDS)
def pipeline(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pipeline]:
    yield from run_pipeline(request, tmp_path)


def test_documented_reading_is_stored(pipeline: Pipeline) -> None:
    ts = now_ms() - 5_000
    body = {"ts": ts, "seq": 42,
            "metrics": {"so2_mg_m3": 18.2, "nox_mg_m3": 41.0, "pm_mg_m3": 3.1, "o2_pct": 16.4,
                        "flow_nm3_h": 512000},
            "flags": {"nox_mg_m3": "C"}}
    pipeline.publish("steel", "sinter-cems", body)
    pipeline.publish("steel", "steel-meter", reading(ts=ts, power_kw=-12.5, energy_kwh=1e9))
    pipeline.settle(2)
    latest = {(v.device, v.metric): v for v in pipeline.store.latest("steel")}
    nox = latest["sinter-cems", "nox_mg_m3"]
    assert (nox.measurement, nox.site, nox.ts_ms, nox.value, nox.flag) == ("emissions", "steel", ts, 41.0, "C")
    assert latest["sinter-cems", "flow_nm3_h"].value == 512000.0
    assert latest["sinter-cems", "so2_mg_m3"].flag is None
    assert latest["steel-meter", "power_kw"].measurement == "energy"
    assert latest["steel-meter", "energy_kwh"].value == 1e9
    assert len(latest) == 7


@pytest.mark.parametrize("pipeline", ["mosquitto-influx"], indirect=True)
def test_documented_reading_has_tags_fields_and_ms_time_in_influx(pipeline: Pipeline) -> None:
    ts = now_ms() - 1234
    pipeline.publish("steel", "sinter-cems", reading(ts=ts, flags={"o2_pct": "M"}, o2_pct=17.5, so2_mg_m3=3))
    pipeline.settle(1)
    (result,) = pipeline.store.query('SELECT * FROM "emissions"')  # type: ignore[attr-defined]
    (series,) = result["series"]
    row = dict(zip(series["columns"], series["values"][0], strict=True))
    assert row == {"time": ts, "device": "sinter-cems", "site": "steel", "o2_pct": 17.5, "o2_pct_flag": "M",
                   "so2_mg_m3": 3.0}
    tags = pipeline.store.query('SHOW TAG KEYS FROM "emissions"')[0]["series"][0]["values"]  # type: ignore[attr-defined]
    assert sorted(t[0] for t in tags) == ["device", "site"]


def test_batch_stores_good_readings_and_dead_letters_bad(pipeline: Pipeline) -> None:
    t0 = (now_ms() - 60_000) // 1000 * 1000  # windows are aligned to the epoch
    batch = {"readings": [reading(ts=t0 + i * 1000, seq=i, power_kw=float(i)) for i in range(5)]}
    batch["readings"][2] = reading(ts=t0 + 2000, power_kw=float("nan"))
    batch["readings"][3] = reading(ts=t0 + 3000, power_kw=1e7)
    pipeline.publish("steel", "steel-meter", payload(batch))  # json.dumps writes a NaN literal
    pipeline.settle(1)
    (series,) = pipeline.store.series(SeriesQuery("energy", "power_kw", t0, t0 + 10_000, 1000, "last",
                                                  site="steel"))
    assert series.points == [(t0, 0.0), (t0 + 1000, 1.0), (t0 + 4000, 4.0)]
    assert pipeline.service.dead_letters.counts() == {"non_finite": 1, "out_of_range": 1}
    letters = {d.item: d for d in pipeline.service.dead_letters.recent()}
    assert letters[2].reason == "non_finite"
    assert letters[3].topic == TOPIC.format("steel", "steel-meter")


def test_every_rejection_reason_is_counted_and_dead_lettered(pipeline: Pipeline) -> None:
    now = now_ms()
    bad: list[tuple[str, str, bytes]] = [
        ("steel", "steel-meter", b"{oops"),
        ("steel", "steel-meter", payload({"metrics": {}})),
        ("steel", "steel-meter", payload(reading(ts=now, furnace_temp=1))),
        ("steel", "steel-meter", b'{"metrics": {"power_kw": Infinity}}'),
        ("steel", "steel-meter", payload(reading(ts=now, o2_pct=30))),
        ("steel", "no-such-device", payload(reading(ts=now, power_kw=1))),
        ("park-green", "steel-meter", payload(reading(ts=now, power_kw=1))),  # bound to "steel"
        ("steel", "steel-meter", b'{"metrics": {"power_kw": 1}, "x": "' + b"y" * 70_000 + b'"}'),
        ("steel", "steel-meter", payload(reading(ts=now + 3_600_000, power_kw=1))),
    ]
    for site, device, body in bad:
        pipeline.publish(site, device, body)
    pipeline.publish("steel", "steel-meter", reading(ts=now, power_kw=7.0))  # good traffic still flows
    pipeline.settle(len(bad) + 1)
    expected = {"bad_json": 1, "bad_schema": 1, "unknown_metric": 1, "non_finite": 1, "out_of_range": 1,
                "unknown_device": 1, "topic_mismatch": 1, "too_large": 1, "ts_out_of_window": 1}
    assert pipeline.service.stats.snapshot()["rejected"] == expected
    assert pipeline.service.dead_letters.counts() == expected
    big = next(d for d in pipeline.service.dead_letters.recent() if d.reason == "too_large")
    assert len(big.payload) == 4096
    latest = {(v.device, v.metric): v.value for v in pipeline.store.latest("steel")}
    assert latest["steel-meter", "power_kw"] == 7.0


def test_status_topic_updates_the_registry(pipeline: Pipeline) -> None:
    pipeline.publish("park-green", "green-1", {"state": "online", "ts": now_ms()}, kind="status")
    pipeline.publish("park-green", "green-1", {"state": "sleeping"}, kind="status")
    pipeline.settle(2)
    (device,) = pipeline.registry.devices("park-green")
    assert device.online is True
    assert device.last_seen is not None
    assert pipeline.service.dead_letters.counts() == {"bad_schema": 1}


def test_own_figures_reach_prometheus_and_the_platform_measurement(pipeline: Pipeline) -> None:
    pipeline.publish("steel", "steel-meter", reading(ts=now_ms(), power_kw=1.0))
    pipeline.publish("steel", "steel-meter", b"{broken")
    pipeline.settle(2)
    text = generate_latest(pipeline.service.stats.registry).decode()
    assert "smartpark_ingest_messages_committed_total 2.0" in text
    assert 'smartpark_ingest_rejected_total{reason="bad_json"} 1.0' in text

    def platform_rows() -> list[Any]:
        found = pipeline.store.series(SeriesQuery("platform", "messages_committed_total", now_ms() - 60_000,
                                                  now_ms() + 1000, 60_000, "max"))
        return [v for s in found for _, v in s.points if v >= 2]

    wait_for(platform_rows, timeout=10)


def _dead_letter_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("dead-letters.sqlite*"))


def test_a_bad_batch_is_dead_lettered_once_not_once_per_reading(pipeline: Pipeline, tmp_path: Path) -> None:
    """1,000 rejected readings in one message: 1,000 letters, one stored payload (it was 1,000 x 4 KiB)."""
    before = _dead_letter_bytes(tmp_path)
    now = now_ms()
    sent = 0
    for m in range(10):
        body = payload({"readings": [reading(ts=now - m * 1000 - i, power_kw=1e9) for i in range(1000)]})
        sent += len(body)
        pipeline.publish("steel", "steel-meter", body)
    pipeline.settle(10)
    assert pipeline.service.dead_letters.counts() == {"out_of_range": 10_000}  # every rejection kept
    grown = _dead_letter_bytes(tmp_path) - before
    # 0.62 MB of messages grew the file by 50 MB before; now the payloads once plus a small row per reading.
    assert grown < 2 * sent + (4 << 20), f"{sent:,} bytes of bad messages grew the dead letters by {grown:,}"
    letter = pipeline.service.dead_letters.recent(1)[0]
    assert (letter.reason, letter.item, len(letter.payload)) == ("out_of_range", 999, 4096)


def test_dead_letters_stay_under_their_size_cap_and_pruning_is_counted(tmp_path: Path) -> None:
    """The embedded pipeline with a 1 MiB cap: 6 MiB of rejected messages leave a file near the cap."""
    from smartpark.broker import EmbeddedBroker

    registry = park_registry(tmp_path)
    settings = ingest_settings(tmp_path).model_copy(update={"dead_letters_max_bytes": 1 << 20})
    password = secrets.token_hex(8)
    host, port = "127.0.0.1", free_port()
    broker = EmbeddedBroker(registry, host, port, {"smartpark-ingest": password, "smartpark-tester": password})
    broker.start()
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    service = IngestService(settings, store, registry, default_catalog(),
                            endpoint=Endpoint(host, port, "smartpark-ingest", password), mqtt5=False)
    try:
        service.start()
        with Publisher(host, port, username="smartpark-tester", password=password) as pub:
            for i in range(1500):  # distinct 4 KiB payloads: nothing to share
                pub.publish("smartpark/v1/steel/steel-meter/telemetry", b"{" + str(i).encode() + b"x" * 4100)
        wait_for(lambda: service.stats.counters["messages_committed"] >= 1500, timeout=120)
        size = _dead_letter_bytes(tmp_path)
        pruned = service.stats.counters["dead_letters_pruned"]
        metrics = generate_latest(service.stats.registry).decode()
    finally:
        service.stop()
        broker.stop()
        registry.close()
    assert size < 2 << 20, f"dead letters grew to {size:,} bytes with a 1 MiB cap"  # with the WAL
    assert pruned > 1000
    assert f"smartpark_ingest_dead_letters_pruned_total {float(pruned)}" in metrics


def test_the_end_of_a_burst_is_stored_without_waiting_out_the_batch_age(pipeline: Pipeline, tmp_path: Path) -> None:
    """Devices that publish on the same tick make bursts: once the burst is over (no message for
    SMARTPARK_INGEST_BATCH_QUIET_S) its batch is written, not after the batch age (here 30 s: it used to be)."""
    settings = ingest_settings(tmp_path / "slow").model_copy(update={"ingest_batch_age_s": 30.0,
                                                              "ingest_client_id": "smartpark-ingest-slow"})
    pipeline.service.stop()
    endpoint = pipeline.service.source.endpoint
    creds = {"mqtt5": pipeline.kind != "embedded"}
    slow = IngestService(settings, pipeline.store, pipeline.registry, default_catalog(), endpoint=endpoint, **creds)
    slow.start()
    try:
        ts = now_ms() - 5_000
        for i in range(5):
            pipeline.publish("steel", "steel-meter", reading(ts=ts + i, power_kw=float(i)))
        wait_for(lambda: slow.stats.counters["messages_committed"] >= 5, timeout=15)  # well before 30 s
        assert {v.value for v in pipeline.store.latest("steel") if v.metric == "power_kw"} == {4.0}
    finally:
        slow.stop()
        if pipeline.kind != "embedded":
            forget_session(pipeline.host, pipeline.port, settings.ingest_client_id)
