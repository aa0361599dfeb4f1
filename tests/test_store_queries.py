"""The store queries behind the KPIs (counter deltas, minute means with flags, hourly sums of valid corrected
minute means), run against both backends."""

from __future__ import annotations

import random
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.store.base import (
    HourQuery,
    HourSum,
    MinuteQuery,
    Series,
    SeriesQuery,
    TimeSeriesStore,
    hour_sums_from_minutes,
    minute_query,
)
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.core.store.hour_cache import SINGLE_FLIGHT_HOURS, HourCache

from factories import PARK_YAML, now_ms, wait_for

MIN = 60_000


@pytest.fixture
def t0() -> int:
    return (now_ms() - 3 * 3600_000) // 3600_000 * 3600_000


def kwh(site: str, device: str, ts: int, value: float) -> Point:
    return Point("energy", site, device, ts, {"energy_kwh": value})


def delta(store: TimeSeriesStore, start: int, end: int, every: int, **kw: object) -> list[tuple[str | None, list]]:
    query = SeriesQuery("energy", "energy_kwh", start, end, every, "delta", **kw)  # type: ignore[arg-type]
    return [(s.device, s.points) for s in store.series(query)]


def test_delta_is_reset_aware_and_uses_the_minute_before_start(store: TimeSeriesStore, t0: int) -> None:
    # minute lasts: 90 (before start), 101, 106, reset to 7, 9, 12: steps 11, 5, (reset: the new reading 7), 2, 3
    values = [90, 100, 101, 103, 106, 5, 7, 8, 9, 10, 12]
    store.write([kwh("s", "d", t0 - MIN, 90.0)]
                + [kwh("s", "d", t0 + i * 30_000, float(v)) for i, v in enumerate(values[1:])])
    assert delta(store, t0, t0 + 5 * MIN, 2 * MIN, site="s") == [("d", [(t0, 16.0), (t0 + 2 * MIN, 9.0),
                                                                         (t0 + 4 * MIN, 3.0)])]
    (total,) = delta(store, t0, t0 + 5 * MIN, 5 * MIN, site="s")
    assert sum(v for _, v in total[1]) == 28.0  # never negative; the reading after the reset counts
    query = SeriesQuery("energy", "energy_kwh", t0, t0 + 5 * MIN, 5 * MIN, "delta", site="s")
    assert [(e.kind, e.ts_ms - t0, e.reading, e.step, e.counted) for e in store.counter_deltas(query)[1]] == [
        ("reset", 2 * MIN, 7.0, -99.0, 7.0)]


def test_delta_finds_the_step_before_a_sparse_meters_first_reading(store: TimeSeriesStore, t0: int) -> None:
    """A meter every 15 minutes: the day's first step reaches back 15 minutes (the old query looked back one
    minute and lost it); the hour before plus the hour after add up to the two hours."""
    store.write([kwh("s", "q", t0 + i * 15 * MIN, 1000.0 + 25.0 * i) for i in range(-4, 9)])
    assert delta(store, t0, t0 + 60 * MIN, 60 * MIN) == [("q", [(t0, 100.0)])]  # 4 steps of 25
    hours = delta(store, t0 - 60 * MIN, t0 + 60 * MIN, 60 * MIN)
    assert hours == [("q", [(t0 - 60 * MIN, 75.0), (t0, 100.0)])]  # the first reading has no predecessor


def test_delta_leaves_out_implausible_steps_and_lists_them(store: TimeSeriesStore, t0: int) -> None:
    values = [100.0, 110.0, 5_000_110.0, 5_000_120.0, 10.0]  # a jump of 5 GWh in a minute, then a reset to 10
    store.write([kwh("s", "j", t0 + i * MIN, v) for i, v in enumerate(values)])
    kw = {"max_per_h": 1000.0, "device_max_per_h": (("other", 1.0),)}  # 1 MW: a minute's step <= 33.3 kWh
    assert delta(store, t0, t0 + 5 * MIN, 5 * MIN, **kw) == [("j", [(t0, 30.0)])]  # 10 + 10 + the reset's 10
    query = SeriesQuery("energy", "energy_kwh", t0, t0 + 5 * MIN, 5 * MIN, "delta", **kw)  # type: ignore[arg-type]
    assert [(e.kind, e.ts_ms - t0, e.counted, e.excluded) for e in store.counter_deltas(query)[1]] == [
        ("implausible", 2 * MIN, 0.0, 5_000_000.0), ("reset", 4 * MIN, 10.0, 0.0)]


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


def cems(device: str, ts: int, nox: float, o2: float | None = None, **flags: str) -> Point:
    fields: dict[str, float | str] = {"nox_mg_m3": nox, **flags}
    if o2 is not None:
        fields["o2_pct"] = o2
    return Point("emissions", "s", device, ts, fields)


@pytest.fixture(params=["plain", "cached"])
def hour_store(request: pytest.FixtureRequest, store: TimeSeriesStore) -> TimeSeriesStore:
    """Each backend as it is and behind the hour cache: what the cache keeps must never change an answer."""
    return HourCache(store, 900.0) if request.param == "cached" else store


def recorded_hours(store: TimeSeriesStore) -> list[int]:
    """The number of hours each of the store's hour_sums calls from now on computes (a spy on the real store)."""
    computed: list[int] = []
    real = store.hour_sums

    def spy(query: HourQuery, hours: Collection[int] | None = None) -> list[HourSum]:
        computed.append(len(hours) if hours is not None else -(-(query.end_ms - query.start_ms) // 3600_000))
        return real(query) if hours is None else real(query, hours)

    store.hour_sums = spy  # type: ignore[method-assign]
    return computed


def hour_query(start: int, end: int, **kw: object) -> HourQuery:
    devices = (("sinter", 16.0), ("stove", None))
    return HourQuery("emissions", ("nox_mg_m3", "so2_mg_m3"), "s", start, end, devices, **kw)  # type: ignore[arg-type]


def test_hour_sums_of_valid_corrected_minutes(hour_store: TimeSeriesStore, t0: int) -> None:
    store = hour_store
    h = 3600_000
    store.write([
        # hour 0, sinter: clean minutes only (summed by the store itself on InfluxDB); two readings in minute 0
        cems("sinter", t0, 30.0, 16.0), cems("sinter", t0 + 30_000, 50.0, 16.0),  # mean 40 at O2 16 -> 40
        cems("sinter", t0 + MIN, 30.0, 18.5),  # 30 x 5 / 2.5 = 60
        cems("sinter", t0 + 2 * MIN, 20.0),  # no O2 in the minute: not valid
        # hour 1, sinter: each way a minute can be invalid
        cems("sinter", t0 + h, 40.0, 16.0),  # valid: 40
        cems("sinter", t0 + h + MIN, 40.0, 16.0, nox_mg_m3_flag="C"),  # flagged pollutant
        cems("sinter", t0 + h + 2 * MIN, 40.0, 16.0, o2_pct_flag="M"),  # flagged O2
        cems("sinter", t0 + h + 3 * MIN, 40.0, 20.5),  # O2 at or above the maximum: cannot be corrected
        cems("sinter", t0 + h + 4 * MIN, 40.0, 16.0, nox_mg_m3_flag="S"),  # S is valid: 40
        # hour 2, sinter: a minute with data, none valid -> the hour is listed with 0 valid minutes
        cems("sinter", t0 + 2 * h, 40.0, 16.0, nox_mg_m3_flag="D"),
        # the stove has no reference O2: measured values, whatever O2 does
        cems("stove", t0, 100.0), cems("stove", t0 + MIN, 200.0, 20.5),
        cems("stove", t0 + h, 7.0, 16.0, o2_pct_flag="C"),
        cems("other", t0, 1.0, 16.0),  # not asked for
        Point("emissions", "elsewhere", "sinter", t0, {"nox_mg_m3": 1.0, "o2_pct": 16.0}),  # another site
    ])
    got = store.hour_sums(hour_query(t0, t0 + 3 * h))
    assert [(x.device, x.field, x.ts_ms - t0, x.total, x.valid) for x in got] == [
        ("sinter", "nox_mg_m3", 0, 100.0, 2), ("sinter", "nox_mg_m3", h, 80.0, 2),
        ("sinter", "nox_mg_m3", 2 * h, 0.0, 0),
        ("stove", "nox_mg_m3", 0, 300.0, 2), ("stove", "nox_mg_m3", h, 7.0, 1),
    ]


def test_hour_sums_agree_to_the_bit_with_the_minute_means(hour_store: TimeSeriesStore, t0: int) -> None:
    """The store's own hourly sums equal the reference computation from its minute means exactly."""
    store = hour_store
    rng = random.Random(4)
    points = [cems(dev, t0 + i * 20_000, rng.uniform(0.1, 90.0), rng.uniform(5.0, 19.9))
              for i in range(3 * 180) for dev in ("sinter", "stove")]
    points[100] = cems("sinter", points[100].ts_ms, 3.3, 16.1, nox_mg_m3_flag="F")  # minute 16: one suspect hour
    store.write(points)
    query = hour_query(t0 + 7 * MIN, t0 + 3 * 3600_000 - 5 * MIN)  # partial first and last hours
    got = store.hour_sums(query)
    assert got == hour_sums_from_minutes(store.minute_means(minute_query(query)), query)
    assert [(x.device, x.ts_ms - t0, x.valid) for x in got] == [
        ("sinter", 0, 52), ("sinter", 3600_000, 60), ("sinter", 7200_000, 55),
        ("stove", 0, 53), ("stove", 3600_000, 60), ("stove", 7200_000, 55)]


def test_hour_sums_with_an_hour_offset(hour_store: TimeSeriesStore, t0: int) -> None:
    """Local hours of a +05:30 zone start half past each UTC hour."""
    store = hour_store
    store.write([cems("stove", t0 + m * MIN, 1.0) for m in range(90)])
    got = store.hour_sums(hour_query(t0, t0 + 90 * MIN, offset_ms=30 * MIN))
    assert [(x.ts_ms - t0, x.total, x.valid) for x in got] == [(-30 * MIN, 30.0, 30), (30 * MIN, 60.0, 60)]


def test_hour_sums_see_late_readings_and_flags(hour_store: TimeSeriesStore, t0: int) -> None:
    """What the hour cache keeps of earlier calls never hides a reading or a flag written since."""
    store = hour_store
    query = hour_query(t0, t0 + 2 * 3600_000)
    store.write([cems("stove", t0 + m * MIN, 10.0) for m in range(60)])
    assert [(x.total, x.valid) for x in store.hour_sums(query)] == [(600.0, 60)]
    assert [(x.total, x.valid) for x in store.hour_sums(query)] == [(600.0, 60)]  # again (kept when cached)
    store.write([cems("stove", t0 + 30_000, 40.0)])  # late: minute 0's mean becomes 25
    assert [(x.total, x.valid) for x in store.hour_sums(query)] == [(615.0, 60)]
    store.write([Point("emissions", "s", "stove", t0 + MIN, {"nox_mg_m3_flag": "C"})])  # flagged afterwards
    assert [(x.total, x.valid) for x in store.hour_sums(query)] == [(605.0, 59)]


def test_hour_cache_renewal_and_one_computation_at_a_time(store: TimeSeriesStore, t0: int) -> None:
    """What the KPI warmer relies on: renew_within_s recomputes kept hours before they expire, and callers
    asking at once for many hours (a cold month) wait for one computation instead of each asking the store."""
    hours = SINGLE_FLIGHT_HOURS + 6
    base = t0 - (hours + 10) * 3600_000
    query = hour_query(base, base + hours * 3600_000)
    store.write([cems("stove", base + h * 3600_000 + m * MIN, 10.0) for h in range(hours) for m in range(2)])
    cache = HourCache(store, 900.0)
    computed = recorded_hours(store)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: cache.hour_sums(query), range(4)))
    assert all([(x.total, x.valid) for x in a] == [(20.0, 2)] * hours for a in answers)
    assert computed == [hours]  # once, for four callers
    assert len(cache.hour_sums(query)) == hours
    assert computed == [hours]  # kept
    renewed = cache.hour_sums(query, renew_within_s=cache.ttl_s)
    assert computed == [hours, hours]  # renewed ahead of expiry
    assert renewed == answers[0]


def test_hour_cache_recomputes_only_the_changed_hours(store: TimeSeriesStore, t0: int) -> None:
    """A late reading in one kept hour costs the store that hour, not the day; a query over the same hours at
    other bounds shares what is kept."""
    base = t0 - 24 * 3600_000
    store.write([cems("stove", base + h * 3600_000 + m * MIN, 10.0) for h in range(24) for m in range(3)])
    cache = HourCache(store, 900.0)
    day = hour_query(base, base + 24 * 3600_000)
    first = cache.hour_sums(day)
    computed = recorded_hours(store)
    store.write([cems("stove", base + 5 * 3600_000 + 30 * MIN, 40.0)])  # late, into hour 5
    again = cache.hour_sums(day)
    assert computed == [1]
    assert [(h.ts_ms - base, h.total) for h in again if h.total != 30.0] == [(5 * 3600_000, 70.0)]
    assert [h for h in again if h.ts_ms != base + 5 * 3600_000] == [h for h in first if h.ts_ms != base + 5 * 3600_000]
    assert len(cache.hour_sums(hour_query(base + 2 * 3600_000, base + 6 * 3600_000))) == 4
    assert computed == [1]


def test_hour_cache_asks_the_store_once_for_scattered_hours(store: TimeSeriesStore, t0: int) -> None:
    """Late readings in hours far apart cost one store call (InfluxDB then sends its runs concurrently), not
    one call per run of hours one after another (the cache's first version)."""
    base = t0 - 24 * 3600_000
    store.write([cems("stove", base + h * 3600_000 + m * MIN, 10.0) for h in range(24) for m in range(3)])
    cache = HourCache(store, 900.0)
    day = hour_query(base, base + 24 * 3600_000)
    cache.hour_sums(day)
    computed = recorded_hours(store)
    store.write([cems("stove", base + h * 3600_000 + 30 * MIN, 40.0) for h in (3, 9, 17)])  # late, 3 hours apart
    again = cache.hour_sums(day)
    assert computed == [3]
    assert [(h.ts_ms - base) // 3600_000 for h in again if h.total == 70.0] == [3, 9, 17]


def test_embedded_fingerprints_see_a_value_overwritten_in_place(tmp_path: Path, t0: int) -> None:
    """The embedded store's fingerprints carry the values' totals: a kept hour is not served after one of its
    readings was overwritten in place (InfluxDB's counts cannot see that; its entry expires instead)."""
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    cache = HourCache(store, 900.0)
    query = hour_query(t0, t0 + 3600_000)
    store.write([cems("stove", t0 + m * MIN, 10.0) for m in range(60)])
    assert [(h.total, h.valid) for h in cache.hour_sums(query)] == [(600.0, 60)]
    store.write([cems("stove", t0 + 5 * MIN, 70.0)])  # same point, another value
    assert [(h.total, h.valid) for h in cache.hour_sums(query)] == [(660.0, 60)]
    store.close()


def test_hour_cache_wraps_the_store_and_leaves_its_other_answers_alone(store: TimeSeriesStore, t0: int) -> None:
    cache = HourCache(store, 60.0)
    cache.write([kwh("s", "d", t0 + i * MIN, 100.0 + i) for i in range(3)])
    query = SeriesQuery("energy", "energy_kwh", t0, t0 + 3 * MIN, 3 * MIN, "max", site="s")
    assert cache.series(query) == store.series(query) == [Series("s", "d", [(t0, 102.0)])]
    assert cache.stored_fields([kwh("s", "d", t0, 0.0)]) == {("energy", "s", "d", t0): {"energy_kwh": 100.0}}
    with pytest.raises(ValueError, match="ttl_s"):
        HourCache(store, 0)


def test_kpi_warmer_computes_the_stacked_sites_hours_ahead(store: TimeSeriesStore, t0: int,
                                                           tmp_path: Path) -> None:
    from smartpark.api import kpis
    from smartpark.api.warm import WARM_DAYS, KpiWarmer
    from smartpark.core.reference import default_reference
    from smartpark.core.registry import Registry, parse_park_file

    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    (site,) = [s for s in registry.sites() if s.id == "steel"]
    stacks = [d for d in registry.devices("steel") if d.kind == "cems"]
    store.write([Point("emissions", "steel", stacks[0].id, t0 + m * MIN, {"nox_mg_m3": 20.0, "o2_pct": 16.0})
                        for m in range(60)])
    cache = HourCache(store, 900.0)
    warmer = KpiWarmer(registry, cache, default_reference())
    warmer.start()
    wait_for(lambda: warmer.rounds >= 1)
    warmer.stop()
    computed = recorded_hours(store)
    park = registry.park()
    tz = ZoneInfo(park.timezone if park else "Asia/Shanghai")
    today = datetime.now(tz).date()  # any period within the warmed days, here the last week
    week = kpis.period(tz, today - timedelta(days=min(6, WARM_DAYS - 1)), today + timedelta(days=1))
    sums = kpis.hour_sums(cache, default_reference(), site, stacks, week)
    assert computed == []  # the month's hours were there already
    assert {(h.device, h.field, h.valid) for h in sums} == {(stacks[0].id, "nox_mg_m3", 60)}
    registry.close()
