"""Load generator into Mosquitto at QoS 1: msg/s acknowledged, beside paho-mqtt as the baseline, same broker.

    .venv/bin/python bench/bench_loadgen.py [--n 1000000] [--processes 1 2 3] [--baseline-n 200000]

Workload: 200 devices (site-XX/dev-YYY) on the contract's telemetry topics, ~75-byte JSON readings, QoS 1,
no subscriber (the broker's cost is receiving, acknowledging and routing). A private Mosquitto (persistence
off, max_inflight_messages 1000). Baseline: one paho client (loop thread, 1,000 in flight, the pattern of
tests/factories.publish_many). smartpark: ``simulators/loadgen.py`` (``mqtt5`` codec over raw sockets,
pipelined with a window of 2,000 unacked ids per connection, 2 connections per process), for each
``--processes``. A message counts once its PUBACK arrived. Goal: >= 50,000 msg/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from smartpark.core.clock import now_ms
from smartpark.core.contract import telemetry_topic
from smartpark.core.mqtt import Endpoint
from smartpark.simulators.loadgen import run_load

from harness import cpu_seconds, start_mosquitto

CONF = "allow_anonymous true\npersistence false\nmax_inflight_messages 1000\nmax_queued_messages 2000000\n"
DEVICES = [(f"site-{d // 20:02d}", f"dev-{d:03d}") for d in range(200)]


def paho_baseline(host: str, port: int, n: int, window: int = 1000) -> float:
    """msg/s for ``n`` QoS-1 publishes from one paho client (tests/factories.publish_many), every PUBACK in."""
    from factories import publish_many  # tests/ is on sys.path once harness is imported

    topics = [telemetry_topic(s, d) for s, d in DEVICES]
    t0 = now_ms() - 3_600_000
    messages = [(topics[i % 200], b'{"ts":%d,"seq":%d,"metrics":{"power_kw":%d.25,"energy_kwh":%d.5}}' % (
        t0 + 1000 * (i // 200), i // 200, 100 + i % 200, i // 200)) for i in range(n)]
    started = time.perf_counter()
    publish_many(host, port, messages, window=window)
    return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--baseline-n", type=int, default=200_000)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    mosq = start_mosquitto(CONF, Path(tempfile.mkdtemp(prefix="bench-loadgen-")) / "mosquitto")
    rows = []
    try:
        broker_cpu = cpu_seconds(mosq.proc.pid)
        rows.append(("baseline: paho, 1 client", 1, paho_baseline(mosq.host, mosq.port, args.baseline_n), 0.0))
        for p in args.processes:
            broker_cpu = cpu_seconds(mosq.proc.pid)
            result = run_load(Endpoint(mosq.host, mosq.port), DEVICES, args.n, processes=p, connections=2)
            assert result.messages == args.n, f"{result.messages} of {args.n} acknowledged"
            busy = (cpu_seconds(mosq.proc.pid) - broker_cpu) / result.seconds
            rows.append((f"smartpark loadgen, {p} process(es)", p, result.rate, busy))
    finally:
        mosq.stop()
    print(f"\nQoS 1 into Mosquitto ({os.cpu_count()} cores, shared), 200 devices, every PUBACK counted")
    print(f"{'publisher':<36}{'msg/s':>12}{'broker CPU':>12}")
    for name, _, rate, busy in rows:
        print(f"{name:<36}{rate:>12,.0f}{(f'{busy:.0%}' if busy else '-'):>12}")
    best = max(r[2] for r in rows[1:])
    verdict = "met" if best >= 50_000 else "NOT met"
    print(f"best {best:,.0f} msg/s, {best / rows[0][2]:.1f}x paho; goal 50,000 msg/s: {verdict}")


if __name__ == "__main__":
    main()
