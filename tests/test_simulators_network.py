"""Simulators against real servers: a 5G outage through Mosquitto and the real ingest into InfluxDB, compared
with the ground truth; a backfill straight into InfluxDB; the load generator's QoS-1 count."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.registry import AuditTrail, ParkFile, Registry, parse_park_file, read_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.influx import InfluxStore, quote_ident
from smartpark.ingest.service import IngestService
from smartpark.platform import demo_park_path
from smartpark.simulators import LiveSimulator
from smartpark.simulators.backfill import backfill
from smartpark.simulators.loadgen import run_load
from smartpark.simulators.runner import PublishRun
from smartpark.simulators.scenario import parse_scenario
from smartpark.simulators.timeline import Frame, Timeline
from smartpark.simulators.truth import TruthWriter, read_truth

from factories import endpoint_of, forget_session, now_ms, wait_for
from servers import MosquittoServer

PARK = """
park: {id: outage-park, name: Outage park}
sites:
  - id: plant
    name: Plant
    enterprise: Plant Co.
    industry: automotive
    area_m2: 200000
    devices:
      - {id: plant-gateway, kind: gateway}
      - {id: plant-main-substation, kind: energy_meter}
      - {id: plant-meter-01, kind: energy_meter}
      - {id: plant-meter-02, kind: energy_meter}
      - {id: boiler-cems, kind: cems, source_type: gas_boiler}
      - {id: plant-green-01, kind: greening}
  - id: depot
    name: Depot
    enterprise: Depot Co.
    industry: logistics
    area_m2: 80000
    devices:
      - {id: depot-meter-01, kind: energy_meter}
"""
OUTAGE = """
seed: 9
network: {duplicate_rate: 0.05, reorder_rate: 0.05}
events:
  - {kind: outage, device: plant-gateway, start_min: 30, duration_min: 40}
  - {kind: flag, device: boiler-cems, flag: C, start_min: 40, duration_min: 5}
"""
MEASUREMENTS = ("energy", "emissions", "greening")


def stored_rows(store: InfluxStore) -> dict[tuple[str, int], dict[str, object]]:
    """Every stored row as (device, time) -> fields (nulls dropped)."""
    rows: dict[tuple[str, int], dict[str, object]] = {}
    for m in MEASUREMENTS:
        # one series per device: InfluxDB's max-row-limit applies per series
        for result in store.query(f'SELECT * FROM {quote_ident(m)} GROUP BY "device"'):  # noqa: S608 (quoted)
            for series in result.get("series", []):
                cols, device = series["columns"], series["tags"]["device"]
                for values in series["values"]:
                    row = {c: v for c, v in zip(cols, values, strict=True) if v is not None}
                    row.pop("site", None)
                    rows[(device, int(row.pop("time")))] = row
    return rows


def assert_matches_truth(rows: dict[tuple[str, int], dict[str, object]], truth: list[dict]) -> None:
    assert len(rows) == len(truth)
    for r in truth:
        row = rows[(r["device"], r["sent_ts"])]
        assert {k: row[k] for k in r["metrics"]} == pytest.approx(r["metrics"], rel=1e-9, abs=1e-4)
        assert {k[: -len("_flag")]: v for k, v in row.items() if k.endswith("_flag")} == r["flags"]


@pytest.fixture
def outage_park(tmp_path: Path) -> Iterator[tuple[ParkFile, Registry]]:
    park = parse_park_file(PARK)
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(park)
    yield park, registry
    registry.close()


@pytest.mark.mosquitto
@pytest.mark.influx
def test_outage_readings_all_arrive_after_reconnect_none_lost_none_doubled(
        tmp_path: Path, mosquitto: MosquittoServer, influx_store: InfluxStore,
        outage_park: tuple[ParkFile, Registry]) -> None:
    park, registry = outage_park
    client_id = f"smartpark-ingest-{uuid.uuid4().hex[:8]}"
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", ingest_client_id=client_id,  # type: ignore[call-arg]
                        ingest_batch_age_s=0.2)
    ingest = IngestService(settings, influx_store, registry, default_catalog(), endpoint=endpoint_of(mosquitto),
                           mqtt5=True)
    ingest.start()
    try:
        start = (now_ms() - 3 * 3_600_000) // 60_000 * 60_000
        truth_path = tmp_path / "truth.jsonl"
        with TruthWriter(truth_path) as truth:
            run = PublishRun(park, parse_scenario(OUTAGE), endpoint_of(mosquitto), start_ms=start,
                             end_ms=start + 2 * 3_600_000, speed=0, truth=truth)
            stats = run.run()
        records = list(read_truth(truth_path))
        generated = [r for r in records if r["type"] == "reading"]
        assert stats.readings == len(generated) == 6 * 120
        wait_for(lambda: ingest.stats.counters["readings_stored"] >= stats.sent, timeout=60)
        time.sleep(0.5)  # anything sent twice would show as more readings stored than sent
        assert ingest.stats.counters["readings_stored"] == stats.sent
        assert_matches_truth(stored_rows(influx_store), generated)
        # duplicates and reordered readings are looked up, and none of them is taken for a rewrite
        assert ingest.stats.counters["late_points_checked"] > 0
        assert AuditTrail(registry.engine).rewrites()[1] == 0
        t0, t1 = start + 30 * 60_000, start + 70 * 60_000
        during = [r for r in generated if t0 <= r["ts"] < t1 and r["site"] == "plant"]
        flushed = [r for r in records if r["type"] == "event" and r["kind"] == "flush"]
        assert sum(f["readings"] for f in flushed) == len(during) == 5 * 40
        assert {f["at"] for f in flushed} == {t1}
        assert [r["kind"] for r in records if r["type"] == "event" and r["kind"].startswith("link_")].count(
            "link_down") == 5
    finally:
        ingest.stop()
        forget_session(mosquitto.host, mosquitto.port, client_id)


@pytest.mark.influx
def test_backfill_writes_what_it_generated(tmp_path: Path, influx_store: InfluxStore) -> None:
    park = read_park_file(demo_park_path())
    scenario = parse_scenario("seed: 2\nevents:\n  - {kind: flag, device: sinter-1-cems, flag: C, start_min: 60, "
                              "duration_min: 30}\n  - {kind: clock_skew, device: recycling-meter-01, skew_s: -30}\n")
    start = (now_ms() - 86_400_000) // 60_000 * 60_000
    truth_path = tmp_path / "truth.jsonl"
    with TruthWriter(truth_path) as truth:
        def record(frame: Frame) -> None:
            for g in frame.readings():
                truth.reading(g)

        result = backfill(influx_store, Timeline(park, scenario, start), start + 3 * 3_600_000, default_catalog(),
                          on_frame=record, chunk=50)
    generated = [r for r in read_truth(truth_path) if r["type"] == "reading"]
    assert result.readings == len(generated) == 203 * 180
    assert sum(bool(r["flags"]) for r in generated) == 30
    assert_matches_truth(stored_rows(influx_store), generated)


@pytest.mark.mosquitto
def test_load_generator_counts_every_acknowledged_message(mosquitto: MosquittoServer) -> None:
    devices = [("load", f"m{d:03d}") for d in range(50)]
    result = run_load(endpoint_of(mosquitto), devices, 20_000, processes=2, connections=2, window=500)
    assert result.messages == 20_000
    assert result.rate > 0


@pytest.mark.mosquitto
def test_live_simulator_plays_a_scenario(mosquitto: MosquittoServer, outage_park: tuple[ParkFile, Registry]) -> None:
    park, _ = outage_park
    scenario = parse_scenario("seed: 4\nnetwork: {duplicate_rate: 1.0}\n")  # every reading sent twice
    creds = {r.device.id: "pw" for r in Timeline(park, scenario, 0).model.devices}
    with LiveSimulator(park, creds, endpoint_of(mosquitto), interval_s=0.2, scenario=scenario) as sim:
        assert sim.wait_connected(10)
        wait_for(lambda: sim.acked >= 24, timeout=20)
    assert sim.published >= 24
    assert sim.published % 2 == 0  # each reading sent twice
    assert sim.errors == 0
