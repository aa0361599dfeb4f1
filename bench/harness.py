"""Shared pieces of the end-to-end benchmarks: private servers, process figures, InfluxDB counts.

The servers come from tests/servers.py (the same throwaway Mosquitto and InfluxDB the tests use).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import MosquittoServer, TestPki, free_port, start_influxd, start_mosquitto, tls_listener_config

PEERS = Path(os.environ.get("SMARTPARK_PEERS_DIR", ROOT.parent / "shared" / "bench" / "peers"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

__all__ = ["PEERS", "ROOT", "Influx", "TlsListener", "bench_args", "bench_servers", "cpu_seconds", "peak_rss_mib",
           "start_influxd", "start_mosquitto", "start_servers", "wait_line"]

MOSQUITTO_CONF = """allow_anonymous true
persistence false
max_queued_messages 2000000
max_inflight_messages {inflight}
"""


def bench_args(doc: str, **defaults: float | str) -> argparse.Namespace:
    """A benchmark's command line: ``--name value`` per keyword (``_`` spelled ``-``), parsed as its default's
    type, the module docstring's first line as the description. Flags without a value are not for this."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return parser.parse_args()


class TlsListener:
    """A second, TLS listener of the same Mosquitto (certificate from a CA made for the run): ``port``,
    ``ca_file``; the plain listener stays for the publishers."""

    def __init__(self, tmp: Path) -> None:
        self.pki = TestPki(tmp / "pki")
        self.port = free_port()
        self.ca_file = self.pki.ca_file

    def config(self) -> str:
        return f"listener {self.port} 127.0.0.1\n" + tls_listener_config(self.pki.server_cert, self.pki.server_key,
                                                                       self.pki.ca_file)


def start_servers(tmp: Path, inflight: int = 1000, tls: TlsListener | None = None) -> tuple[MosquittoServer, object]:
    extra = tls.config() if tls is not None else ""
    mosq = start_mosquitto(MOSQUITTO_CONF.format(inflight=inflight) + extra, tmp / "mosquitto")
    influx = start_influxd(tmp / "influxd")
    return mosq, influx


@contextmanager
def bench_servers(tls: bool = False) -> Iterator[tuple[Path, MosquittoServer, Influx]]:
    """A temp dir with a private Mosquitto (``mosq.tls``: its TLS listener, or None) and InfluxDB, stopped
    whatever happens."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        listener = TlsListener(tmp) if tls else None
        mosq, influxd = start_servers(tmp, tls=listener)
        mosq.tls = listener  # type: ignore[attr-defined]
        try:
            yield tmp, mosq, Influx(influxd.url, influxd.proc.pid)  # type: ignore[attr-defined]
        finally:
            mosq.stop()
            influxd.stop()  # type: ignore[attr-defined]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1]) / 1024
    return 0.0


def wait_line(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited: {path.read_text()[-2000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"{needle!r} not seen in {path}")


class Influx:
    """Minimal InfluxDB 1.x client for the harness (count, reset)."""

    def __init__(self, url: str, pid: int | None = None) -> None:
        self.url, self.pid = url, pid  # pid: the server's process, for its CPU figures
        self.http = httpx.Client(timeout=30)

    def q(self, query: str, db: str | None = None) -> dict:
        params = {"q": query, **({"db": db} if db else {})}
        return self.http.post(f"{self.url}/query", params=params).json()

    def reset(self, db: str) -> None:
        self.q(f'DROP DATABASE "{db}"')
        self.q(f'CREATE DATABASE "{db}"')

    def points_written(self, db: str) -> int:
        """Points InfluxDB accepted into ``db`` since it started (its shard counters): cheap to poll, unlike a
        count() that scans everything written so far and would load the server the benchmark measures."""
        series = self.q("SHOW STATS FOR 'shard'")["results"][0].get("series", [])
        return sum(int(dict(zip(s["columns"], s["values"][0], strict=True))["writePointsOk"])
                   for s in series if s.get("tags", {}).get("database") == db)

    def wait_stored(self, db: str, measurement: str, field: str, n: int, points: int, done: Callable[[], bool],
                    stall_s: float = 15.0) -> tuple[int, float]:
        """Wait until ``n`` values of ``field`` are stored: (count, monotonic time they were all in).

        Polls the shard counters until ``points`` points have arrived, then counts exactly. The time is when
        the counter reached ``points``, if the first exact count confirms it (the count's own duration is not
        part of it); if other points (the ingest's own figures, a retried write) made the counter run ahead,
        it is when a later count confirmed. Gives up when nothing arrives for ``stall_s`` after ``done()``."""
        last, last_change, first_count = -1, time.monotonic(), True
        count = 0
        while True:
            written = self.points_written(db)
            now = time.monotonic()
            if written != last:
                last, last_change = written, now
            if written >= points:
                count = self.count(db, measurement, field)
                if count >= n:
                    return count, last_change if first_count else now
                first_count = False
            if done() and now - last_change > stall_s:
                return (count if written >= points else self.count(db, measurement, field)), last_change
            time.sleep(0.02 if written < points else 0.25)

    def count(self, db: str, measurement: str, field: str) -> int:
        res = self.q(f'SELECT count("{field}") FROM "{measurement}"', db)["results"][0]
        return int(res["series"][0]["values"][0][1]) if "series" in res else 0
