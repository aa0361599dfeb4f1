"""Backfill into a real InfluxDB: a month of the demo park at one reading a minute, beside the per-reading path.

    .venv/bin/python bench/bench_backfill.py [--days 30] [--baseline-days 1] [--url http://127.0.0.1:8086]

The demo park has 203 reporting devices: 30 days x 1,440 minutes x 203 = 8.77 million readings (goal: within
60 s). smartpark: ``simulators/backfill.py`` (line protocol built from numpy arrays, two writer threads).
Baseline, same run, same server: the straightforward path, a ``Point`` per reading and ``InfluxStore.write``
(``lines()`` + gzip) in 5,000-point posts, over ``--baseline-days``. Each writes its own database; the stored
count is checked afterwards. A private influxd is started unless ``--url`` names one.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from smartpark.core.catalog import default_catalog
from smartpark.core.clock import now_ms
from smartpark.core.registry import read_park_file
from smartpark.core.store.influx import InfluxStore, quote_ident
from smartpark.platform import demo_park_path
from smartpark.simulators.backfill import backfill, frame_points
from smartpark.simulators.progress import progress_bar
from smartpark.simulators.scenario import default_scenario
from smartpark.simulators.timeline import Timeline

from harness import bench_args, start_influxd

DAY_MS = 86_400_000
POST_POINTS = 5000


def fresh_store(url: str, name: str) -> InfluxStore:
    store = InfluxStore(url, name, default_catalog(), timeout_s=120)
    store.query(f"DROP DATABASE {quote_ident(name)}", with_db=False)
    store.init()
    return store


def stored(store: InfluxStore) -> int:
    total = 0
    for measurement, field in (("energy", "power_kw"), ("emissions", "o2_pct"), ("greening", "ndvi")):
        result = store.query(f"SELECT count({quote_ident(field)}) FROM {quote_ident(measurement)}")[0]
        total += int(result["series"][0]["values"][0][1]) if result.get("series") else 0
    return total


def baseline(url: str, start_ms: int, days: float) -> tuple[int, float]:
    """Point per reading, InfluxStore.write: (readings, seconds)."""
    catalog, store = default_catalog(), fresh_store(url, "bench_backfill_points")
    timeline = Timeline(read_park_file(demo_park_path()), default_scenario(), start_ms)
    started, n = time.perf_counter(), 0
    for frame in timeline.frames(start_ms + round(days * DAY_MS), chunk=60):
        points = frame_points(frame, catalog)
        for k in range(0, len(points), POST_POINTS):
            store.write(points[k : k + POST_POINTS])
        n += len(points)
    seconds = time.perf_counter() - started
    assert stored(store) == n, "baseline: stored count differs"
    store.close()
    return n, seconds


def smartpark(url: str, start_ms: int, days: float) -> tuple[int, float]:
    catalog, store = default_catalog(), fresh_store(url, "bench_backfill")
    timeline = Timeline(read_park_file(demo_park_path()), default_scenario(), start_ms)
    total = sum(len(m.refs) for m in timeline.kinds) * round(days * 1440)
    with progress_bar(total, "backfill") as advance:
        result = backfill(store, timeline, start_ms + round(days * DAY_MS), catalog, progress=advance)
    count = stored(store)
    assert count == result.readings, f"stored {count} of {result.readings}"
    store.close()
    return result.readings, result.seconds


def main() -> None:
    args = bench_args(__doc__, days=30.0, baseline_days=1.0, url="")
    server = None if args.url else start_influxd(Path(tempfile.mkdtemp(prefix="bench-backfill-")) / "influxd")
    url = args.url or server.url  # type: ignore[union-attr]
    start_ms = (now_ms() - round(args.days * DAY_MS)) // 60_000 * 60_000
    try:
        n_base, s_base = baseline(url, start_ms, args.baseline_days)
        n, s = smartpark(url, start_ms, args.days)
    finally:
        if server is not None:
            server.stop()
    print(f"\nbackfill into InfluxDB 1.6 ({url}), demo park, one reading a minute per device", file=sys.stderr)
    print(f"{'path':<36}{'readings':>12}{'seconds':>10}{'readings/s':>14}")
    print(f"{'baseline: Point + InfluxStore.write':<36}{n_base:>12,}{s_base:>10.1f}{n_base / s_base:>14,.0f}")
    print(f"{'smartpark: arrays -> line protocol':<36}{n:>12,}{s:>10.1f}{n / s:>14,.0f}")
    print(f"speed-up {n / s / (n_base / s_base):.1f}x; {args.days:g} days "
          f"{'within' if s <= 60 else 'NOT within'} the 60 s goal; stored counts checked")


if __name__ == "__main__":
    main()
