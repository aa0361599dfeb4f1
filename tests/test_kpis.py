"""KPIs through the API on both stores, against hand-computed values: tce, CO2, intensity; an injected
exceedance hour (O2-corrected); an hour with too few valid minutes; a counter reset; greening coverage."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

from factories import PARK_YAML, ServedApp

MIN = 60_000
DAY = "2025-03-01"  # local day in the park's zone (Asia/Shanghai)
T0 = int(datetime(2025, 3, 1, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)


@pytest.fixture
def api(store: TimeSeriesStore, tmp_path: Path) -> Iterator[httpx.Client]:
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    store.write(meter_points() + stack_points() + [
        Point("greening", "park-green", "green-1", T0 + i * 3600_000, {"green_area_m2": 7500.0}) for i in range(24)])
    app = create_app(Settings(_env_file=None, data_dir=tmp_path), registry=registry, store=store,  # type: ignore[call-arg]
                     catalog=default_catalog())
    served = ServedApp(app)
    served.client.headers["Authorization"] = f"Bearer {registry.create_api_key('admin', [])}"
    yield served.client
    served.close()
    registry.close()


def kwh(i: int) -> float:
    """The meter resets to 0 at minute 700 (a replaced meter): minute 700 reads 10."""
    return 1000.0 + 10 * (i + 1) if i < 700 else 10.0 * (i - 699)


def meter_points() -> list[Point]:
    return [Point("energy", "steel", "steel-meter", T0 + i * MIN, {
        "energy_kwh": kwh(i), "gas_nm3": 2.0 * i, "steam_t": 0.1 * i, "coal_t": 0.05 * i, "output_t": 1.0 * i,
    }) for i in range(-1, 1440)]


def stack_points() -> list[Point]:
    """Four local hours of minute readings from a sinter stack (reference O2 16 %, NOx limit 50 mg/m3)."""
    def minute(hour: int, m: int, nox: float, o2: float, flag: str | None = None) -> Point:
        fields: dict[str, float | str] = {"nox_mg_m3": nox, "o2_pct": o2}
        if flag:
            fields["nox_mg_m3_flag"] = flag
        return Point("emissions", "steel", "sinter-cems", T0 + hour * 3600_000 + m * MIN, fields)

    return ([minute(0, m, 40.0, 16.0) for m in range(60)]  # 40 corrected: compliant
            + [minute(1, m, 30.0, 18.5) for m in range(60)]  # 30 x 5 / 2.5 = 60 > 50: exceeding
            + [minute(2, m, 40.0, 16.0, "C" if m < 20 else None) for m in range(60)]  # 40 valid < 45: invalid
            + [minute(3, m, 45.0 if m >= 10 else 500.0, 16.0, None if m >= 10 else "M") for m in range(60)])


def test_energy_tce_co2_intensity(api: httpx.Client) -> None:
    energy = api.get("/v1/sites/steel/kpis/energy", params={"start": DAY, "end": "2025-03-02"}).json()
    amounts = {c["carrier"]: c["amount"] for c in energy["carriers"]}
    # 700 steps of 10 before the reset, the reset counts the reading after it (10), then 739 steps of 10
    assert amounts == pytest.approx({"electricity": 14400.0, "natural_gas": 2880.0, "steam": 144.0, "coal": 72.0})
    # (14400 x 0.1229 + 2880 x 1.33 + 144 x 128.6 + 72 x 714.3) kgce / 1000
    assert energy["total_tce"] == pytest.approx(75.54816)
    assert energy["co2_t"] == pytest.approx(14400 * 0.5122 / 1000)  # northeast grid, 2023 factor
    assert (energy["grid_region"], energy["grid_factor_year"]) == ("northeast", 2023)
    assert energy["output_t"] == pytest.approx(1440.0)
    assert energy["intensity_tce_per_t"] == pytest.approx(75.54816 / 1440)
    assert energy["quota_use_pct"] is None  # the test site has no quota


def test_counter_reset_gives_no_negative_or_huge_window(api: httpx.Client) -> None:
    (series,) = api.get("/v1/series", params={
        "site": "steel", "metric": "energy_kwh", "agg": "delta", "every": "1h",
        "start": "2025-02-28T16:00:00Z", "end": "2025-03-01T16:00:00Z"}).json()
    values = [v for _, v in series["points"]]
    assert len(values) == 24
    assert min(values) >= 0
    assert max(values) <= 600.0  # at most 60 steps of 10 in an hour
    assert sum(values) == pytest.approx(14400.0)


def test_emission_hours_and_compliance(api: httpx.Client) -> None:
    kpi = api.get("/v1/sites/steel/kpis/emissions", params={"start": DAY, "end": "2025-03-02", "hours": "true"}
                  ).json()
    (stack,) = kpi["stacks"]
    nox = next(p for p in stack["pollutants"] if p["pollutant"] == "nox")
    statuses = [(h["start"], h["status"], h["valid_minutes"]) for h in nox["hours"]]
    assert statuses == [("2025-03-01T00:00:00+08:00", "compliant", 60), ("2025-03-01T01:00:00+08:00", "exceeding", 60),
                        ("2025-03-01T02:00:00+08:00", "invalid", 40), ("2025-03-01T03:00:00+08:00", "compliant", 50)]
    means = [h["mean_mg_m3"] for h in nox["hours"]]
    assert means == pytest.approx([40.0, 60.0, 40.0, 45.0])  # the flagged 500s of hour 3 are not counted
    assert [h["start"] for h in nox["exceeding"]] == ["2025-03-01T01:00:00+08:00"]
    assert (nox["hours_valid"], nox["hours_compliant"], nox["hours_exceeding"]) == (3, 2, 1)
    assert nox["compliance_pct"] == pytest.approx(200 / 3)
    assert kpi["compliance_pct"] == pytest.approx(200 / 3)  # pm and so2 have no data: no valid hours
    assert (kpi["min_valid_minutes"], kpi["target_pct"], kpi["meets_target"]) == (45, 95.0, False)


def test_greening_and_park(api: httpx.Client) -> None:
    green = api.get("/v1/sites/park-green/kpis/greening", params={"start": DAY, "end": "2025-03-02"}).json()
    assert (green["coverage_pct"], green["status"], green["band_min_pct"]) == (pytest.approx(15.0), "within", 10.0)
    park = api.get("/v1/kpis", params={"start": DAY, "end": "2025-03-02"}).json()
    assert park["greening_coverage_pct"] == pytest.approx(15.0)  # steel has no green sensors: left out
    assert park["energy"]["total_tce"] == pytest.approx(75.54816)
    assert park["emissions_compliance_pct"] == pytest.approx(200 / 3)
    assert [s["site"] for s in park["sites"]] == ["park-green", "steel"]


@pytest.mark.parametrize("cache_s", [900.0, 0.0])
def test_emission_hours_through_the_hour_cache_never_hide_a_late_reading(
        store: TimeSeriesStore, tmp_path: Path, cache_s: float) -> None:
    """The app puts the store behind the hour cache where SMARTPARK_API_HOUR_CACHE_S says so (any store), and
    hands the warmer that cache; what is kept is revalidated on every request."""
    from smartpark.core.store.hour_cache import HourCache

    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    store.write(stack_points())
    settings = Settings(_env_file=None, data_dir=tmp_path, api_hour_cache_s=cache_s)  # type: ignore[call-arg]
    app = create_app(settings, registry=registry, store=store, catalog=default_catalog())
    served = ServedApp(app)
    try:
        served.client.headers["Authorization"] = f"Bearer {registry.create_api_key('admin', [])}"

        def hour0_mean() -> float:
            kpi = served.client.get("/v1/sites/steel/kpis/emissions",
                                    params={"start": DAY, "end": "2025-03-02", "hours": "true"}).json()
            nox = next(p for p in kpi["stacks"][0]["pollutants"] if p["pollutant"] == "nox")
            return float(nox["hours"][0]["mean_mg_m3"])

        if cache_s:
            assert isinstance(app.state.store, HourCache)
            assert app.state.store.store is store
            assert app.state.kpi_warmer is not None
            assert app.state.kpi_warmer.cache is app.state.store
        else:
            assert app.state.store is store
            assert app.state.kpi_warmer is None
        assert hour0_mean() == pytest.approx(40.0)
        assert hour0_mean() == pytest.approx(40.0)  # kept (cached), or computed again
        store.write([Point("emissions", "steel", "sinter-cems", T0 + 30_000, {"nox_mg_m3": 100.0, "o2_pct": 16.0})])
        assert hour0_mean() == pytest.approx(40.5)  # minute 0 now means 70: (59 x 40 + 70) / 60
    finally:
        served.close()
        registry.close()
