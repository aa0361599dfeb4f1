"""The state book: every rule's state per subject, and the step from an observation to an episode event.

Both evaluators (the live stream and the schedule) report observations here; the book turns a ``fire`` into
a new Episode row, a ``resolve`` into its end and a new peak into an update, all into the batch's Changes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from smartpark.alerts.evaluate import State, Step, advance
from smartpark.alerts.models import Episode
from smartpark.alerts.repo import Changes, Peak, Resolved
from smartpark.alerts.rules import RuleSpec

__all__ = ["Observation", "StateBook", "Subject"]


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
    def __init__(self, states: dict[tuple[str, str], State]) -> None:
        self.states = states

    def get(self, rule_id: str, subject_id: str) -> State:
        key = (rule_id, subject_id)
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = State()
        return state

    def observe(self, rule: RuleSpec, subject: Subject, obs: Observation, changes: Changes, *,
                duration_ms: int = 0) -> Step:
        key = (rule.id, subject.id)
        state = self.get(*key)
        sample = obs.sample or {"ts": obs.ts_ms, "value": obs.value}
        step = advance(state, obs.active, obs.ts_ms, duration_ms=duration_ms, sample=sample, value=obs.value)
        if step == "fire":
            episode = self._episode(rule, subject, state, obs)
            changes.events.append(episode)
            state.episode, state.evidence = episode.id, []
        elif step == "resolve" and state.episode is not None:
            changes.events.append(Resolved(state.episode, obs.ts_ms, obs.value))
            state.episode, state.peak = None, None
        elif step == "peak" and state.episode is not None and state.peak is not None:
            changes.events.append(Peak(state.episode, state.peak))
        state.last_ts = max(state.last_ts, obs.ts_ms)
        changes.states[key] = state
        return step

    @staticmethod
    def _episode(rule: RuleSpec, subject: Subject, state: State, obs: Observation) -> Episode:
        return Episode(
            id=f"ep_{uuid.uuid4().hex}", rule_id=rule.id, subject=subject.id, open_key=f"{rule.id}|{subject.id}",
            site=subject.site, device=subject.device, metric=obs.metric, severity=rule.severity, state="firing",
            started_ms=state.pending_since if state.pending_since is not None else obs.ts_ms, ended_ms=None,
            value=obs.value, peak=state.peak, limit=obs.limit, unit=obs.unit, window=obs.window,
            message=(obs.message or rule.name)[:300], evidence=list(state.evidence), annotated=0)
