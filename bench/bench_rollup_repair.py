"""The rollup repair's cost in InfluxDB CPU-seconds: when nothing is late, and after a 3-hour outage of the whole
demo park, beside the alternative of continuous queries that resample far enough back to catch such lateness.

    .venv/bin/python bench/bench_rollup_repair.py [--hours 3] [--idle-runs 30]

A private influxd is started. The demo park's last ``--hours`` (one reading a minute, every device) are written
late, as a gateway's store-and-forward flush would (the backfill path marks them); then:
- smartpark: ``RollupRepairer.run_once()`` with nothing late (``--idle-runs`` times: what it costs every
  minute), then once after the flush (what repairing the outage costs);
- baseline: one run of every rollup's SELECT ... INTO over the last ``--hours`` + 1 h, which is what CQs with
  ``RESAMPLE FOR`` that long would run *every minute* (1-minute rollup) to reach that much lateness.
Checked: after the repair, ``rp_1m``/``rp_1h`` hold as many rows as the raw data has windows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from smartpark.core.catalog import default_catalog
from smartpark.core.clock import now_ms
from smartpark.core.registry import read_park_file
from smartpark.core.store.influx import InfluxStore, quote_ident
from smartpark.core.store.rollups import ROLLUPS, RollupRepairer, rollup_select
from smartpark.platform import demo_park_path
from smartpark.simulators.backfill import backfill
from smartpark.simulators.scenario import default_scenario
from smartpark.simulators.timeline import Timeline

from harness import cpu_seconds, start_influxd

HOUR_MS = 3_600_000


def influx_cpu(pid: int, work: object) -> tuple[float, float, object]:
    """(InfluxDB CPU-s, wall s, result) of ``work()``."""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    result = work()  # type: ignore[operator]
    return cpu_seconds(pid) - cpu0, time.perf_counter() - t0, result


def windows(store: InfluxStore, rp: str, every: str, start: int, end: int) -> tuple[int, int]:
    """(raw windows with data, rollup rows) of emissions' o2_pct over [start, end)."""
    db = quote_ident(store.database)
    step = {"1m": 60_000, "1h": HOUR_MS}[every]
    start, end = start - start % step, end + (-end) % step  # whole windows: a rollup row is labelled by its start
    where = f"WHERE time >= {start}ms AND time < {end}ms"
    raw = store.query(f'SELECT count("o2_pct") FROM {db}."raw"."emissions" {where} '
                      f"GROUP BY time({every}), device fill(none)")[0]
    rolled = store.query(f'SELECT count("o2_pct") FROM {db}.{quote_ident(rp)}."emissions" {where} '
                         "GROUP BY device")[0]
    n_raw = sum(len(s["values"]) for s in raw.get("series", []))
    n_rolled = sum(int(s["values"][0][1]) for s in rolled.get("series", []))
    return n_raw, n_rolled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--idle-runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        influxd = start_influxd(Path(d) / "influxd")
        pid = influxd.proc.pid  # type: ignore[attr-defined]
        try:
            run(influxd.url, pid, args.hours, args.idle_runs)  # type: ignore[attr-defined]
        finally:
            influxd.stop()  # type: ignore[attr-defined]


def run(url: str, pid: int, hours: float, idle_runs: int) -> None:
    catalog = default_catalog()
    store = InfluxStore(url, "bench_rollups", catalog, timeout_s=300)
    store.init()
    end = now_ms() // 60_000 * 60_000 - 15 * 60_000
    start = end - int(hours * HOUR_MS)
    timeline = Timeline(read_park_file(demo_park_path()), default_scenario(), start)
    written = backfill(store, timeline, end, catalog).readings
    repairer = RollupRepairer(store, 60)
    # The flush is marked; first the idle cost needs a repairer that has already taken those marks, so the
    # outage is repaired first and the idle runs follow.
    cpu_fix, wall_fix, report = influx_cpu(pid, repairer.run_once)
    cpu_idle, wall_idle, _ = influx_cpu(pid, lambda: [repairer.run_once() for _ in range(idle_runs)])
    base_start = end - int((hours + 1) * HOUR_MS)
    selects = [f"{rollup_select(catalog, store.database, m, rp)} WHERE time >= {base_start}ms "
               f"AND time < {end}ms GROUP BY time({every}), *"
               for m in sorted({x.domain for x in catalog.metrics.values()}) for rp, every, _, _ in ROLLUPS
               if rp == "rp_1m"]
    cpu_wide, wall_wide, _ = influx_cpu(pid, lambda: [store.query(s) for s in selects])
    print(f"demo park, {hours:g} h late ({written:,} readings), InfluxDB 1.6 on this machine")
    print(f"{'':44} {'InfluxDB CPU-s':>15} {'wall s':>8}")
    print(f"{'smartpark: repair after the outage (once)':44} {cpu_fix:15.3f} {wall_fix:8.3f}  "
          f"({report.marks} marks, {report.statements} statements)")  # type: ignore[attr-defined]
    print(f"{'smartpark: a run with nothing late':44} {cpu_idle / idle_runs:15.4f} {wall_idle / idle_runs:8.4f}  "
          f"(mean of {idle_runs})")
    print(f"{'baseline: one run of RESAMPLE FOR ' + f'{hours + 1:g}h (1m rollup)':44} {cpu_wide:15.3f} "
          f"{wall_wide:8.3f}  (CQs that reach {hours:g} h back run this every minute)")
    per_hour_ours, per_hour_wide = 60 * cpu_idle / idle_runs, 60 * cpu_wide
    print(f"per hour with nothing late: smartpark {per_hour_ours:.3f} CPU-s vs baseline {per_hour_wide:.2f} CPU-s "
          f"({per_hour_wide / max(per_hour_ours, 1e-9):,.0f}x)")
    for rp, every, _, _ in ROLLUPS:
        raw, rolled = windows(store, rp, every, start, end)
        print(f"check {rp}: {rolled:,} rollup rows for {raw:,} raw windows ({'equal' if raw == rolled else 'DIFFER'})")


if __name__ == "__main__":
    main()
