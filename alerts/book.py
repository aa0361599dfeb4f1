"""The state book: every rule's state per subject, and the step from an observation to an episode event.

Both evaluators (the live stream and the schedule) report observations here; the book turns a ``fire`` into
a new Episode row, a ``resolve`` into its end and a new peak into an update, all into the batch's Changes.

Two guards keep history from turning into a flood of webhooks:

- Rate limit: a rule opens at most ``max_per_hour`` episodes per subject in a clock hour of receive time. An
  episode past it is suppressed: its subject is held "in episode" until the condition clears (so one
  exceedance is one suppressed episode, not one per reading), counted in the state and the book, logged, and
  reported by the next episode the rule opens on that subject.
- Late timeline: an observation older than what the rule last judged on the subject (a back-dated or reordered
  reading) is judged on its own timestamp, on a second state kept for such readings (``State.late``), so it
  neither disturbs the live episode nor is ignored. Its episodes concern the past: they are resolved when the
  late data clears, or when a stream batch passes without late data for them (``close_idle_late``), at the
  time of their last late reading. A reading at or before the last late one is a redelivery.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smartpark.alerts.evaluate import State, Step, advance
from smartpark.alerts.models import Episode
from smartpark.alerts.repo import Changes, Peak, Resolved
from smartpark.alerts.rules import RuleSpec
from smartpark.core.clock import now_ms

__all__ = ["SUPPRESSED", "Observation", "StateBook", "Subject"]

log = logging.getLogger("smartpark.alerts")
SUPPRESSED = "suppressed"  # State.episode of a subject held in an episode the rate limit did not open
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Subject:
    """What an episode is about: a device (of a site) or a whole site."""

    site: str
    device: str | None = None

    @property
    def id(self) -> str:
        return self.device or self.site


@dataclass(frozen=True, slots=True)
class Observation:
    """One evaluation of a rule on a subject: does its condition hold, on what figures."""

    active: bool
    ts_ms: int
    value: float | None
    limit: float | None
    metric: str | None = None
    unit: str = ""
    window: str = ""
    message: str = ""
    sample: dict[str, Any] = field(default_factory=dict)


class StateBook:
    def __init__(self, states: dict[tuple[str, str], State], *, max_per_hour: int = 6,
                 clock: Callable[[], int] = now_ms) -> None:
        self.states = states
        self.max_per_hour = max_per_hour
        self.clock = clock
        self.suppressed = 0  # episodes suppressed by the rate limit since start (all rules and subjects)
        self.late_touched: set[tuple[str, str]] = set()  # late timelines fed in the current stream batch

    def get(self, rule_id: str, subject_id: str) -> State:
        key = (rule_id, subject_id)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = State()
        return state

    def observe(self, rule: RuleSpec, subject: Subject, obs: Observation, changes: Changes, *,
                duration_ms: int = 0, late: bool = False) -> Step:
        """Advance the subject's state (its late timeline when ``late``) by one observation, into ``changes``."""
        key = (rule.id, subject.id)
        state = self.get(*key)
        target = state
        if late:
            target = state.late = state.late or State()
            self.late_touched.add(key)
        sample = obs.sample or {"ts": obs.ts_ms, "value": obs.value}
        step = advance(target, obs.active, obs.ts_ms, duration_ms=duration_ms, sample=sample, value=obs.value)
        if step == "fire":
            self._fire(rule, subject, obs, changes, late=late)
        elif step == "resolve" and target.episode is not None:
            if target.episode != SUPPRESSED:
                changes.events.append(Resolved(target.episode, obs.ts_ms, obs.value))
            target.episode, target.peak = None, None
        elif step == "peak" and target.episode not in (None, SUPPRESSED) and target.peak is not None:
            changes.events.append(Peak(target.episode, target.peak))
        target.last_ts = max(target.last_ts, obs.ts_ms)
        changes.states[key] = state
        return step

    def _fire(self, rule: RuleSpec, subject: Subject, obs: Observation, changes: Changes, *, late: bool) -> None:
        """Open the episode, or suppress it when the subject's rule has opened its share this hour."""
        state = self.get(rule.id, subject.id)
        target = state.late if late and state.late is not None else state
        now = self.clock()
        hour = now - now % HOUR_MS
        if state.rate_hour != hour:
            state.rate_hour, state.rate_count = hour, 0
        if state.rate_count >= self.max_per_hour:
            if state.rate_count == self.max_per_hour:  # the first one suppressed this hour
                log.warning("rule %s on %s opened %d episodes this hour (SMARTPARK_ALERTS_MAX_EPISODES_PER_HOUR):"
                            " suppressing more until the next hour, counted", rule.id, subject.id, state.rate_count)
            state.rate_count += 1  # past the limit: counts attempts, so the warning above comes once an hour
            state.suppressed += 1
            state.suppressed_since += 1
            self.suppressed += 1
            target.episode, target.evidence = SUPPRESSED, []
            return
        state.rate_count += 1
        episode = self._episode(rule, subject, target, obs, late=late, suppressed=state.suppressed_since)
        state.suppressed_since = 0
        changes.events.append(episode)
        target.episode, target.evidence = episode.id, []

    def close_idle_late(self, changes: Changes) -> None:
        """End the late timelines that were not fed in this stream batch: their late data is over, so an open
        episode of theirs ends at their last late reading (and a pending one is dropped)."""
        for key, state in self.states.items():
            late = state.late
            if late is None or key in self.late_touched or (late.episode is None and late.pending_since is None):
                continue
            if late.episode not in (None, SUPPRESSED):
                changes.events.append(Resolved(late.episode, late.last_ts, None))
            late.episode, late.peak, late.pending_since, late.evidence, late.latches = None, None, None, [], []
            changes.states[key] = state
        self.late_touched.clear()

    @staticmethod
    def _episode(rule: RuleSpec, subject: Subject, state: State, obs: Observation, *, late: bool,
                 suppressed: int) -> Episode:
        message = obs.message or rule.name
        if late:  # about the past: its own open key, so the live episode of the same rule may be open too
            message = f"late data: {message}"
        if suppressed:
            message += f" ({suppressed} earlier episodes suppressed by the rate limit)"
        return Episode(
            id=f"ep_{uuid.uuid4().hex}", rule_id=rule.id, subject=subject.id,
            open_key=f"{rule.id}|{subject.id}" + ("~" if late else ""),
            site=subject.site, device=subject.device, metric=obs.metric, severity=rule.severity, state="firing",
            started_ms=state.pending_since if state.pending_since is not None else obs.ts_ms, ended_ms=None,
            value=obs.value, peak=state.peak, limit=obs.limit, unit=obs.unit, window=obs.window,
            message=message[:300], evidence=list(state.evidence), annotated=0)
