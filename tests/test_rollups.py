"""Rollups repair themselves: points written too late for the continuous queries mark their windows, and the
repairer recomputes exactly those windows so `rp_1m`/`rp_1h` equal the raw data's aggregates (real InfluxDB).
"""

from __future__ import annotations

import pytest

from smartpark.core.clock import now_ms
from smartpark.core.points import Point
from smartpark.core.store.influx import InfluxStore, quote_ident
from smartpark.core.store.rollups import MARKS, RollupRepairer

pytestmark = pytest.mark.influx
HOUR, MINUTE = 3_600_000, 60_000


def late_points(start: int, hours: int) -> list[Point]:
    """A sinter stack and a meter, one reading a minute (two a minute for the stack) over ``hours``."""
    out = []
    for k in range(hours * 60):
        t = start + k * MINUTE
        out.append(Point("emissions", "steel", "sinter-cems", t, {"nox_mg_m3": 30.0 + k % 7, "o2_pct": 16.5}))
        out.append(Point("emissions", "steel", "sinter-cems", t + 30_000, {"nox_mg_m3": 40.0 + k % 5}))
        out.append(Point("energy", "steel", "steel-meter", t, {"energy_kwh": 1000.0 + 2 * k, "power_kw": 120.0}))
    return out


def rows(store: InfluxStore, statement: str) -> dict[int, list[float | None]]:
    [result] = store.query(statement)
    return {int(r[0]): r[1:] for s in result.get("series", []) for r in s["values"]}


def assert_rollups_equal_raw(store: InfluxStore, start: int, end: int) -> int:
    """Every rollup row of the span equals the raw aggregate of its window; returns the rows compared."""
    db = quote_ident(store.database)
    compared = 0
    for rp, every in (("rp_1m", "1m"), ("rp_1h", "1h")):
        for measurement, fields in (("emissions", ("nox_mg_m3", "o2_pct")), ("energy", ("energy_kwh", "power_kw"))):
            aggs = ", ".join(f"{'last' if f == 'energy_kwh' else 'mean'}({quote_ident(f)})" for f in fields)
            where = f"WHERE time >= {start}ms AND time < {end}ms"
            raw = rows(store, f"SELECT {aggs} FROM {db}.\"raw\".{measurement} {where} "  # noqa: S608
                              f"GROUP BY time({every}) fill(none)")
            rolled = rows(store, f"SELECT {', '.join(map(quote_ident, fields))} FROM {db}.{rp}.{measurement} "  # noqa: S608
                                 f"{where}")
            assert raw, (rp, measurement)
            assert rolled == raw, (rp, measurement)
            compared += len(raw)
    return compared


def test_a_three_hour_outage_reaches_both_rollups_once_repaired(influx_store: InfluxStore) -> None:
    start = (now_ms() - 5 * HOUR) // HOUR * HOUR
    influx_store.write(late_points(start, 3))  # the gateway's flush: three hours late
    [marks] = influx_store.query(f"SELECT * FROM {MARKS}")  # noqa: S608
    assert len(marks["series"][0]["values"]) == 2  # one mark per measurement of the write
    db = quote_ident(influx_store.database)
    assert rows(influx_store, f"SELECT count(nox_mg_m3) FROM {db}.rp_1h.emissions") == {}  # noqa: S608
    repairer = RollupRepairer(influx_store, 60)
    report = repairer.run_once()
    assert (report.marks, report.spans, report.statements) == (2, 2, 4)  # 2 measurements x (rp_1m, rp_1h)
    assert assert_rollups_equal_raw(influx_store, start, start + 3 * HOUR) == 2 * (180 + 3)
    again = repairer.run_once()
    assert (again.marks, again.statements) == (0, 0)  # repaired marks are not taken twice
    fresh = RollupRepairer(influx_store, 60)  # a restart resumes from the stored watermark (the marks of the
    assert fresh.run_once().marks <= 2  # last few minutes, which a slow writer may still be adding to, again)
    assert fresh.run_once().marks == 0
    assert assert_rollups_equal_raw(influx_store, start, start + 3 * HOUR) == 2 * (180 + 3)


def test_on_time_points_mark_nothing_and_cost_one_query(influx_store: InfluxStore) -> None:
    t = now_ms() - 30_000
    influx_store.write([Point("energy", "steel", "steel-meter", t, {"energy_kwh": 5.0})])
    assert influx_store.query(f"SELECT * FROM {MARKS}") == [{"statement_id": 0}]  # noqa: S608
    report = RollupRepairer(influx_store, 60).run_once()
    assert (report.marks, report.statements) == (0, 0)


def test_late_points_landing_on_rolled_up_windows_correct_them(influx_store: InfluxStore) -> None:
    """A window the CQs already computed from part of its data gets the rest late: repaired to the full mean."""
    start = (now_ms() - 4 * HOUR) // HOUR * HOUR
    first = late_points(start, 1)
    influx_store.write(first[: len(first) // 2])
    RollupRepairer(influx_store, 60).run_once()
    influx_store.write(first[len(first) // 2:])  # the rest of the hour, later still
    RollupRepairer(influx_store, 60).run_once()
    assert assert_rollups_equal_raw(influx_store, start, start + HOUR) == 2 * (60 + 1)


def test_late_points_weeks_apart_repair_their_own_windows_only(influx_store: InfluxStore) -> None:
    """One reading dated three weeks back in a batch of an hour-old flush: the repair recomputes the windows of
    each, not the three weeks between (80 statements over the whole park's raw data, every time it is sent)."""
    recent = (now_ms() - 2 * HOUR) // HOUR * HOUR
    old = recent - 21 * 24 * HOUR
    points = late_points(recent, 1)
    points.append(Point("energy", "steel", "steel-meter", old, {"energy_kwh": 900.0, "power_kw": 80.0}))
    influx_store.write(points)
    report = RollupRepairer(influx_store, 60).run_once()
    assert (report.marks, report.spans, report.statements) == (3, 3, 6)  # energy: 2 spans, emissions: 1
    assert assert_rollups_equal_raw(influx_store, recent, recent + HOUR) == 2 * (60 + 1)
    db = quote_ident(influx_store.database)
    where = f"WHERE time >= {old}ms AND time < {old + HOUR}ms"
    assert rows(influx_store, f"SELECT energy_kwh FROM {db}.rp_1m.energy {where}") == {old - old % MINUTE: [900.0]}  # noqa: S608
