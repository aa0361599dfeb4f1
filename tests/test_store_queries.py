"""The store queries behind the KPIs (counter deltas, minute means with flags), run against both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.store.base import MinuteQuery, SeriesQuery, TimeSeriesStore
from smartpark.core.store.embedded import EmbeddedStore

from factories import now_ms

MIN = 60_000


@pytest.fixture(params=["embedded", "influx"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimeSeriesStore]:
    if request.param == "influx":
        yield request.getfixturevalue("influx_store")
        return
    s = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    s.init()
    yield s
    s.close()


@pytest.fixture
def t0() -> int:
    return (now_ms() - 3 * 3600_000) // 3600_000 * 3600_000


def kwh(site: str, device: str, ts: int, value: float) -> Point:
    return Point("energy", site, device, ts, {"energy_kwh": value})


def delta(store: TimeSeriesStore, start: int, end: int, every: int, **kw: object) -> list[tuple[str | None, list]]:
    query = SeriesQuery("energy", "energy_kwh", start, end, every, "delta", **kw)  # type: ignore[arg-type]
    return [(s.device, s.points) for s in store.series(query)]


def test_delta_is_reset_aware_and_uses_the_minute_before_start(store: TimeSeriesStore, t0: int) -> None:
    # minute lasts: 90 (before start), 101, 106, reset to 7, 9, 12: steps 11, 5, (reset: 0), 2, 3
    values = [90, 100, 101, 103, 106, 5, 7, 8, 9, 10, 12]
    store.write([kwh("s", "d", t0 - MIN, 90.0)]
                + [kwh("s", "d", t0 + i * 30_000, float(v)) for i, v in enumerate(values[1:])])
    assert delta(store, t0, t0 + 5 * MIN, 2 * MIN, site="s") == [("d", [(t0, 16.0), (t0 + 2 * MIN, 2.0),
                                                                         (t0 + 4 * MIN, 3.0)])]
    (total,) = delta(store, t0, t0 + 5 * MIN, 5 * MIN, site="s")
    assert sum(v for _, v in total[1]) == 21.0  # never negative, never the size of the meter reading


def test_delta_grouped_by_site_sums_devices(store: TimeSeriesStore, t0: int) -> None:
    store.write([kwh("s", d, t0 + i * MIN, float(base + i * step)) for i in range(4)
                 for d, base, step in (("a", 1000, 2), ("b", 50, 1))] + [kwh("other", "c", t0 + MIN, 5.0)])
    assert delta(store, t0, t0 + 4 * MIN, 4 * MIN, site="s", group_by="site") == [(None, [(t0, 9.0)])]
    assert delta(store, t0, t0 + 4 * MIN, 4 * MIN, device="b") == [("b", [(t0, 3.0)])]


def test_minute_means_with_flags(store: TimeSeriesStore, t0: int) -> None:
    def cems(ts: int, nox: float, o2: float, **flags: str) -> Point:
        return Point("emissions", "s", "stack", ts, {"nox_mg_m3": nox, "o2_pct": o2, **flags})

    store.write([cems(t0, 10.0, 16.0), cems(t0 + 30_000, 20.0, 17.0),
                 cems(t0 + MIN, 30.0, 16.0, nox_mg_m3_flag="S"),
                 cems(t0 + 2 * MIN, 40.0, 16.0, nox_mg_m3_flag="C"), cems(t0 + 2 * MIN + 10_000, 50.0, 16.0),
                 cems(t0 + 3 * MIN, 60.0, 16.0, o2_pct_flag="M"),
                 Point("emissions", "other", "x", t0, {"nox_mg_m3": 1.0})])
    rows = store.minute_means(MinuteQuery("emissions", ("nox_mg_m3", "o2_pct"), "s", t0, t0 + 4 * MIN))
    assert [(r.device, r.ts_ms - t0, r.values, sorted(r.invalid)) for r in rows] == [
        ("stack", 0, {"nox_mg_m3": 15.0, "o2_pct": 16.5}, []),
        ("stack", MIN, {"nox_mg_m3": 30.0, "o2_pct": 16.0}, []),  # S is valid
        ("stack", 2 * MIN, {"nox_mg_m3": 45.0, "o2_pct": 16.0}, ["nox_mg_m3"]),
        ("stack", 3 * MIN, {"nox_mg_m3": 60.0, "o2_pct": 16.0}, ["o2_pct"]),
    ]
