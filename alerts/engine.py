"""The alert engine: its own MQTT subscription for instant rules, a schedule for window rules, the outbox.

Threads: the MQTT client's reader queues messages; the stream thread drains the queue in batches,
evaluates them, commits state, episodes and outbox rows in one transaction, and only then acks the batch
(a crash before the commit means the broker redelivers, and the replay check makes that a no-op after it).
The schedule thread evaluates window and no-data rules, reloads rules, and writes episodes to the store's
`alerts` measurement. The dispatcher thread delivers webhooks from the outbox.

The engine never imports another service: the composition root hands it a ``source_factory`` that builds
a ``MessageSource`` of the platform's MQTT transport (``core/mqtt``: the MQTT 5 session or paho, TLS
included) around the engine's ``on_message``.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from smartpark.alerts.book import Observation, StateBook, Subject
from smartpark.alerts.daily import DailyFeed, DailyFigures
from smartpark.alerts.delivery import Dispatcher
from smartpark.alerts.errors import EngineError
from smartpark.alerts.hours import judge
from smartpark.alerts.models import Episode
from smartpark.alerts.repo import AlertRepo, Changes, now_ms
from smartpark.alerts.rules import SCHEDULED_KINDS, RuleSpec, default_rules
from smartpark.alerts.scheduled import ScheduledEvaluator
from smartpark.alerts.stream import DeviceInfo, StreamEvaluator
from smartpark.core.catalog import Catalog
from smartpark.core.clock import park_zone
from smartpark.core.energy import CounterRules
from smartpark.core.errors import StoreError
from smartpark.core.mqtt.connect import Backoff
from smartpark.core.mqtt.source import MessageSource, OnMessage
from smartpark.core.points import FieldValue, Point
from smartpark.core.reference import Reference
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["AlertEngine", "MessageSource", "OnMessage", "SourceFactory"]

log = logging.getLogger("smartpark.alerts")
MAX_BATCH = 5000
RECEIVE_MAXIMUM = 10_000
SUBSCRIBE_TIMEOUT_S = 30.0
DEVICE_REFRESH_S = 5.0
HOUR_MS = 3_600_000
LOCAL_GENERATION = sys.maxsize  # offered messages: never voided by a reconnect, never acked to the broker


SourceFactory = Callable[[OnMessage], MessageSource]


class AlertEngine:
    def __init__(self, settings: Settings, registry: Registry, store: TimeSeriesStore, catalog: Catalog, *,
                 reference: Reference, source_factory: SourceFactory, daily: DailyFigures | None = None) -> None:
        self.settings, self.registry, self.store = settings, registry, store
        self.repo = AlertRepo(registry.engine)
        self.repo.init(default_rules(reference))
        self.book = StateBook(self.repo.states(), max_per_hour=settings.alerts_max_episodes_per_hour)
        self.stream = self._restored_stream(catalog, reference)
        self.late_window_ms = settings.window_ms  # readings can arrive this late at most (store and forward)
        self.scheduled = self._scheduler(reference)
        self._rejudge_all = True  # the first round after a start looks at every hour of the late window
        self.dispatcher = Dispatcher(self.repo, settings)
        self.daily = DailyFeed(self.repo, daily) if daily else None  # `kpi.daily` events (alerts/daily.py)
        self.source = source_factory(self._on_message)
        self.processed = 0  # messages evaluated and acked
        self.ticks = 0  # schedule rounds completed
        self.failed_batches = 0  # batches whose evaluation or commit failed (not acked; redelivered)
        self._lock = threading.Lock()  # the state book: stream batches and schedule rounds take turns
        self._queue: queue.SimpleQueue[tuple[str, bytes, int, int]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._closing = threading.Event()  # stop() began: the source is not restarted any more
        self._source_lock = threading.Lock()  # source restarts (stream thread) and stop() take turns
        self._void_generation = 0  # messages of this connection generation or older will be redelivered
        self._failures = 0  # consecutive failed batches (the reconnect backoff)
        self._devices: dict[str, DeviceInfo] = {}
        self._devices_at = 0.0
        self._rules: list[RuleSpec] = []
        self._rules_version: tuple[int, int] | None = None
        self._tz = park_zone(None)
        self._threads = [threading.Thread(target=self._stream_loop, name="alerts-stream", daemon=True),
                         threading.Thread(target=self._schedule_loop, name="alerts-schedule", daemon=True)]

    def _restored_stream(self, catalog: Catalog, reference: Reference) -> StreamEvaluator:
        """The stream evaluator knowing the devices seen before a restart."""
        stream = StreamEvaluator(catalog, reference, self.book, retention_ms=self.settings.retention_ms,
                                 window_ms=self.settings.window_ms, device=self._device)
        stream.seen = self.repo.seen()
        # Devices heard of before a restart count as heard at start: each gets a full no-data interval.
        stream.heard = dict.fromkeys(stream.seen, now_ms())
        return stream

    def _scheduler(self, reference: Reference) -> ScheduledEvaluator:
        settings = self.settings
        return ScheduledEvaluator(self.repo, self.store, self.registry, reference,
                                  valid_minutes=settings.kpi_min_valid_minutes, no_data_s=settings.alerts_no_data_s,
                                  late_window_ms=self.late_window_ms, heard=self._heard,
                                  counter_rules=CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h))

    # --- lifecycle
    def start(self) -> None:
        self._refresh_devices()
        self._reload_rules()
        self.dispatcher.start()
        for t in self._threads:
            t.start()
        self.source.start()
        if not self.source.subscribed.wait(SUBSCRIBE_TIMEOUT_S):
            self.stop()
            raise EngineError("the alert engine's MQTT subscription was not confirmed (credentials or ACL?)")
        log.info("alert engine running: %d rules, %d open episodes", len(self._rules),
                 sum(1 for s in self.book.states.values() if s.episode))

    def stop(self) -> None:
        """Stop taking messages (unacked ones stay with the broker), then the threads and the dispatcher."""
        self._closing.set()
        with self._source_lock:
            self.source.stop()
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=30)
        self.dispatcher.stop()

    def reload(self) -> None:
        """Pick up rule, subscription and device changes now (else within one schedule interval)."""
        with self._lock:
            self._refresh_devices()
            self._reload_rules(force=True)

    # --- stream
    def _on_message(self, topic: str, payload: bytes, mid: int, generation: int) -> None:
        self._queue.put((topic, payload, mid, generation))

    def offer(self, topic: str, payload: bytes) -> None:
        """A telemetry message that reached the platform by another path than the broker (the HJ 212 gateway,
        once durable), evaluated like the stream's; nothing to ack. Thread-safe."""
        self._queue.put((topic, payload, 0, LOCAL_GENERATION))

    def _stream_loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._queue.get(timeout=0.5)]
            except queue.Empty:
                continue
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [m for m in batch if m[3] > self._void_generation]  # the broker redelivers the others
            if not batch:
                continue
            try:
                self._process(batch)
                self._failures = 0
            except Exception:  # not acked: memory goes back to what was committed, the broker redelivers
                log.exception("alert evaluation of %d messages failed", len(batch))
                self._recover(max((m[3] for m in batch if m[3] != LOCAL_GENERATION), default=self._void_generation))

    def _recover(self, generation: int) -> None:
        """After a failed batch: state and replay marks back to what was committed, then a new connection.

        Under MQTT 5 the broker redelivers unacked messages only on a new connection (and until then their
        Receive Maximum slots stay taken); messages already queued from this connection are dropped, since
        evaluating them first would make the redelivered batch look like replays."""
        self.failed_batches += 1
        self._failures += 1
        with self._lock:
            self.book.states = self.repo.states()
            self.stream.seen = self.repo.seen()
        self._void_generation = max(self._void_generation, generation)
        self._reconnect(min(2.0 ** (self._failures - 1), 30.0))

    def _reconnect(self, delay_s: float) -> None:
        """Restart the source (a clean DISCONNECT keeps the session) after ``delay_s``, retrying until it works."""
        with self._source_lock:
            if self._closing.is_set():
                return
            self.source.stop()
        backoff = Backoff(max(delay_s, 0.5) * 2, 30.0)
        while not self._closing.wait(delay_s):
            with self._source_lock:
                if self._closing.is_set():
                    return
                try:
                    self.source.start()
                    return
                except Exception as exc:  # broker unreachable: try again
                    log.warning("alert engine could not reconnect (%s); retrying", exc)
            delay_s = backoff.next()

    def _process(self, batch: list[tuple[str, bytes, int, int]]) -> None:
        changes = Changes()
        with self._lock:
            now = now_ms()
            self.book.late_touched.clear()
            for topic, payload, _mid, _gen in batch:
                self.stream.handle(topic, payload, now, changes)
            self.book.close_idle_late(changes)  # late data that stopped coming: its episodes end where it did
            if changes and not self._commit(changes):
                return  # stopping with the database down: not acked, the broker keeps the messages
        self.source.ack([(gen, mid) for _t, _p, mid, gen in batch if gen != LOCAL_GENERATION])
        self.processed += len(batch)

    def _commit(self, changes: Changes) -> bool:
        delay = 0.2
        while True:
            try:
                if self.repo.commit(changes):
                    self.dispatcher.wake.set()
                return True
            except OperationalError as exc:  # locked or unreachable database: retry, do not ack meanwhile
                log.warning("alert state commit failed (%s); retrying in %.1f s", exc, delay)
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, 10.0)

    def _device(self, device_id: str) -> DeviceInfo | None:
        dev = self._devices.get(device_id)
        if dev is None and time.monotonic() - self._devices_at > DEVICE_REFRESH_S:
            self._refresh_devices()  # a device added since: look again, at most every few seconds
            dev = self._devices.get(device_id)
        return dev

    def _refresh_devices(self) -> None:
        self._devices = {d.id: DeviceInfo(d.id, d.site_id, d.kind, d.source_type) for d in self.registry.devices()}
        self._devices_at = time.monotonic()
        park = self.registry.park()
        self._tz = park_zone(park)
        self.stream.set_rules(self._rules)  # scopes may name new devices

    def _reload_rules(self, force: bool = False) -> None:
        version = self.repo.rules_version()
        if version == self._rules_version and not force:
            return
        self._rules_version = version
        self._rules = [r for r in self.repo.rules() if r.enabled]
        self.book.states = self.repo.states()  # all committed: this only drops the state of deleted rules
        self.stream.set_rules(self._rules)

    # --- schedule
    def _schedule_loop(self) -> None:
        while not self._stop.wait(self.settings.alerts_eval_interval_s):
            try:
                self.tick()
            except Exception:  # a failing round must not stop the next one
                log.exception("scheduled alert evaluation failed")

    def tick(self, now: int | None = None) -> None:
        """One schedule round: reload, gather window figures, observe them, annotate, prune."""
        now = now_ms() if now is None else now
        with self._lock:
            self._refresh_devices()
            self._reload_rules()
            rules = [r for r in self._rules if r.kind in SCHEDULED_KINDS]
            devices = list(self._devices.values())
            touched = self._take_touched(devices, now)
        found, hours = self.scheduled.gather(rules, devices, touched, self._tz, now)
        with self._lock:
            changes = Changes()
            for rule, subject, obs in found:
                self._observe_scheduled(rule, subject, obs, changes)
            for fig in hours:
                judge(fig, self.book.get(fig.rule.id, fig.subject.id), changes, now=now, tz=self._tz,
                      window_ms=self.late_window_ms)
            if changes and not self._commit(changes):
                self._untake(touched)
        self._annotate()
        if self.daily and self.daily.run(now, self._tz):
            self.dispatcher.wake.set()
        if self.ticks % 360 == 0:
            self.repo.prune_minutes(now - self.late_window_ms - 2 * HOUR_MS)
        self.ticks += 1

    def _take_touched(self, devices: list[DeviceInfo], now: int) -> dict[str, int]:
        """The stream's earliest kept reading per device since the last round (the whole late window after a
        start, when what was touched before it is unknown); the stream starts a new record."""
        if self._rejudge_all:
            self._rejudge_all = False
            return {d.id: now - self.late_window_ms for d in devices}
        touched, self.stream.touched = self.stream.touched, {}
        return touched

    def _untake(self, touched: dict[str, int]) -> None:
        """A round that could not commit: its hours are looked at again next round."""
        for device, ts in touched.items():
            self.stream.touched[device] = min(ts, self.stream.touched.get(device, ts))

    def _heard(self) -> dict[str, int]:
        """When the engine last heard from each device (the stream thread writes it: read under the lock)."""
        with self._lock:
            return dict(self.stream.heard)

    def _observe_scheduled(self, rule: RuleSpec, subject: Subject, obs: Observation, changes: Changes) -> None:
        state = self.book.get(rule.id, subject.id)
        if state.episode and obs.value is not None and obs.limit is not None and rule.clear_ratio < 1:
            obs = dataclasses.replace(obs, active=obs.value >= obs.limit * rule.clear_ratio)  # hysteresis
        self.book.observe(rule, subject, obs, changes)

    # --- Grafana annotations
    def _annotate(self) -> None:
        episodes = self.repo.unannotated()
        if not episodes:
            return
        points, marks = [], {}
        for ep in episodes:
            if ep.annotated == 0:
                points.append(_annotation(ep, "firing", ep.started_ms))
            if ep.state == "resolved" and ep.ended_ms is not None:
                points.append(_annotation(ep, "resolved", ep.ended_ms))
            marks[ep.id] = 2 if ep.state == "resolved" else 1
        try:
            self.store.write(points)
        except StoreError as exc:
            log.warning("could not write %d alert annotations (next round retries): %s", len(points), exc)
            return
        self.repo.mark_annotated(marks)


def _annotation(ep: Episode, state: str, ts_ms: int) -> Point:
    """A point of the `alerts` measurement (Grafana annotations: time, text, tags site and device)."""
    fields: dict[str, FieldValue] = {"episode": ep.id, "rule": ep.rule_id, "state": state, "severity": ep.severity,
                                     "text": f"{state}: {ep.message}"[:250], "metric": ep.metric or ""}
    for name, value in (("value", ep.value), ("limit", ep.limit), ("peak", ep.peak)):
        if value is not None:
            fields[name] = float(value)
    return Point("alerts", ep.site, ep.device or "-", ts_ms, fields)
