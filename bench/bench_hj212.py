"""The HJ 212 gateway beside a straightforward asyncio server, same workload, same InfluxDB, one run.

    .venv/bin/python bench/bench_hj212.py [--connections 2000] [--seconds 15] [--batch-age 0.2]

Workload: ``--connections`` data acquisition units (one stack each) connected at once, each sending minute
packets (CN 2051, 7 factors, Flag 5) one after the other as fast as the answers come back (a unit sends its
next packet when the 9014 of the last one arrived). The gateway runs as `smartpark hj212` (its own process,
into InfluxDB through the ingest's writer); the baseline (bench/hj212_baseline.py) parses each frame and
writes its point alone before answering. Both answer only after InfluxDB took the write, so the time from
sending a frame to its answer is frame-to-queryable; the run ends with an exact count that every answered
frame is stored. Figures: frames/s, CPU-seconds of the server per 100k frames, its peak RSS, p50/p99
frame-to-queryable. Goal: gateway >= 10x the baseline's frames/s, p99 < 1.5 s.

The registry's PW hashes use 1,000 PBKDF2 iterations instead of 20,000, so 2,000 first logins cost ~2 s of
CPU, not ~30 s; each unit's first packet (its login) is sent and answered before the timed window (a real
park's units log in once and stay connected).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from smartpark.hj212.frame import build_frame

from harness import Influx, cpu_seconds, peak_rss_mib, start_influxd, wait_line
from servers import free_port

PY = sys.executable
HERE = Path(__file__).resolve().parent
PW = "bench1"


def registry_url(tmp: Path, connections: int) -> str:
    from smartpark.core.registry import Registry, parse_park_file
    from smartpark.core.registry.models import Device
    from smartpark.core.registry.secrets import hash_password

    devices = ", ".join(f"{{id: stack-{i:05d}, kind: cems, source_type: sinter}}" for i in range(connections))
    url = f"sqlite:///{tmp / 'meta.sqlite'}"
    reg = Registry(url)
    reg.init()
    reg.load_park(parse_park_file(f"park: {{id: bench}}\nsites:\n  - {{id: bench, name: B, enterprise: E, "
                                  f"industry: steel, area_m2: 1000, devices: [{devices}]}}\n"))
    with reg.session() as s:
        for i in range(connections):
            dev = s.get(Device, f"stack-{i:05d}")
            dev.hj212_mn, dev.hj212_pw_hash = mn(i), hash_password(PW, iterations=1000)  # type: ignore[union-attr]
    reg.close()
    return url


def mn(i: int) -> str:
    return f"2114{i:010d}"


def frames_for(i: int, count: int, t0_s: int) -> list[bytes]:
    out = []
    for j in range(count):
        local = time.strftime("%Y%m%d%H%M%S", time.gmtime(t0_s + j * 60 + 8 * 3600))  # Asia/Shanghai, UTC+8
        cp = (f"DataTime={local};a21026-Avg=20.{j % 10},a21026-Flag=N;a21002-Avg=41.{j % 10},a21002-Flag=N;"
              f"a34013-Avg=3.1,a34013-Flag=N;a19001-Avg=16.4,a19001-Flag=N;a00000-Avg=140.2,a00000-Flag=N;"
              f"a01012-Avg=121.5,a01012-Flag=N;a01014-Avg=8.2,a01014-Flag=N")
        out.append(build_frame(f"QN={local}{j % 1000:03d};ST=31;CN=2051;PW={PW};MN={mn(i)};Flag=5;CP=&&{cp}&&"))
    return out


def start_server(name: str, tmp: Path, influx_url: str, db: str, reg: str, port: int, batch_age: float
                 ) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")}
    log = tmp / f"{name}.log"
    if name == "smartpark":
        env |= {"SMARTPARK_INFLUX_URL": influx_url, "SMARTPARK_INFLUX_DB": db, "SMARTPARK_DATABASE_URL": reg,
                "SMARTPARK_DATA_DIR": str(tmp / "data"), "SMARTPARK_HJ212_PORT": str(port),
                "SMARTPARK_HJ212_METRICS_PORT": "0", "SMARTPARK_INGEST_BATCH_AGE_S": str(batch_age)}
        cmd, ready = [PY, "-m", "smartpark", "hj212"], "HJ 212 gateway on"
    else:
        cmd, ready = [PY, str(HERE / "hj212_baseline.py"), "--port", str(port), "--influx", influx_url,
                      "--db", db], "READY"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    wait_line(log, ready, proc)
    return proc


def run_one(name: str, args: argparse.Namespace, tmp: Path, influx: Influx, reg: str) -> dict[str, object]:
    db = f"bench_hj212_{name}"
    influx.reset(db)
    port = free_port()
    proc = start_server(name, tmp, influx.url, db, reg, port, args.batch_age)
    t0_s = (int(time.time()) // 60 - 60 * 24 * 20) * 60  # 20 days ago: room for a minute per frame
    all_frames = [frames_for(i, args.frames, t0_s) for i in range(args.connections)]
    sent, latencies, wall, cpu0 = asyncio.run(load_for(port, all_frames, args.seconds, proc.pid))
    cpu, rss = cpu_seconds(proc.pid) - cpu0, peak_rss_mib(proc.pid)
    proc.terminate()
    proc.wait(timeout=60)
    stored = influx.count(db, "emissions", "nox_mg_m3") - args.connections  # less the login packets
    influx.q(f'DROP DATABASE "{db}"')
    latencies.sort()
    return {"server": name, "connections": args.connections, "answered": sent, "stored": stored,
            "frames_s": round(sent / wall), "cpu_s_per_100k": round(cpu * 1e5 / max(sent, 1), 2),
            "peak_rss_mib": round(rss), "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p99_s": round(latencies[int(len(latencies) * 0.99)], 3) if latencies else None,
            "wall_s": round(wall, 1)}


async def load_for(port: int, all_frames: list[list[bytes]], seconds: float, pid: int
                   ) -> tuple[int, list[float], float, float]:
    """Connect and log in every unit, then let them all send for ``seconds``: (answered frames, latencies,
    wall seconds, the server's CPU-seconds when the timed window began)."""
    latencies: list[float] = []
    started = asyncio.Event()
    deadline: list[float] = []
    logged_in = [0]

    async def one(frames: list[bytes]) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        writer.write(frames[0])  # the login (the first PW check) happens before the timed window
        await reader.readuntil(b"\r\n")
        logged_in[0] += 1
        await started.wait()
        sent = 0
        try:
            for f in frames[1:]:
                if time.monotonic() >= deadline[0]:
                    break
                t = time.monotonic()
                writer.write(f)
                await reader.readuntil(b"\r\n")
                latencies.append(time.monotonic() - t)
                sent += 1
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            print(f"unit stopped: {exc!r}", file=sys.stderr)
        writer.close()
        return sent

    tasks = []
    for frames in all_frames:
        tasks.append(asyncio.create_task(one(frames)))
        if len(tasks) % 200 == 0:
            await asyncio.sleep(0.05)  # connect in waves
    while logged_in[0] < len(tasks) and not any(t.done() for t in tasks):
        await asyncio.sleep(0.1)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    deadline.append(t0 + seconds)
    started.set()
    sent = sum(await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 120))
    return sent, latencies, time.monotonic() - t0, cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--frames", type=int, default=400, help="packets prepared per unit (the most it sends)")
    parser.add_argument("--batch-age", type=float, default=0.2, help="SMARTPARK_INGEST_BATCH_AGE_S of the gateway")
    parser.add_argument("--servers", default="smartpark,baseline")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.connections + 256)), hard))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        influxd = start_influxd(tmp / "influxd")
        try:
            influx = Influx(influxd.url, influxd.proc.pid)
            reg = registry_url(tmp, args.connections)
            rows = []
            for name in args.servers.split(","):
                rows.append(run_one(name, args, tmp, influx, reg))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            influxd.stop()
    report(rows)


def report(rows: list[dict[str, object]]) -> None:
    print(f"\n{'server':<10} {'frames/s':>9} {'CPU-s/100k':>11} {'peak RSS MiB':>13} {'p50 s':>7} {'p99 s':>7} "
          f"{'answered':>9} {'stored':>9}")
    for r in rows:
        print(f"{r['server']:<10} {r['frames_s']:>9,} {r['cpu_s_per_100k']:>11.2f} {r['peak_rss_mib']:>13} "
              f"{r['p50_s']:>7} {r['p99_s']:>7} {r['answered']:>9,} {r['stored']:>9,}")
    by = {r["server"]: r for r in rows}
    if {"smartpark", "baseline"} <= set(by):
        ratio = by["smartpark"]["frames_s"] / max(by["baseline"]["frames_s"], 1)  # type: ignore[operator]
        print(f"gateway/baseline frames/s: {ratio:.1f}x (goal >= 10x); gateway p99 {by['smartpark']['p99_s']} s "
              f"(goal < 1.5 s)")


if __name__ == "__main__":
    main()
