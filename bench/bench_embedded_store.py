"""Write rate of the embedded store (SQLite, WAL) beside a naive SQLite baseline, same run, same disk.

    .venv/bin/python bench/bench_embedded_store.py [--points 200000]

smartpark writes batches of 5,000 points (the ingest's default) in one transaction into a WITHOUT ROWID
table keyed (series, field, time) plus the latest-value upsert. The baseline is the usual first attempt: one
INSERT and commit per reading into a rowid table with an index (run on fewer points: it is slow).
Both columns are points/s and CPU-seconds per 100k points; each point carries 2 fields (power, energy).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from smartpark.core.catalog import default_catalog
from smartpark.core.clock import now_ms
from smartpark.core.points import Point
from smartpark.core.store.embedded import EmbeddedStore

BATCH = 5000


def workload(n: int, t0: int) -> list[Point]:
    return [Point("energy", f"site-{i % 10}", f"meter-{i % 200}", t0 + (i // 200) * 60_000,
                  {"power_kw": float(i % 977), "energy_kwh": float(i)}) for i in range(n)]


def run_smartpark(points: list[Point], path: Path) -> tuple[float, float]:
    store = EmbeddedStore(path, default_catalog())
    store.init()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(points), BATCH):
        store.write(points[i:i + BATCH])
    result = time.perf_counter() - wall, time.process_time() - cpu
    store.close()
    return result


def run_baseline(points: list[Point], path: Path) -> tuple[float, float]:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE readings (measurement TEXT, site TEXT, device TEXT, ts INTEGER, field TEXT, value REAL)")
    conn.execute("CREATE INDEX readings_idx ON readings (site, device, field, ts)")
    wall, cpu = time.perf_counter(), time.process_time()
    for p in points:
        conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?)",
                         [(p.measurement, p.site, p.device, p.ts_ms, k, v) for k, v in p.fields.items()])
        conn.commit()
    result = time.perf_counter() - wall, time.process_time() - cpu
    conn.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--baseline-points", type=int, default=5_000)
    args = parser.parse_args()
    t0 = (now_ms() - 86_400_000) // 60_000 * 60_000
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        ours = run_smartpark(workload(args.points, t0), Path(tmp) / "ours.sqlite")
        base = run_baseline(workload(args.baseline_points, t0), Path(tmp) / "base.sqlite")
    rows = [("smartpark EmbeddedStore, 5,000/txn", args.points, *ours),
            ("baseline: INSERT + commit per reading", args.baseline_points, *base)]
    print(f"{'writer':<40} {'points':>8} {'points/s':>10} {'CPU-s/100k':>11}")
    for name, n, wall, cpu in rows:
        print(f"{name:<40} {n:>8,} {n / wall:>10,.0f} {cpu / n * 1e5:>11.2f}")
    print(f"ratio smartpark/baseline points/s: {(rows[0][1] / ours[0]) / (rows[1][1] / base[0]):.1f}x")


if __name__ == "__main__":
    main()
