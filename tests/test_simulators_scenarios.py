"""Scenarios played over plant time: files, determinism, counters and resets, exceedances judged as the domain
rules judge them (O2-corrected hourly means, local hours, valid flags, 45 valid minutes), network behaviour."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pytest

from smartpark.core.contract import MAX_BATCH, MAX_PAYLOAD
from smartpark.core.emissions import is_valid_flag, o2_correct
from smartpark.core.errors import ConfigError
from smartpark.core.reference import default_reference
from smartpark.core.registry import ParkFile, read_park_file
from smartpark.platform import demo_park_path
from smartpark.simulators.delivery import Delivery
from smartpark.simulators.scenario import Scenario, default_scenario, load_scenario, parse_scenario
from smartpark.simulators.timeline import Generated, Timeline
from smartpark.simulators.truth import TruthWriter, read_truth

SHANGHAI = ZoneInfo("Asia/Shanghai")
MIDNIGHT = datetime(2025, 7, 7, tzinfo=SHANGHAI)  # a Monday, local midnight
START_MS = int(MIDNIGHT.timestamp() * 1000)
DAY_MS = 86_400_000
VALID_MINUTES = 45  # domain.md: an hour is valid with at least 45 valid minutes
POLLUTANTS = {"pm": "pm_mg_m3", "so2": "so2_mg_m3", "nox": "nox_mg_m3"}

EXCEEDANCES = """
name: exceedances
seed: 11
upsets: false
events:
  - {kind: exceedance, device: sinter-1-cems, start_min: 180, duration_min: 120, pollutant: so2, magnitude: 1.6}
  - {kind: exceedance, device: pellet-1-cems, start_min: 600, duration_min: 60, pollutant: pm, magnitude: 2.0,
     cause: bag_filter_trip}
  - {kind: exceedance, device: power-boiler-cems, start_min: 1320, duration_min: 60, pollutant: nox, magnitude: 1.3}
  - {kind: o2_excursion, device: sinter-1-cems, start_min: 480, duration_min: 20}
  - {kind: flag, device: sinter-1-cems, flag: C, start_min: 720, duration_min: 30}
  - {kind: flag, device: sinter-1-cems, flag: C, start_min: 840, duration_min: 10}
"""
EXPECTED = {("sinter-1-cems", "so2", 3), ("sinter-1-cems", "so2", 4), ("pellet-1-cems", "pm", 10),
            ("power-boiler-cems", "nox", 22)}


@pytest.fixture(scope="module")
def park() -> ParkFile:
    return read_park_file(demo_park_path())


def _generate(park: ParkFile, scenario: Scenario, days: float = 1.0, start_ms: int = START_MS) -> list[Generated]:
    timeline = Timeline(park, scenario, start_ms)
    return [g for f in timeline.frames(start_ms + round(days * DAY_MS), chunk=500) for g in f.readings()]


# --------------------------------------------------------------------------------------------- files


def test_the_shipped_demo_scenario_loads_and_names_real_devices(park: ParkFile) -> None:
    scenario = default_scenario()
    assert scenario.name == "demo"
    assert len(scenario.events) >= 8
    Timeline(park, scenario, START_MS)  # raises ConfigError on an unknown device or metric


def test_an_unknown_key_is_an_error_naming_the_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nevents:\n  - kind: outage\n    device: gw\n    start_min: 5\n    duraton_min: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:6: .*duraton_min"):
        load_scenario(path)


def test_an_unknown_event_kind_is_an_error() -> None:
    with pytest.raises(ConfigError, match="kind"):
        parse_scenario("events:\n  - {kind: meteor, device: a, start_min: 1}\n")


def test_an_event_on_a_device_not_in_the_park_is_an_error(park: ParkFile) -> None:
    scenario = parse_scenario("events:\n  - {kind: stuck, device: nowhere, start_min: 1}\n")
    with pytest.raises(ConfigError, match="nowhere"):
        Timeline(park, scenario, START_MS)


# ------------------------------------------------------------------------------------- determinism


def test_same_seed_same_readings(park: ParkFile) -> None:
    scenario = default_scenario()
    a = _generate(park, scenario, days=0.25)
    assert msgspec.json.encode(a) == msgspec.json.encode(_generate(park, scenario, days=0.25))
    # Frames of another size give the same gauges and flags; counters agree to float summation order.
    timeline = Timeline(park, scenario, START_MS)
    b = [g for f in timeline.frames(START_MS + DAY_MS // 4, chunk=7) for g in f.readings()]
    assert [(g.device, g.ts, g.flags, sorted(g.metrics)) for g in a] == [
        (g.device, g.ts, g.flags, sorted(g.metrics)) for g in b]
    x = np.array([v for g in a for v in g.metrics.values()])
    y = np.array([v for g in b for v in g.metrics.values()])
    assert np.allclose(x, y, rtol=1e-12, atol=2e-4)
    other = _generate(park, msgspec.structs.replace(scenario, seed=2), days=0.01)
    assert [g.metrics for g in other] != [g.metrics for g in a[: len(other)]]


# ------------------------------------------------------------------------------------------ counters


def _series(readings: list[Generated], device: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(g.ts, g.metrics[metric]) for g in readings if g.device == device]
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def _by_device(readings: list[Generated]) -> dict[str, list[Generated]]:
    out: dict[str, list[Generated]] = defaultdict(list)
    for g in readings:
        out[g.device].append(g)
    return out


def test_counters_are_monotone_except_at_injected_resets_and_follow_power(park: ParkFile) -> None:
    scenario = parse_scenario("seed: 5\nevents:\n  - {kind: meter_reset, device: steel-works-meter-03, "
                              "at_min: 1000}\n  - {kind: meter_reset, device: truck-assembly-main-substation, "
                              "at_min: 2000}\n")
    readings = _by_device(_generate(park, scenario, days=2))
    resets = {"steel-works-meter-03": START_MS + 1000 * 60_000,
              "truck-assembly-main-substation": START_MS + 2000 * 60_000}
    meters = [device for device, rows in readings.items() if "energy_kwh" in rows[0].metrics]
    for device in meters:
        ts, energy = _series(readings[device], device, "energy_kwh")
        drops = ts[1:][np.diff(energy) < 0]
        assert list(drops) == ([resets[device]] if device in resets else []), device
        if device in resets:
            assert energy[ts == resets[device]][0] == 0.0  # the new meter starts at zero
        _, power = _series(readings[device], device, "power_kw")
        integrated = (power[1:] + power[:-1]) / 2 * np.diff(ts) / 3_600_000  # kWh, trapezoid on the readings
        increments = np.diff(energy)
        ok = ts[1:] != resets.get(device, -1)
        # Stated tolerance: each one-minute increment within 0.1 % (+ the 4-decimal rounding) of integrated power.
        assert np.all(np.abs(increments[ok] - integrated[ok]) <= 1e-3 * np.abs(integrated[ok]) + 2e-4), device
    gas_ts, gas = _series(readings["truck-assembly-main-substation"], "truck-assembly-main-substation", "gas_nm3")
    assert list(gas_ts[1:][np.diff(gas) < 0]) == [resets["truck-assembly-main-substation"]]


# --------------------------------------------------------------------------------------- exceedances


def _hourly(readings: list[Generated], park: ParkFile) -> tuple[dict, dict, dict]:
    """(valid hourly means, naive means of every reading, valid-minute counts) per (device, pollutant, hour)."""
    reference = default_reference()
    source_of = {d.id: d.source_type for s in park.sites for d in s.devices}
    max_o2 = reference.emissions.o2_correction_max_pct
    valid, naive = defaultdict(list), defaultdict(list)
    for g in readings:
        if "o2_pct" not in g.metrics:
            continue
        source = reference.source_type(source_of[g.device])
        hour = datetime.fromtimestamp(g.ts / 1000, SHANGHAI).hour
        for p, metric in POLLUTANTS.items():
            key = (g.device, p, hour)
            naive[key].append(g.metrics[metric])
            corrected = o2_correct(g.metrics[metric], g.metrics["o2_pct"], source, max_o2)
            if corrected is not None and is_valid_flag(g.flags.get(metric), reference):
                valid[key].append(corrected)
    means = {k: float(np.mean(v)) for k, v in valid.items() if len(v) >= VALID_MINUTES}
    return means, {k: float(np.mean(v)) for k, v in naive.items()}, {k: len(v) for k, v in valid.items()}


def test_exceedance_episodes_exceed_exactly_in_the_scheduled_hours(park: ParkFile) -> None:
    scenario = parse_scenario(EXCEEDANCES)
    readings = _generate(park, scenario)
    means, naive, counts = _hourly(readings, park)
    reference = default_reference()
    source_of = {d.id: d.source_type for s in park.sites for d in s.devices}
    above = {k for k, mean in means.items() if mean > reference.source_type(source_of[k[0]]).limits_mg_m3[k[1]]}
    assert above == EXPECTED
    # the O2 excursion (20 minutes at 20.6 %) and the 30-minute calibration leave those hours invalid ...
    assert counts[("sinter-1-cems", "so2", 8)] == 40
    assert ("sinter-1-cems", "so2", 8) not in means
    assert ("sinter-1-cems", "so2", 12) not in means
    # ... where the calibration gas alone would have looked like an exceedance
    assert naive[("sinter-1-cems", "so2", 12)] > 35
    # a 10-minute calibration leaves a valid hour, judged on its 50 valid minutes
    assert counts[("sinter-1-cems", "so2", 14)] == 50
    assert ("sinter-1-cems", "so2", 14) in means


def test_a_startup_exceeds_after_o2_correction_while_measured_values_look_compliant(park: ParkFile) -> None:
    readings = _generate(park, parse_scenario(EXCEEDANCES), days=0.25)
    startup = [g for g in readings if g.device == "sinter-1-cems" and 3 <= datetime.fromtimestamp(
        g.ts / 1000, SHANGHAI).hour < 5]
    assert np.mean([g.metrics["so2_mg_m3"] for g in startup]) < 35  # the measured value is under the limit
    assert np.mean([g.metrics["o2_pct"] for g in startup]) > 17.5  # because the start-up runs on excess air


# ------------------------------------------------------------------------------------------- network

OUTAGE = """
seed: 3
network: {duplicate_rate: 0.02, reorder_rate: 0.02, malformed_rate: 0.01}
events:
  - {kind: outage, device: truck-assembly-gateway, start_min: 30, duration_min: 40}
  - {kind: outage, device: sinter-1-cems, start_min: 10, duration_min: 1200}
  - {kind: clock_skew, device: logistics-north-meter-01, skew_s: 95}
"""


def test_outage_readings_arrive_once_in_contract_batches_after_reconnect(park: ParkFile, tmp_path: Path) -> None:
    scenario = parse_scenario(OUTAGE)
    timeline = Timeline(park, scenario, START_MS)
    with TruthWriter(tmp_path / "truth.jsonl") as truth:
        delivery = Delivery(timeline, scenario, truth)
        sent = []
        for frame in timeline.frames(START_MS + DAY_MS, chunk=120):
            by_ts: dict[int, list[Generated]] = defaultdict(list)
            for g in frame.readings():
                by_ts[g.ts].append(g)
            sent += [(ts, m) for ts, group in by_ts.items() for m in delivery.tick(ts / 1000, group)]
        sent += [(None, m) for m in delivery.finish()]
    generated = [r for r in read_truth(tmp_path / "truth.jsonl") if r["type"] == "reading"]
    delivered = defaultdict(int)
    for _, m in sent:
        if m.kind in ("reading", "batch"):
            body = msgspec.json.decode(m.payload)
            for r in body.get("readings", [body]):
                delivered[(m.device, r["ts"])] += 1
    assert sorted(delivered) == sorted((r["device"], r["sent_ts"]) for r in generated)
    assert set(delivered.values()) == {1}  # none lost, none doubled (duplicates are sent as kind "duplicate")
    batches = [(ts, m) for ts, m in sent if m.kind == "batch"]
    assert all(len(m.payload) <= MAX_PAYLOAD and m.readings <= MAX_BATCH for _, m in batches)
    gateway_end = START_MS + 70 * 60_000
    assert {ts for ts, m in batches if m.site == "truck-assembly"} == {gateway_end}
    assert sum(m.readings for _, m in batches if m.device == "sinter-1-cems") == 1200
    assert len([m for _, m in batches if m.device == "sinter-1-cems"]) >= 3  # 64 KiB splits 1,200 readings
    assert sum(m.kind == "duplicate" for _, m in sent) > 0
    assert sum(m.kind == "malformed" for _, m in sent) > 0
    skewed = next(r for r in generated if r["device"] == "logistics-north-meter-01")
    assert skewed["sent_ts"] - skewed["ts"] == 95_000


def test_reordered_messages_arrive_after_newer_readings(park: ParkFile) -> None:
    scenario = parse_scenario("seed: 4\nnetwork: {reorder_rate: 0.05}\n")
    timeline = Timeline(park, scenario, START_MS)
    delivery = Delivery(timeline, scenario)
    last: dict[str, int] = {}
    late = 0
    for frame in timeline.frames(START_MS + 3_600_000, chunk=60):
        for ts in frame.t_ms.tolist():
            group = [g for g in frame.readings() if g.ts == ts]
            for m in delivery.tick(ts / 1000, group):
                sent_ts = msgspec.json.decode(m.payload)["ts"]
                late += sent_ts < last.get(m.device, 0)
                last[m.device] = max(last.get(m.device, 0), sent_ts)
    assert late > 0


def test_a_start_in_the_scenario_needs_an_offset() -> None:
    with pytest.raises(ConfigError, match="offset"):
        parse_scenario("start: 2025-07-07T00:00:00\n")
    assert parse_scenario("start: 2025-07-07T00:00:00+08:00\n").start == MIDNIGHT + timedelta(0)


def test_simulate_backfills_the_embedded_store_and_writes_the_truth(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")}
    env["SMARTPARK_DATA_DIR"] = str(tmp_path / "data")
    truth = tmp_path / "truth.jsonl"
    done = subprocess.run([sys.executable, "-m", "smartpark", "simulate", "--mode", "backfill", "--days", "0.01",
                           "--seed", "3", "--truth", str(truth)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    records = list(read_truth(truth))
    readings = [r for r in records if r["type"] == "reading"]
    assert len(readings) == 203 * 15
    assert "backfilled 3,045 readings" in done.stderr
    assert {r["kind"] for r in records if r["type"] == "event"} >= {"exceedance", "outage", "meter_reset"}
    with sqlite3.connect(tmp_path / "data" / "timeseries.sqlite") as db:
        assert db.execute("SELECT count(*) FROM points WHERE field = 'power_kw'").fetchone()[0] == 156 * 15
