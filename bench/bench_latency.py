"""Publish-to-queryable latency under a steady load: smartpark's ingest beside the peer batched pipeline.

    .venv/bin/python bench/bench_latency.py [--rate 5000] [--seconds 30]

A paho publisher sends `--rate` msg/s (QoS 1, the peer workload's payload, 199 devices) for `--seconds`;
a probe device publishes a numbered reading every 100 ms, and a poller asks InfluxDB for the probe's last
value every 20 ms. Latency = the poll that first sees probe k minus the publish time of k (20 ms
resolution). Each pipeline runs alone against the same private Mosquitto and InfluxDB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from bench_ingest import registry_url, start_pipeline

from smartpark.core.clock import now_ms

from harness import Influx, bench_args, bench_servers

PROBE = ("site-09", "dev-199")


def payload(seq: int, ts: int, value: float) -> bytes:
    return (b'{"ts":%d,"seq":%d,"metrics":{"power_kw":%r,"energy_kwh":%d,"so2_mg_m3":3.5,"o2_pct":18.5}}'
            % (ts, seq, value, seq))


def client(host: str, port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lat-{uuid.uuid4().hex[:6]}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(host, port)
    c.loop_start()
    return c


def load(host: str, port: int, rate: int, seconds: float, stop: threading.Event) -> int:
    """Publish `rate` msg/s in 10 ms ticks across 199 devices; returns how many were published."""
    c, sent, t0 = client(host, port), 0, time.monotonic()
    ts0 = now_ms() - 3600_000
    while not stop.is_set() and (elapsed := time.monotonic() - t0) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            dev = sent % 199
            c.publish(f"smartpark/v1/site-{dev // 20:02d}/dev-{dev:03d}/telemetry",
                      payload(sent, ts0 + sent, 1.5), qos=1)
            sent += 1
        time.sleep(0.01)
    c.disconnect()
    c.loop_stop()
    return sent


def probe_latencies(host: str, port: int, influx: Influx, db: str, measurement: str, seconds: float
                    ) -> list[float]:
    c = client(host, port)
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    ts0 = now_ms() - 60_000
    query = f'SELECT last("power_kw") FROM "{measurement}" WHERE "device" = \'{PROBE[1]}\''
    t0, k = time.monotonic(), 0
    next_probe = t0
    while time.monotonic() - t0 < seconds + 5:
        now = time.monotonic()
        if now >= next_probe and now - t0 < seconds:
            k += 1
            sent[k] = time.monotonic()
            c.publish(f"smartpark/v1/{PROBE[0]}/{PROBE[1]}/telemetry", payload(k, ts0 + k * 10, float(k)), qos=1)
            next_probe += 0.1
        res = influx.q(query, db)["results"][0]
        if "series" in res:
            latest = int(res["series"][0]["values"][0][1])
            for j in range(1, latest + 1):
                seen.setdefault(j, time.monotonic())
        time.sleep(0.02)
    c.disconnect()
    c.loop_stop()
    return [seen[j] - sent[j] for j in sent if j in seen]


def run(name: str, args: argparse.Namespace, tmp: Path, mosq: object, influx: Influx, reg: str) -> dict:
    db = f"lat_{name}"
    influx.reset(db)
    proc = start_pipeline(name, tmp, mosq, influx.url, db, reg, {})
    stop = threading.Event()
    published: list[int] = []
    loader = threading.Thread(
        target=lambda: published.append(load(mosq.host, mosq.port, args.rate, args.seconds, stop)))
    loader.start()
    time.sleep(2)  # steady state first
    lat = probe_latencies(mosq.host, mosq.port, influx, db, "energy" if name == "smartpark" else "telemetry",
                          args.seconds - 4)
    stop.set()
    loader.join()
    proc.terminate()
    proc.wait(timeout=60)
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 2 else [float("nan")] * 99
    return {"pipeline": name, "probes": len(lat), "published": published[0] if published else 0,
            "p50_ms": round(q[49] * 1000), "p95_ms": round(q[94] * 1000), "p99_ms": round(q[98] * 1000),
            "max_ms": round(max(lat) * 1000) if lat else None}


def main() -> None:
    args = bench_args(__doc__, rate=5000, seconds=30.0, pipelines="smartpark,peer")
    with bench_servers() as (tmp, mosq, influx):
        reg = registry_url(tmp)
        rows = [run(name, args, tmp, mosq, influx, reg) for name in args.pipelines.split(",")]
    for row in rows:
        print(json.dumps(row))
    print(f"\npublish -> queryable at {args.rate:,} msg/s for {args.seconds:.0f} s (probe every 100 ms, 20 ms polls)")
    print(f"{'pipeline':<12} {'probes':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for r in rows:
        print(f"{r['pipeline']:<12} {r['probes']:>6} {r['p50_ms']:>7} {r['p95_ms']:>7} {r['p99_ms']:>7} "
              f"{r['max_ms']:>7}")


if __name__ == "__main__":
    sys.exit(main())
