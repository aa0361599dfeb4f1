"""The plant models: deterministic from a seed, within the catalog, counters consistent with their gauges."""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.registry.parkfile import ParkFile, read_park_file
from smartpark.simulators import ParkModel
from smartpark.simulators.models import STACKS, Reading

SHANGHAI = ZoneInfo("Asia/Shanghai")
STEP_MS = 15 * 60 * 1000
START_MS = int(datetime(2025, 7, 7, tzinfo=SHANGHAI).timestamp() * 1000)  # a Monday, growing season
TIMES = [START_MS + k * STEP_MS for k in range(48 * 4 + 1)]

Series = list[list[Reading]]


@pytest.fixture(scope="module")
def park() -> ParkFile:
    with resources.as_file(resources.files("smartpark.core") / "data/parks/demo.yaml") as path:
        return read_park_file(Path(path))


@pytest.fixture(scope="module")
def series(park: ParkFile) -> Series:
    """48 hours of the demo park at 15-minute steps."""
    model = ParkModel(park, seed=7)
    return [model.readings(ts) for ts in TIMES]


def _metric(series: Series, device: str, metric: str) -> np.ndarray:
    return np.array([m[metric] for step in series for _, d, m in step if d == device])


def _local_ms(day: int, hour: int) -> int:
    return int(datetime(2025, 11, day, hour, tzinfo=SHANGHAI).timestamp() * 1000)


def test_same_seed_gives_the_same_readings(park: ParkFile) -> None:
    times = [START_MS, START_MS + 5_000, START_MS + 3_600_000, START_MS + 86_400_000]
    a, b = ParkModel(park, seed=3), ParkModel(park, seed=3)
    assert [a.readings(t) for t in times] == [b.readings(t) for t in times]


def test_another_seed_gives_other_readings(park: ParkFile) -> None:
    a, b = ParkModel(park, seed=3), ParkModel(park, seed=4)
    assert a.readings(START_MS) != b.readings(START_MS)


def test_every_device_but_gateways_reports(park: ParkFile, series: Series) -> None:
    expected = [(s.id, d.id) for s in park.sites for d in s.devices if d.kind != "gateway"]
    assert [(site, device) for site, device, _ in series[0]] == expected
    assert all(metrics for _, _, metrics in series[0])


def test_values_are_within_the_catalog(series: Series) -> None:
    catalog = default_catalog()
    bad = [
        (device, name, value)
        for step in series
        for _, device, metrics in step
        for name, value in metrics.items()
        if name not in catalog or not np.isfinite(value) or not catalog[name].in_range(value)
    ]
    assert bad == []


def test_counters_never_decrease(series: Series) -> None:
    catalog = default_catalog()
    for _, device, metrics in series[0]:
        for name in metrics:
            if catalog[name].kind == "counter":
                assert np.all(np.diff(_metric(series, device, name)) >= 0), (device, name)


def test_energy_counters_integrate_power(park: ParkFile, series: Series) -> None:
    hours = (np.array(TIMES) - TIMES[0]) / 3_600_000
    meters = [d.id for s in park.sites for d in s.devices if d.kind == "energy_meter"]
    for device in meters:
        power, energy = _metric(series, device, "power_kw"), _metric(series, device, "energy_kwh")
        integrated = float(np.sum((power[1:] + power[:-1]) / 2 * np.diff(hours)))
        assert energy[-1] - energy[0] == pytest.approx(integrated, rel=0.02), device


def test_main_substations_meter_the_site(series: Series) -> None:
    names = {d: set(m) for _, d, m in series[0]}
    assert names["steel-works-main-substation"] >= {"gas_nm3", "water_m3", "steam_t", "coal_t", "output_t"}
    assert names["truck-assembly-main-substation"] >= {"gas_nm3", "water_m3", "output_t"}
    assert "steam_t" not in names["truck-assembly-main-substation"]
    assert names["truck-assembly-meter-01"] == {"power_kw", "energy_kwh"}


def test_automotive_plant_sleeps_at_night_on_a_weekday(park: ParkFile) -> None:
    model = ParkModel(park, seed=1)
    power = {
        hour: next(m["power_kw"] for _, d, m in model.readings(_local_ms(26, hour))  # a Wednesday
                   if d == "truck-assembly-main-substation")
        for hour in (3, 10)
    }
    assert power[3] < 0.4 * power[10]


def test_sinter_stacks_meet_ultra_low_limits_most_of_the_time(series: Series) -> None:
    stack = STACKS["sinter"]
    assert stack.o2_ref is not None
    for device in ("sinter-1-cems", "sinter-2-cems"):
        o2 = _metric(series, device, "o2_pct")
        assert np.all((o2 >= 15.5) & (o2 <= 18.5))
        factor = (21 - stack.o2_ref) / (21 - o2)
        for name, limit in zip(("pm_mg_m3", "so2_mg_m3", "nox_mg_m3"), stack.limits, strict=True):
            within = np.mean(_metric(series, device, name) * factor <= limit)
            assert within >= 0.9, (device, name, within)
