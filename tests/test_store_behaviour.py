"""Behaviour both time-series stores must share, written once and run against each backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.errors import StoreUnavailable
from smartpark.core.points import Point
from smartpark.core.store.base import SeriesQuery, TimeSeriesStore
from smartpark.core.store.embedded import EmbeddedStore

from factories import now_ms

MIN = 60_000
DAY = 86_400_000


@pytest.fixture
def t0() -> int:
    return (now_ms() - 3 * 3600_000) // 3600_000 * 3600_000  # an hour boundary three hours ago


def power(site: str, device: str, ts: int, value: float) -> Point:
    return Point("energy", site, device, ts, {"power_kw": value})


def test_same_time_overwrites(store: TimeSeriesStore, t0: int) -> None:
    store.write([power("s", "d", t0, 1.0)])
    store.write([power("s", "d", t0, 2.0)])
    (series,) = store.series(SeriesQuery("energy", "power_kw", t0, t0 + MIN, MIN, "count", site="s"))
    assert series.points == [(t0, 1.0)]
    (series,) = store.series(SeriesQuery("energy", "power_kw", t0, t0 + MIN, MIN, "last", site="s"))
    assert series.points == [(t0, 2.0)]


@pytest.mark.parametrize(("agg", "expected"), [
    ("mean", [2.0, 10.0]), ("min", [1.0, 10.0]), ("max", [3.0, 10.0]), ("sum", [6.0, 10.0]),
    ("count", [3.0, 1.0]), ("last", [3.0, 10.0]),
])
def test_aggregates_over_windows(store: TimeSeriesStore, t0: int, agg: str, expected: list[float]) -> None:
    store.write([power("s", "d", t0 + i * 10_000, float(i + 1)) for i in range(3)]
                + [power("s", "d", t0 + MIN + 5_000, 10.0), power("s", "d", t0 + 2 * MIN, 99.0)])
    (series,) = store.series(SeriesQuery("energy", "power_kw", t0, t0 + 2 * MIN, MIN, agg, site="s"))  # type: ignore[arg-type]
    assert series.points == [(t0, expected[0]), (t0 + MIN, expected[1])]
    assert (series.site, series.device) == ("s", "d")


def test_group_by_site_and_device_filter(store: TimeSeriesStore, t0: int) -> None:
    store.write([power("a", "d1", t0, 1.0), power("a", "d2", t0, 3.0), power("b", "d3", t0, 100.0)])
    by_site = store.series(SeriesQuery("energy", "power_kw", t0, t0 + MIN, MIN, "sum", site="a", group_by="site"))
    assert [(s.site, s.device, s.points) for s in by_site] == [("a", None, [(t0, 4.0)])]
    by_device = store.series(SeriesQuery("energy", "power_kw", t0, t0 + MIN, MIN, "sum", site="a"))
    assert sorted((s.device, s.points[0][1]) for s in by_device) == [("d1", 1.0), ("d2", 3.0)]
    one = store.series(SeriesQuery("energy", "power_kw", t0, t0 + MIN, MIN, "sum", device="d3"))
    assert [(s.site, s.points) for s in one] == [("b", [(t0, 100.0)])]


def test_latest_value_and_its_flag(store: TimeSeriesStore, t0: int) -> None:
    store.write([Point("emissions", "s", "cems", t0, {"nox_mg_m3": 40.0, "nox_mg_m3_flag": "C"}),
                 Point("emissions", "s", "cems", t0 + MIN, {"nox_mg_m3": 42.0, "o2_pct": 17.0}),
                 Point("emissions", "s", "cems", t0 + 2 * MIN, {"o2_pct": 16.5, "o2_pct_flag": "M"}),
                 Point("energy", "s", "meter", t0, {"power_kw": 5.0}),
                 Point("energy", "other", "meter2", t0 + 3 * MIN, {"power_kw": 7.0})])
    latest = {(v.device, v.metric): v for v in store.latest("s")}
    assert set(latest) == {("cems", "nox_mg_m3"), ("cems", "o2_pct"), ("meter", "power_kw")}
    nox, o2 = latest["cems", "nox_mg_m3"], latest["cems", "o2_pct"]
    assert (nox.ts_ms, nox.value, nox.flag, nox.measurement) == (t0 + MIN, 42.0, None, "emissions")
    assert (o2.ts_ms, o2.value, o2.flag) == (t0 + 2 * MIN, 16.5, "M")
    assert latest["meter", "power_kw"].site == "s"


def test_latest_many_answers_by_site_and_only_the_sites_asked(store: TimeSeriesStore, t0: int) -> None:
    store.write([power("a", "d1", t0, 1.0), power("a", "d2", t0 + MIN, 2.0), power("b", "d3", t0, 3.0),
                 power("c", "d4", t0, 4.0)])
    out = store.latest_many(["a", "b", "nowhere"], lookback_ms=DAY)
    assert {site: [(v.device, v.value) for v in values] for site, values in out.items()} == {
        "a": [("d1", 1.0), ("d2", 2.0)], "b": [("d3", 3.0)], "nowhere": []}  # c not asked: not there
    assert out["a"] == store.latest("a", lookback_ms=DAY)
    assert store.latest_many([], lookback_ms=DAY) == {}


def test_latest_respects_lookback(store: TimeSeriesStore, t0: int) -> None:
    store.write([power("s", "d", t0, 1.0)])
    assert store.latest("s", lookback_ms=3600_000) == []
    assert len(store.latest("s", lookback_ms=5 * 3600_000)) == 1


def test_empty_points_are_refused(store: TimeSeriesStore, t0: int) -> None:
    with pytest.raises(ValueError, match="no fields"):
        store.write([Point("energy", "s", "d", t0, {})])


def test_embedded_series_ids_survive_a_failed_write(tmp_path: Path, t0: int) -> None:
    """A rolled-back write must not leave a cached series id that later points at another series."""
    s = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    s.init()
    # a new series, then a value SQLite cannot bind: the transaction rolls back
    unbindable = Point("energy", "site-a", "dev-a", t0 + 1, {"x": {"not": "a number"}})  # type: ignore[dict-item]
    with pytest.raises(StoreUnavailable):
        s.write([power("site-a", "dev-a", t0, 1.0), unbindable])
    s.write([power("site-b", "dev-b", t0, 2.0)])
    s.write([power("site-a", "dev-a", t0, 1.0)])
    assert [(v.device, v.value) for v in s.latest("site-a", lookback_ms=10 * 3600_000)] == [("dev-a", 1.0)]
    assert [(v.device, v.value) for v in s.latest("site-b", lookback_ms=10 * 3600_000)] == [("dev-b", 2.0)]
    s.close()


def test_a_large_batch_is_written_whole(store: TimeSeriesStore, t0: int) -> None:
    """Large batches go to InfluxDB as several requests in parallel: every point must land."""
    n = 6001
    store.write([power("s", f"d{i % 7}", t0 + i, float(i)) for i in range(n)])
    found = store.series(SeriesQuery("energy", "power_kw", t0, t0 + n, 3600_000, "count", site="s",
                                     group_by="site"))
    assert [p[1] for s in found for p in s.points] == [float(n)]
    total = store.series(SeriesQuery("energy", "power_kw", t0, t0 + n, 3600_000, "sum", site="s", group_by="site"))
    assert total[0].points[0][1] == sum(range(n))
