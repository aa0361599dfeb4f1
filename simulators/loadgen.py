"""Load generator: many devices publishing readings at QoS 1 at a target rate, reporting the rate achieved.

Why processes: one Python process encodes and sends PUBLISH packets (``publisher.Connection``) at roughly
100,000-200,000 a second, but the benchmarks want the broker to be the limit, so the load is split across
``processes`` workers, each with its own connections, pacing itself to its share of the target. The rate
reported counts PUBACKs, not sends: a message counts once the broker has taken responsibility for it.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

from smartpark.core.clock import now_ms
from smartpark.core.contract import telemetry_topic
from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.simulators.publisher import Connection

__all__ = ["LoadResult", "run_load"]

PACE_EVERY = 256  # messages between two pacing checks


@dataclass(frozen=True, slots=True)
class LoadResult:
    messages: int  # acknowledged by the broker
    seconds: float
    processes: int
    connections: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class _Job:
    endpoint: Endpoint  # a frozen value: it pickles to the spawned workers, which build their own TLS context
    worker: int
    devices: list[tuple[str, str]]  # (site, device) served by this worker
    messages: int
    rate: float  # this worker's share; 0 = as fast as possible
    connections: int
    window: int
    t0_ms: int


def _payload(seq: int, ts_ms: int, device_no: int) -> bytes:
    return b'{"ts":%d,"seq":%d,"metrics":{"power_kw":%d.25,"energy_kwh":%d.5}}' % (ts_ms, seq, 100 + device_no, seq)


def _work(job: _Job, start_at: float) -> tuple[int, float]:
    """One worker: connect, wait for the common start, publish its share, drain; (acked, seconds)."""
    conns = [Connection(job.endpoint, f"loadgen-{job.worker}-{c}-{time.monotonic_ns() % 10**9}",
                        window=job.window) for c in range(job.connections)]
    for c in conns:
        c.connect()
    topics = [telemetry_topic(site, dev) for site, dev in job.devices]
    time.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    n_topics, n_conns = len(topics), len(conns)
    for i in range(job.messages):
        d = i % n_topics
        conns[d % n_conns].publish(topics[d], _payload(i // n_topics, job.t0_ms + 1000 * (i // n_topics), d))
        if job.rate and i % PACE_EVERY == 0:
            ahead = i / job.rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    for c in conns:
        c.drain()
    seconds = time.perf_counter() - started
    acked = sum(c.acked for c in conns)
    for c in conns:
        c.close()
    return acked, seconds


def _split(devices: list[tuple[str, str]], parts: int) -> list[list[tuple[str, str]]]:
    return [devices[k::parts] for k in range(parts)]


def run_load(endpoint: Endpoint, devices: list[tuple[str, str]], messages: int, *, rate: float = 0.0,
             processes: int = 2, connections: int = 2, window: int = 2000, t0_ms: int | None = None) -> LoadResult:
    """Publish ``messages`` readings spread over ``devices`` (ids on their contract topics) at ``rate``
    msg/s in total (0: as fast as the broker takes them), from ``processes`` worker processes."""
    processes = max(1, min(processes, len(devices)))
    t0 = t0_ms if t0_ms is not None else now_ms() - 3_600_000
    shares = [messages // processes + (k < messages % processes) for k in range(processes)]
    jobs = [_Job(endpoint, k, part, shares[k], rate / processes, connections, window, t0)
            for k, part in enumerate(_split(devices, processes))]
    start_at = time.time() + 0.5 + 0.1 * processes  # let every worker connect first
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.starmap(_work, [(job, start_at) for job in jobs])
    acked = sum(r[0] for r in results)
    seconds = max(r[1] for r in results)
    return LoadResult(acked, seconds, processes, processes * connections)
