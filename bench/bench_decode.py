"""Decode + validate cost per reading: smartpark's msgspec decoder beside a stdlib-json baseline, same run.

    .venv/bin/python bench/bench_decode.py [--n 200000]

The baseline is what a hand-written ingest does: json.loads, then the same checks in Python (catalog
lookup, type, finiteness, range, flags, timestamp). Figures are CPU microseconds per reading (process time),
best of 5 repeats; the ratio is the number to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from smartpark.core import clock
from smartpark.core.catalog import default_catalog
from smartpark.core.contract import ReadingDecoder

CATALOG = default_catalog()


def baseline_decode(payload: bytes, now_ms: int) -> list[dict[str, object]]:
    obj = json.loads(payload)
    if not isinstance(obj, dict) or not isinstance(obj.get("metrics"), dict):
        raise ValueError("bad_schema")
    for name, value in obj["metrics"].items():
        metric = CATALOG.get(name)
        if metric is None:
            raise ValueError("unknown_metric")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("bad_schema")
        if not math.isfinite(value):
            raise ValueError("non_finite")
        if not metric.min <= value <= metric.max:
            raise ValueError("out_of_range")
    for name, flag in (obj.get("flags") or {}).items():
        if flag not in "NFMSDCTB" or name not in obj["metrics"]:
            raise ValueError("bad_schema")
    ts = obj.get("ts", now_ms)
    if not isinstance(ts, int) or ts > now_ms + 300_000:
        raise ValueError("ts_out_of_window")
    return [obj]


def measure(fn: object, payload: bytes, now_ms: int, n: int) -> float:
    best = math.inf
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            fn(payload, now_ms)  # type: ignore[operator]
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    now = clock.now_ms()
    payload = json.dumps({"ts": now, "seq": 42, "metrics": {"so2_mg_m3": 18.2, "nox_mg_m3": 41.0, "pm_mg_m3": 3.1,
                          "o2_pct": 16.4, "flow_nm3_h": 512000}, "flags": {"nox_mg_m3": "C"}}).encode()
    decoder = ReadingDecoder(CATALOG, retention_ms=3650 * 86_400_000)
    ours_out = decoder.decode("steel-works", "sinter-1-cems", payload, now)
    if ours_out.rejections or not ours_out.readings:
        raise SystemExit(f"the benchmark payload does not decode: {ours_out}")
    ours = measure(lambda p, t: decoder.decode("steel-works", "sinter-1-cems", p, t), payload, now, args.n)
    base = measure(baseline_decode, payload, now, args.n)
    print(f"typical CEMS reading, {len(payload)} bytes, 5 metrics + 1 flag, n={args.n}, best of 5, CPU µs/reading")
    print(f"{'decoder':<44} {'µs/reading':>10} {'readings/s/core':>16}")
    print(f"{'smartpark ReadingDecoder (msgspec)':<44} {ours:>10.2f} {1e6 / ours:>16,.0f}")
    print(f"{'baseline: json.loads + checks in Python':<44} {base:>10.2f} {1e6 / base:>16,.0f}")
    print(f"ratio baseline/smartpark: {base / ours:.2f}x")


if __name__ == "__main__":
    main()
