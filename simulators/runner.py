"""Plays a scenario over MQTT, one connection per device, in plant time running ``speed`` x real time.

Modes (``smartpark simulate --mode``): live is speed 1 from now on; accelerated replays the last N days at a
day of plant time per minute (speed 1440) and ends at the present, so every timestamp passes the ingest's
time window; backfill publishes the same history without waiting (or, in ``backfill.py``, skips MQTT and
writes the store directly). Each device connects with its own credentials and a retained ``offline`` last
will; over a 5G outage its connection is dropped without DISCONNECT (the broker publishes the will) and
comes back when the outage ends, before the device flushes its buffered readings as batches.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import mqtt5
import msgspec

from smartpark.core.clock import now_ms
from smartpark.core.contract import telemetry_topic
from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.core.registry.parkfile import ParkFile
from smartpark.simulators.delivery import Delivery, Message
from smartpark.simulators.live import OFFLINE_WILL, status_topic
from smartpark.simulators.publisher import Connection
from smartpark.simulators.scenario import Scenario
from smartpark.simulators.timeline import Generated, Timeline
from smartpark.simulators.truth import TruthWriter

__all__ = ["PublishRun", "RunStats", "scenario_events"]

FOREVER_MS = 100 * 365 * 86_400_000
Progress = Callable[[int], None]


@dataclass(slots=True)
class RunStats:
    readings: int = 0  # generated
    messages: int = 0  # published (readings, batches, duplicates, malformed)
    sent: int = 0  # readings carried by the published messages (a duplicate counts again)
    acked: int = 0
    seconds: float = 0.0


def scenario_events(scenario: Scenario, start_ms: int, truth: TruthWriter) -> None:
    """Record the scenario's events in the ground truth with absolute times (epoch ms)."""
    for ev in scenario.events:
        fields = msgspec.to_builtins(ev)
        for key in ("start_min", "at_min"):
            if key in fields:
                fields[key.replace("_min", "_ms")] = start_ms + round(60_000 * fields[key])
        if "duration_min" in fields:
            fields["end_ms"] = fields["start_ms"] + round(60_000 * fields["duration_min"])
        truth.event(fields.pop("kind"), **fields)


class PublishRun:
    """One scenario run over MQTT from ``start_ms`` to ``end_ms`` (None: until ``stop`` is set)."""

    def __init__(self, park: ParkFile, scenario: Scenario, endpoint: Endpoint, *, start_ms: int,
                 end_ms: int | None = None, speed: float = 1.0, credentials: dict[str, str] | None = None,
                 truth: TruthWriter | None = None, window: int = 200, chunk: int = 60) -> None:
        self.scenario, self.start_ms, self.end_ms = scenario, start_ms, end_ms
        self.speed, self.chunk = speed, chunk
        self.truth = truth or TruthWriter(None)
        self.timeline = Timeline(park, scenario, start_ms)
        self.delivery = Delivery(self.timeline, scenario, self.truth)
        self.stats = RunStats()
        creds = credentials or {}
        self.conns = {
            r.device.id: Connection(endpoint.login(r.device.id, creds[r.device.id]) if r.device.id in creds
                                    else endpoint.login(None, None), r.device.id, window=window,
                                    will=mqtt5.Will(status_topic(r.site.id, r.device.id), payload=OFFLINE_WILL,
                                                    qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True))
            for r in self.timeline.model.devices}
        self.sites = {r.device.id: r.site.id for r in self.timeline.model.devices}
        self._dropped: set[str] = set()

    def run(self, stop: threading.Event | None = None, progress: Progress | None = None) -> RunStats:
        started = time.monotonic()
        scenario_events(self.scenario, self.start_ms, self.truth)
        try:
            for frame in self.timeline.frames(self.end_ms or self.start_ms + FOREVER_MS, chunk=self.chunk):
                for ts, group in itertools.groupby(frame.readings(), key=lambda g: g.ts):
                    if not self._wait(ts, started, stop):
                        return self._finish(started)
                    self._tick(ts, list(group))
                if progress is not None:
                    progress(self.stats.readings)
            return self._finish(started)
        finally:
            for conn in self.conns.values():
                conn.close()

    def _wait(self, ts: int, started: float, stop: threading.Event | None) -> bool:
        """Sleep until plant time ``ts`` is due; False once stopped."""
        if self.speed > 0:
            net = self.scenario.network
            delay_ms = net.latency_ms + (self.delivery.rng.uniform(0, net.jitter_ms) if net.jitter_ms else 0.0)
            due = started + (ts + delay_ms - self.start_ms) / 1000.0 / self.speed
            delay = due - time.monotonic()
            if delay > 0 and stop is not None:
                return not stop.wait(delay)
            if delay > 0:
                time.sleep(delay)
        return stop is None or not stop.is_set()

    def _tick(self, ts: int, readings: list[Generated]) -> None:
        t_s = ts / 1000.0
        self._links(t_s)
        self.stats.readings += len(readings)
        messages = self.delivery.tick(t_s, readings)
        if self.scenario.network.jitter_ms:  # devices do not send in lockstep, nor in park-file order
            messages = [messages[k] for k in self.delivery.rng.permutation(len(messages))]
        self._publish(messages)
        for conn in self.conns.values():
            if conn.connected:
                conn.flush()

    def _links(self, t_s: float) -> None:
        """Drop the links of devices whose outage began; reconnect those whose outage ended."""
        for device in self.delivery.outages:
            conn = self.conns.get(device)
            if conn is None:
                continue
            down = self.delivery.down(device, t_s)
            if down and conn.connected:
                conn.drain()  # what the device sent before the link went has been acknowledged
                conn.drop()
                self._dropped.add(device)
                self.truth.event("link_down", device=device, at=round(t_s * 1000))
            elif not down and device in self._dropped:
                self._dropped.discard(device)
                self._connect(device, conn)
                self.truth.event("link_up", device=device, at=round(t_s * 1000))

    def _connect(self, device: str, conn: Connection) -> None:
        conn.connect()
        online = msgspec.json.encode({"state": "online", "ts": now_ms()})
        conn.publish(status_topic(self.sites[device], device), online, retain=True)

    def _publish(self, messages: list[Message]) -> None:
        for msg in messages:
            conn = self.conns[msg.device]
            if not conn.connected:
                self._connect(msg.device, conn)
            conn.publish(telemetry_topic(msg.site, msg.device), msg.payload)
            self.stats.messages += 1
            self.stats.sent += msg.readings

    def _finish(self, started: float) -> RunStats:
        self._publish(self.delivery.finish())
        for conn in self.conns.values():
            if conn.connected:
                conn.drain()
        self.stats.acked = sum(c.acked for c in self.conns.values())
        self.stats.seconds = time.monotonic() - started
        return self.stats
