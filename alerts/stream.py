"""Instant rules on the live stream: thresholds (hysteresis, duration, any/all) and device status.

Readings are decoded with the contract's decoder (with the ingest's store-and-forward window). A reading
older than the last one a threshold rule took from that device is a duplicate or a replay (the broker redelivers
what was not acked before a crash) where the live timeline covered that time, and changes nothing; in a gap of
it (back-dated data, a buffer flushed after live readings resumed) it is late data, judged on its own timestamp
on the rule's late timeline (alerts/book.py), where one at or before the timeline's last reading is a replay.
The valid O2-corrected pollutant values that the hourly rules read are kept here too, one row per reading
and whatever its lateness (a late or redelivered reading overwrites its own row), with the earliest time
each device touched since the last schedule round, so the closed hours that changed are judged again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import NamedTuple

from smartpark.alerts.book import Observation, StateBook, Subject
from smartpark.alerts.evaluate import State, condition_value, covered, extend_live, threshold_active
from smartpark.alerts.repo import Changes
from smartpark.alerts.rules import Condition, RuleSpec
from smartpark.core.catalog import Catalog
from smartpark.core.contract import FUTURE_TOLERANCE_MS, Reading, ReadingDecoder, parse_topic
from smartpark.core.reference import Reference

__all__ = ["DeviceInfo", "StreamEvaluator"]

log = logging.getLogger("smartpark.alerts")


class DeviceInfo(NamedTuple):
    id: str
    site: str
    kind: str
    source_type: str | None


class StreamEvaluator:
    """Evaluates one message at a time into a batch's Changes (the engine commits, then acks)."""

    def __init__(self, catalog: Catalog, reference: Reference, book: StateBook, *, retention_ms: int,
                 device: Callable[[str], DeviceInfo | None], window_ms: int | None = None) -> None:
        self.catalog, self.reference, self.book = catalog, reference, book
        self.decoder = ReadingDecoder(catalog, retention_ms=retention_ms, window_ms=window_ms)  # as the ingest
        self.device = device
        self.seen: dict[str, int] = {}
        self.touched: dict[str, int] = {}  # device -> earliest reading time bucketed since the last schedule round
        self.heard: dict[str, int] = {}  # device -> receive time of its last message (reading or status)
        self.skipped = 0  # messages that raised while evaluated (skipped, logged)
        self.rules: list[RuleSpec] = []
        self._by_device: dict[str, list[RuleSpec]] = {}
        self._minute_conds = [(p, Condition(metric=m, pollutant=p, o2_corrected=True))
                              for p, m in reference.emissions.pollutants.items()]

    def set_rules(self, rules: list[RuleSpec]) -> None:
        self.rules = [r for r in rules if r.enabled and r.instant]
        self._by_device = {}

    def _rules_for(self, dev: DeviceInfo) -> list[RuleSpec]:
        rules = self._by_device.get(dev.id)
        if rules is None:
            rules = self._by_device[dev.id] = [
                r for r in self.rules if r.covers(dev.site, dev.id, dev.kind, dev.source_type)]
        return rules

    def handle(self, topic: str, payload: bytes, now_ms: int, changes: Changes) -> None:
        """Evaluate one message; one that cannot be evaluated (hostile or malformed) is skipped and counted,
        never failing its batch: the batch is still committed and acked."""
        try:
            self._handle(topic, payload, now_ms, changes)
        except Exception as exc:  # RecursionError, UnicodeDecodeError, ...: whatever a payload can provoke
            self.skipped += 1
            log.warning("alert engine skipped a message on %.200r (%d skipped so far): %s: %.200s", topic,
                        self.skipped, type(exc).__name__, exc)

    def _handle(self, topic: str, payload: bytes, now_ms: int, changes: Changes) -> None:
        t = parse_topic(topic)
        dev = self.device(t.device) if t is not None else None
        if t is None or dev is None or dev.site != t.site:
            return  # the ingest dead-letters these; the alert engine only ignores them
        self.heard[dev.id] = now_ms  # the device is talking, whatever the times it reports (a replay of its past)
        if t.kind == "status":
            self._status(dev, payload, now_ms, changes)
            return
        for reading in sorted(self.decoder.decode(t.site, t.device, payload, now_ms).readings,
                              key=lambda r: r.ts_ms):
            self._reading(dev, reading, changes)

    def _reading(self, dev: DeviceInfo, r: Reading, changes: Changes) -> None:
        if r.ts_ms > self.seen.get(dev.id, 0):
            self.seen[dev.id] = changes.seen[dev.id] = r.ts_ms
        if dev.kind == "cems":
            self._bucket(dev, r, changes)
        for rule in self._rules_for(dev):
            if rule.kind == "threshold":
                self._threshold(rule, dev, r, changes)

    def _threshold(self, rule: RuleSpec, dev: DeviceInfo, r: Reading, changes: Changes) -> None:
        state = self.book.get(rule.id, dev.id)
        late = r.ts_ms <= state.last_ts
        target = state
        if late:
            if covered(state, r.ts_ms):
                return  # a duplicate, or a redelivery after a crash, of what the live timeline judged
            target = state.late or State()
            if r.ts_ms <= target.last_ts:
                return  # a redelivery of late data already judged
            state.late = target
        source = self.reference.source_type(dev.source_type)
        result = threshold_active(rule, target, r, source, self.reference)
        if result is None:
            return
        active, value, limit = result
        metric = rule.conditions[0].metric
        sample = {"ts": r.ts_ms, "value": value, "metrics": r.metrics, "flags": r.flags}
        obs = Observation(active, r.ts_ms, value, limit, metric, self.catalog[metric].unit,
                          f"{rule.duration_s:g}s" if rule.duration_s else "instant", rule.name, sample)
        if not late:
            extend_live(state, r.ts_ms)
        self.book.observe(rule, Subject(dev.site, dev.id), obs, changes, duration_ms=int(rule.duration_s * 1000),
                          late=late)

    def _bucket(self, dev: DeviceInfo, r: Reading, changes: Changes) -> None:
        """Keep the reading's valid O2-corrected pollutants (what hourly means are made of), late ones too."""
        source = self.reference.source_type(dev.source_type)
        kept = False
        for pollutant, cond in self._minute_conds:
            value = condition_value(cond, r, source, self.reference)
            if value is not None:
                changes.minutes[(dev.id, pollutant, r.ts_ms)] = [value, 1]
                kept = True
        if kept and r.ts_ms < self.touched.get(dev.id, r.ts_ms + 1):
            self.touched[dev.id] = r.ts_ms

    def _status(self, dev: DeviceInfo, payload: bytes, now_ms: int, changes: Changes) -> None:
        try:
            body = json.loads(payload)
            state, ts = body["state"], body.get("ts", now_ms)
        except (ValueError, TypeError, KeyError, RecursionError):  # UnicodeDecodeError is a ValueError
            return
        if state not in ("online", "offline") or not isinstance(ts, int) or isinstance(ts, bool):
            return
        if not now_ms - self.decoder.window_ms <= ts <= now_ms + FUTURE_TOLERANCE_MS:
            ts = now_ms  # a device clock far off (as the ingest does): a future ts would mute later statuses
        for rule in self._rules_for(dev):
            if rule.kind == "device_offline":
                obs = Observation(state == "offline", ts, None, None, None, "", "status",
                                  f"{dev.id} reports {state}", {"ts": ts, "state": state})
                self.book.observe(rule, Subject(dev.site, dev.id), obs, changes)
