"""smartpark's ingest beside the hand-written batched peer pipeline, same workload, same servers, one run.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_ingest.py [--n 200000] [--reps 3] [--tls] [--backlog] [--batch]

Workload: shared/bench/peers (200 devices, 4 metrics per message, QoS 1, unique (device, ts)), published on
the contract's topics (TOPIC_PREFIX=smartpark/v1) by 200 `mosquitto_pub -l` processes (cpub.sh). The pipelines
run one after the other (interleaved over reps) against a private Mosquitto (max_inflight_messages 1000) and a
private InfluxDB. For each: msg/s from publisher launch until InfluxDB holds every point (its shard counters
are polled, then one exact count confirms: polling count() alone scans the growing data and loads the very
server being measured), pipeline CPU-seconds per 100k messages (/proc utime+stime), peak RSS, loss.
smartpark stores 2 points per message (energy and emissions measurements), the peer 1. `--batch` adds
smartpark alone on batch payloads (100 readings/message, `--batch-n` readings), with InfluxDB's CPU too.
`--tls` runs every pipeline a second time (interleaved) through a TLS listener of the same Mosquitto (a CA
made for the run; smartpark with mqtts:// and SMARTPARK_MQTT_CA_FILE, the peer unchanged through
bench/peer_tls.py, which gives its paho client the CA) and reports TLS against plain text; the publishers stay
on the plain listener, so the difference is the pipelines' TLS receive path.
`--backlog` also times each pipeline draining a backlog: it is paused (SIGSTOP, still connected) while the
publishers run, so the broker queues all N messages, and timed from its resume (SIGCONT) until InfluxDB holds
them. The live runs measure a pipeline sharing 2 cores with 200 publishers, Mosquitto and InfluxDB: one that
keeps up finishes with the publishers and is measured at their rate. The backlog run measures what it can take
(the catch-up after an ingest restart or a broker reconnect), the publishers no longer sharing the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from smartpark.core.mqtt import Endpoint
from smartpark.simulators.publisher import Connection

from harness import PEERS, Influx, bench_servers, cpu_seconds, peak_rss_mib, wait_line

PY = sys.executable


def gen_lines(tmp: Path, n: int) -> Path:
    out = tmp / f"lines-{n}"
    env = {**os.environ, "TOPIC_PREFIX": "smartpark/v1"}
    subprocess.run([PY, str(PEERS / "gen_lines.py"), str(out), "--total", str(n)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return out


def registry_url(tmp: Path) -> str:
    """A registry knowing the workload's 200 devices (site-XX/dev-YYY), so the topic binding passes."""
    from smartpark.core.registry import Registry, parse_park_file

    sites = "\n".join(
        f"  - {{id: site-{s:02d}, name: S{s}, enterprise: E{s}, industry: steel, area_m2: 1000, devices: ["
        + ", ".join(f"{{id: dev-{d:03d}, kind: gateway}}" for d in range(s * 20, s * 20 + 20)) + "]}"
        for s in range(10))
    url = f"sqlite:///{tmp / 'meta.sqlite'}"
    reg = Registry(url)
    reg.init()
    reg.load_park(parse_park_file(f"park: {{id: bench}}\nsites:\n{sites}\n"))
    reg.close()
    return url


def start_pipeline(name: str, tmp: Path, mosq: object, influx_url: str, db: str, reg: str,
                   extra_env: dict[str, str], tls: bool = False) -> subprocess.Popen[bytes]:
    log = tmp / f"{name}-{db}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")}
    listener = mosq.tls if tls else None  # type: ignore[attr-defined]
    url = f"mqtts://{mosq.host}:{listener.port}" if listener else f"mqtt://{mosq.host}:{mosq.port}"
    if name == "smartpark":
        if listener:
            env["SMARTPARK_MQTT_CA_FILE"] = str(listener.ca_file)
        env |= {"SMARTPARK_MQTT_URL": url, "SMARTPARK_INFLUX_URL": influx_url,
                "SMARTPARK_INFLUX_DB": db, "SMARTPARK_DATA_DIR": str(tmp / f"data-{db}"),
                "SMARTPARK_DATABASE_URL": reg, "SMARTPARK_INGEST_CLIENT_ID": f"smartpark-bench-{uuid.uuid4().hex[:6]}",
                "SMARTPARK_INGEST_METRICS_PORT": "0",  # the machine may run another ingest on 9108
                **extra_env}
        cmd, ready = [PY, "-m", "smartpark", "ingest"], "ingest subscribed"
    else:
        env |= {"MQTT_HOST": mosq.host, "MQTT_PORT": str(listener.port if listener else mosq.port),
                "INFLUX_URL": influx_url, "TOPIC_PREFIX": "smartpark/v1"}
        cmd, ready = [PY, str(PEERS / "pipe_batched.py"), "--db", db], "READY"
        if listener:
            env["MQTT_CA_FILE"] = str(listener.ca_file)
            cmd = [PY, str(Path(__file__).with_name("peer_tls.py")), str(PEERS / "pipe_batched.py"), "--db", db]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    wait_line(log, ready, proc)
    return proc


def run_one(name: str, args: argparse.Namespace, tmp: Path, mosq: object, influx: Influx, reg: str,
            lines_dir: Path, rep: int, tls: bool = False, backlog: bool = False) -> dict[str, object]:
    """One pipeline, one run. ``backlog``: the pipeline is paused (SIGSTOP, still connected) while the
    publishers run, so the broker queues every message; the clock starts when it is resumed (SIGCONT) and its
    rate is how fast it drains a backlog, with the publishers no longer sharing the cores."""
    db = f"bench_{name}_{rep}{'_tls' if tls else ''}{'_backlog' if backlog else ''}"
    influx.reset(db)
    proc = start_pipeline(name, tmp, mosq, influx.url, db, reg, {}, tls=tls)
    measurement = "energy" if name == "smartpark" else "telemetry"
    time.sleep(0.3)
    if backlog:
        proc.send_signal(signal.SIGSTOP)
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    env = {**os.environ, "MQTT_HOST": mosq.host, "MQTT_PORT": str(mosq.port)}
    pub = subprocess.Popen([str(PEERS / "cpub.sh"), str(lines_dir), "1", "100"], env=env,
                           stdout=subprocess.DEVNULL)
    if backlog:
        pub.wait()  # every message acknowledged by the broker: all queued for the paused pipeline
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        proc.send_signal(signal.SIGCONT)
    per_message = 2 if name == "smartpark" else 1  # smartpark: an energy and an emissions point
    count, arrived = influx.wait_stored(db, measurement, "power_kw", args.n, args.n * per_message,
                                        lambda: pub.poll() is not None)
    wall, cpu, rss = arrived - t0, cpu_seconds(proc.pid) - cpu0, peak_rss_mib(proc.pid)
    pub.wait()
    proc.terminate()
    proc.wait(timeout=60)
    influx.q(f'DROP DATABASE "{db}"')
    return {"pipeline": label(name, tls, backlog), "rep": rep, "n": args.n, "stored": count, "loss": args.n - count,
            "msg_s": round(count / wall), "cpu_s_per_100k": round(cpu * 1e5 / args.n, 3), "peak_rss_mib": round(rss)}


def label(name: str, tls: bool, backlog: bool) -> str:
    return f"{name}{'+tls' if tls else ''}{' backlog' if backlog else ''}"


def run_batches(args: argparse.Namespace, tmp: Path, mosq: object, influx: Influx, reg: str,
                rep: int) -> dict[str, object]:
    """smartpark alone: batch payloads of 100 readings per message (store-and-forward traffic)."""
    db = f"bench_batches_{rep}"
    influx.reset(db)
    proc = start_pipeline("smartpark", tmp, mosq, influx.url, db, reg, json.loads(os.environ.get("BENCH_ENV", "{}")))
    t0_ms = (int(time.time()) // 3600 - 24) * 3600_000
    per_msg, msgs = 100, args.batch_n // 100
    messages = []
    for m in range(msgs):
        dev = m % 200
        readings = ",".join(
            '{"ts":%d,"metrics":{"power_kw":%d.25,"energy_kwh":%d}}' % (t0_ms + (m // 200 * per_msg + k) * 1000, k, m)
            for k in range(per_msg))
        messages.append((f"smartpark/v1/site-{dev // 20:02d}/dev-{dev:03d}/telemetry",
                         ('{"readings":[%s]}' % readings).encode()))
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    server_cpu0 = cpu_seconds(influx.pid) if influx.pid else 0.0
    # the platform's own QoS 1 publisher (simulators.publisher, ~10x cheaper than paho): the publisher shares
    # the 2 cores with the ingest and InfluxDB, so a costly one would be measured as well
    conn = Connection(Endpoint(mosq.host, mosq.port), f"bench-pub-{uuid.uuid4().hex[:6]}", window=200)
    conn.connect()
    for topic, body in messages:
        conn.publish(topic, body)
    conn.drain()
    conn.close()
    publish_s = time.monotonic() - t0
    readings = msgs * per_msg
    count, arrived = influx.wait_stored(db, "energy", "power_kw", readings, readings, lambda: True)
    wall, cpu = arrived - t0, cpu_seconds(proc.pid) - cpu0
    server_cpu = cpu_seconds(influx.pid) - server_cpu0 if influx.pid else float("nan")
    proc.terminate()
    proc.wait(timeout=60)
    influx.q(f'DROP DATABASE "{db}"')
    return {"pipeline": "smartpark (batches of 100)", "rep": rep, "n": readings, "stored": count,
            "loss": readings - count, "readings_s": round(count / wall),
            "cpu_s_per_100k_readings": round(cpu * 1e5 / readings, 3),
            "influxd_cpu_s_per_100k_readings": round(server_cpu * 1e5 / readings, 3),
            "publisher_s": round(publish_s, 2), "wall_s": round(wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pipelines", default="smartpark,peer")
    parser.add_argument("--batch", action="store_true", help="also run smartpark on batch payloads")
    parser.add_argument("--batch-n", type=int, default=1_000_000, help="readings in the batch run")
    parser.add_argument("--tls", action="store_true", help="also run each pipeline over TLS (mqtts://)")
    parser.add_argument("--tls-only", action="store_true", help="run the pipelines over TLS only")
    parser.add_argument("--backlog", action="store_true",
                        help="also time each pipeline draining a backlog (paused while published)")
    args = parser.parse_args()
    modes = [True] if args.tls_only else [False, True] if args.tls else [False]
    kinds = [False, True] if args.backlog else [False]
    with bench_servers(tls=args.tls or args.tls_only) as (tmp, mosq, influx):
        reg, lines_dir = registry_url(tmp), gen_lines(tmp, args.n)
        rows = []
        for rep in range(1, args.reps + 1):
            for backlog in kinds:
                for tls in modes:
                    for name in args.pipelines.split(","):
                        row = run_one(name, args, tmp, mosq, influx, reg, lines_dir, rep, tls, backlog)
                        print(json.dumps(row), flush=True)
                        rows.append(row)
        for backlog in kinds if rows else []:
            for tls in modes:
                report(rows, args, tls, backlog)
            if len(modes) == 2:
                tls_cost(rows, args, backlog)
        if args.batch:
            batch_rows = []
            for rep in range(1, args.reps + 1 if args.reps else 2):
                batch_rows.append(run_batches(args, tmp, mosq, influx, reg, rep))
                print(json.dumps(batch_rows[-1]), flush=True)
            rates = sorted(r["readings_s"] for r in batch_rows)  # type: ignore[type-var]
            print(f"batch payloads: median {statistics.median(rates):,.0f} readings/s over {len(rates)} runs "
                  f"(min {rates[0]:,}, max {rates[-1]:,}; goal >= 250,000)")


def medians(rows: list[dict[str, object]], names: list[str]) -> dict[str, dict[str, float]]:
    return {n: {k: statistics.median(r[k] for r in rows if r["pipeline"] == n)  # type: ignore[misc]
                for k in ("msg_s", "cpu_s_per_100k", "peak_rss_mib", "loss")} for n in names}


def report(rows: list[dict[str, object]], args: argparse.Namespace, tls: bool, backlog: bool) -> None:
    names = args.pipelines.split(",")
    med = medians(rows, [label(n, tls, backlog) for n in names])
    med = {n: med[label(n, tls, backlog)] for n in names}
    print(f"\nmedians of {args.reps} interleaved runs, N={args.n:,} messages, QoS 1, 200 devices"
          f"{', over TLS (mqtts://)' if tls else ''}"
          f"{'; BACKLOG: paused while published, timed from resume to stored' if backlog else ''}")
    print(f"{'pipeline':<12} {'msg/s':>8} {'CPU-s/100k':>11} {'peak RSS MiB':>13} {'loss':>6}")
    for n in names:
        m = med[n]
        print(f"{n:<12} {m['msg_s']:>8,.0f} {m['cpu_s_per_100k']:>11.2f} {m['peak_rss_mib']:>13.0f} {m['loss']:>6.0f}")
    if {"smartpark", "peer"} <= set(names):
        ours, peer = med["smartpark"], med["peer"]
        print(f"smartpark/peer: msg/s {ours['msg_s'] / peer['msg_s']:.2f}x (goal >= 1.5x), "
              f"CPU-s/100k {ours['cpu_s_per_100k'] / peer['cpu_s_per_100k']:.2f}x (goal <= 0.35x); "
              f"smartpark peak RSS {ours['peak_rss_mib']:.0f} MiB (goal <= 100)")


def tls_cost(rows: list[dict[str, object]], args: argparse.Namespace, backlog: bool) -> None:
    """What TLS costs each pipeline: msg/s and CPU-seconds per 100k over TLS against plain text, same run."""
    names = args.pipelines.split(",")
    med = medians(rows, [label(n, tls, backlog) for n in names for tls in (False, True)])
    print(f"\nTLS against plain text (medians{', backlog' if backlog else ''})")
    for n in names:
        plain, tls = med[label(n, False, backlog)], med[label(n, True, backlog)]
        print(f"{n:<12} msg/s {tls['msg_s']:,.0f} vs {plain['msg_s']:,.0f} ({tls['msg_s'] / plain['msg_s'] - 1:+.0%}), "
              f"CPU-s/100k {tls['cpu_s_per_100k']:.2f} vs {plain['cpu_s_per_100k']:.2f} "
              f"({tls['cpu_s_per_100k'] / plain['cpu_s_per_100k'] - 1:+.0%})")


if __name__ == "__main__":
    main()
