"""Alert latency: from the publish of the reading that crosses a threshold to the webhook's arrival.

    .venv/bin/python bench/bench_alert_latency.py [--rate 5000] [--seconds 30]

Private Mosquitto and InfluxDB; the ingest (`smartpark ingest`) and the alert engine (`smartpark alerts`) as
separate processes, as in production. A paho publisher sends `--rate` msg/s of background telemetry (199
devices) for `--seconds`; meanwhile a sinter CEMS probe alternates a reading over its NOx limit and one under
the clear value every 250 ms, so each crossing opens an episode. A local HTTP receiver timestamps each
`alert.firing`; latency = arrival - publish of the crossing reading (same clock, same machine).
Goal: p99 under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from bench_ingest import registry_url, start_pipeline
from bench_latency import client, load

from smartpark.core.clock import now_ms

from factories import HookServer  # tests/ is on the path once harness is imported
from harness import Influx, bench_args, cpu_seconds, start_servers, wait_line

PY = sys.executable
PROBE_SITE, PROBE_DEVICE = "probe-site", "probe-cems"
RULE = {"id": "probe-nox", "kind": "threshold", "severity": "critical", "device": PROBE_DEVICE,
        "conditions": [{"metric": "nox_mg_m3", "limit": 50, "clear": 40, "o2_corrected": True}]}


class Arrivals(HookServer):
    """A webhook receiver that notes when each firing arrived, keyed by the crossing reading's ts."""

    def __init__(self) -> None:
        self.at: dict[int, float] = {}
        super().__init__()

    def post(self, request: BaseHTTPRequestHandler) -> None:
        body = json.loads(request.rfile.read(int(request.headers.get("content-length", 0))))
        if body.get("type") == "alert.firing":
            self.at.setdefault(body["readings"][-1]["ts"], time.monotonic())
        request.send_response(204)
        request.end_headers()


def prepare(tmp: Path, receiver_url: str) -> str:
    """The bench registry plus the probe stack, the probe rule and the receiver's subscription."""
    from smartpark.alerts import AlertRepo, RuleSpec
    from smartpark.alerts.models import WebhookSubscription
    from smartpark.alerts.signing import new_secret
    from smartpark.core.registry import Registry, parse_park_file

    url = registry_url(tmp)
    reg = Registry(url)
    reg.load_park(parse_park_file(
        f"park: {{id: bench}}\nsites:\n  - {{id: {PROBE_SITE}, name: P, enterprise: P, industry: steel, "
        f"area_m2: 1000, devices: [{{id: {PROBE_DEVICE}, kind: cems, source_type: sinter}}]}}\n"))
    repo = AlertRepo(reg.engine)
    repo.init()
    repo.put_rule(RuleSpec.model_validate(RULE))
    repo.add_subscription(WebhookSubscription(
        id="wh_bench", url=receiver_url, secret=new_secret(), sites=[], severities=[], rules=["probe-nox"],
        enabled=True, disabled_reason="", description="bench", created_ms=now_ms()))
    reg.close()
    return url


def start_engine(tmp: Path, mosq: object, influx_url: str, db: str, reg: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")} | {
        "SMARTPARK_MQTT_URL": f"mqtt://{mosq.host}:{mosq.port}", "SMARTPARK_INFLUX_URL": influx_url,  # type: ignore[attr-defined]
        "SMARTPARK_INFLUX_DB": db, "SMARTPARK_DATA_DIR": str(tmp / "alerts-data"), "SMARTPARK_DATABASE_URL": reg,
        "SMARTPARK_ALERTS_CLIENT_ID": f"smartpark-bench-alerts-{uuid.uuid4().hex[:6]}",
        "SMARTPARK_ALERTS_WEBHOOK_ALLOW_PRIVATE": "true"}
    log = tmp / "alerts.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([PY, "-m", "smartpark", "alerts"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp)
    wait_line(log, "alert engine subscribed", proc)
    return proc


def probe(host: str, port: int, seconds: float, arrivals: Arrivals) -> list[float]:
    """Alternate over/under readings every 250 ms; latencies of the crossings that fired."""
    c = client(host, port)
    sent: dict[int, float] = {}
    topic = f"smartpark/v1/{PROBE_SITE}/{PROBE_DEVICE}/telemetry"
    t0, k = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        ts = now_ms()
        over = k % 2 == 0
        body = {"ts": ts, "metrics": {"nox_mg_m3": 80.0 if over else 20.0, "o2_pct": 16.0}}
        if over:
            sent[ts] = time.monotonic()
        c.publish(topic, json.dumps(body), qos=1)
        k += 1
        time.sleep(0.25)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(arrivals.at) < len(sent):
        time.sleep(0.1)
    c.disconnect()
    c.loop_stop()
    return [arrivals.at[ts] - t for ts, t in sent.items() if ts in arrivals.at]


def main() -> None:
    args = bench_args(__doc__, rate=5000, seconds=30.0)
    arrivals = Arrivals()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mosq, influxd = start_servers(tmp)
        influx = Influx(influxd.url)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            reg = prepare(tmp, arrivals.url)
            influx.reset("alert_bench")
            procs.append(start_pipeline("smartpark", tmp, mosq, influx.url, "alert_bench", reg, {}))
            procs.append(start_engine(tmp, mosq, influx.url, "alert_bench", reg))
            cpu0 = [cpu_seconds(p.pid) for p in procs]
            stop, published = threading.Event(), []
            loader = threading.Thread(target=lambda: published.append(
                load(mosq.host, mosq.port, args.rate, args.seconds, stop)))
            loader.start()
            time.sleep(2)  # steady state first
            lat = probe(mosq.host, mosq.port, args.seconds - 4, arrivals)
            stop.set()
            loader.join()
            cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=60)
            mosq.stop()
            influxd.stop()
            arrivals.close()
    report(args, lat, published[0] if published else 0, cpu)


def report(args: argparse.Namespace, lat: list[float], published: int, cpu: list[float]) -> None:
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 2 else [float("nan")] * 99
    row = {"crossings": len(lat), "background_published": published,
           "background_rate": round(published / args.seconds), "p50_ms": round(q[49] * 1000),
           "p99_ms": round(q[98] * 1000), "max_ms": round(max(lat) * 1000) if lat else None,
           "ingest_cpu_s": round(cpu[0], 1), "alerts_cpu_s": round(cpu[1], 1)}
    print(json.dumps(row))
    print(f"\npublish of the crossing reading -> webhook arrival, ingest under {args.rate:,} msg/s for "
          f"{args.seconds:.0f} s")
    print(f"{'crossings':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}   goal: p99 < 2000 ms")
    print(f"{row['crossings']:>9} {row['p50_ms']:>7} {row['p99_ms']:>7} {row['max_ms']:>7}")


if __name__ == "__main__":
    sys.exit(main())
