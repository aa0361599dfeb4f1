"""Closed-hour judgments: each local hour judged on its own data, whenever that data lands.

An hour is judged once its grace has passed, and judged again whenever late readings change its count of
valid minutes (a gateway's store-and-forward flush after a 5G outage), up to the late window. What is kept
per rule and device (in the rule's state) is a verdict per hour: valid minutes, exceeding or not (None:
invalid, fewer valid minutes than required), mean. Episodes follow from the verdicts, not from the order in
which hours were judged: a run of exceeding hours (invalid hours do not break it) up to the first valid
compliant hour is one episode, started at its first hour and resolved at that compliant hour. So a late
exceeding hour opens its episode (and webhook) when its data arrives, once; runs that a late hour joins
become one episode (the later one is resolved into the earlier).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from smartpark.alerts.book import Subject
from smartpark.alerts.evaluate import EVIDENCE_MAX, State, hour_start, hourly_mean
from smartpark.alerts.models import Episode
from smartpark.alerts.repo import Changes, Peak, Resolved, rfc3339
from smartpark.alerts.rules import RuleSpec

__all__ = ["CLOSE_GRACE_MS", "HourFigures", "closed_hours", "hour_figures", "judge"]

HOUR_MS = 3_600_000
CLOSE_GRACE_MS = 90_000  # a closed hour is first judged this long after it ends: on-time minutes are in by then


@dataclass(frozen=True, slots=True)
class HourFigures:
    """What one round found for one rule and device: (hour start, mean or None if invalid, valid minutes)."""

    rule: RuleSpec
    subject: Subject
    limit: float
    metric: str
    hours: list[tuple[int, float | None, int]]


@dataclass(slots=True)
class _Run:
    start: int
    end: int | None = None  # the first valid compliant hour after the run (its episode resolves then)
    first: tuple[float, int] = (0.0, 0)
    peak: float = 0.0
    evidence: list[dict[str, Any]] = field(default_factory=list)


def closed_hours(touched_ms: int | None, now: int, tz: ZoneInfo, window_ms: int) -> tuple[int, int]:
    """[start, end) of the closed local hours to look at: from the earliest touched reading (within the late
    window) or else the last closed hour, to the end of the last hour whose grace has passed."""
    end = hour_start(now - CLOSE_GRACE_MS, tz)
    first = end - 1 if touched_ms is None else max(touched_ms, now - window_ms)
    return min(hour_start(first, tz), end), end


def hour_figures(rows: list[tuple[int, float, int]], start: int, end: int, tz: ZoneInfo, need: int
                 ) -> list[tuple[int, float | None, int]]:
    """Per local hour in [start, end) that has rows: (hour start, mean or None, valid minutes)."""
    by_hour: dict[int, list[tuple[int, float, int]]] = {}
    for row in rows:
        if start <= row[0] < end:
            by_hour.setdefault(hour_start(row[0], tz), []).append(row)
    return [(hour, *hourly_mean(hour_rows, need)) for hour, hour_rows in sorted(by_hour.items())]


def judge(fig: HourFigures, state: State, changes: Changes, *, now: int, tz: ZoneInfo, window_ms: int) -> None:
    """Record the hours whose valid minutes changed; turn changed verdicts into episode events."""
    changed = False
    for hour, mean, n in fig.hours:
        key = str(hour)
        previous = state.hours.get(key)
        if n == 0 or (previous is not None and previous[0] == n):
            continue  # no valid minute, or nothing new since the hour was last judged
        active = None if mean is None else mean > fig.limit
        state.hours[key] = [n, active, None if mean is None else round(mean, 3), now]
        changed = True
    if changed:
        _reconcile(fig, state, now, tz, changes)
    _prune(state, now - window_ms - HOUR_MS)
    changes.states[(fig.rule.id, fig.subject.id)] = state


def _runs(state: State, tz: ZoneInfo) -> list[_Run]:
    """Runs of exceeding hours in the verdicts, each up to the first valid compliant hour after it."""
    runs: list[_Run] = []
    current: _Run | None = None
    for hour, (n, active, mean, judged) in sorted((int(k), v) for k, v in state.hours.items()):
        if active is None:
            continue  # an invalid hour neither starts nor ends a run
        if not active:
            if current is not None:
                current.end = hour
                runs.append(current)
                current = None
            continue
        if current is None:
            current = _Run(hour, first=(mean, n), peak=mean)
        current.peak = max(current.peak, mean)
        if len(current.evidence) < EVIDENCE_MAX:
            late_s = max(0, judged - hour - HOUR_MS - CLOSE_GRACE_MS) // 1000
            current.evidence.append({"hour": _local(hour, tz), "value": mean, "valid_minutes": n,
                                     "judged_at": rfc3339(judged), "late_s": late_s})
    if current is not None:
        runs.append(current)
    return runs


def _reconcile(fig: HourFigures, state: State, now: int, tz: ZoneInfo, changes: Changes) -> None:
    """Bring the episodes (state.runs: run start -> [episode id, end or None, peak]) in line with the runs."""
    known = {int(k): v for k, v in state.runs.items()}
    compliant = [int(k) for k, v in state.hours.items() if v[1] is False]
    for i, run in enumerate(_runs(state, tz)):
        # The first run continues an episode whose first hours were pruned (older than the late window) unless
        # a compliant hour ended that episode: without this, an exceedance longer than the window fired a new
        # episode with the same open key every hour (IntegrityError: the whole round was lost).
        low = -1 if i == 0 and not any(h < run.start for h in compliant) else run.start
        inside = sorted(s for s in known if low <= s < (run.end if run.end is not None else 2**62))
        if not inside:
            known[run.start] = _fire(fig, run, now, changes)
            continue
        owner = known.pop(inside[0])
        for other in inside[1:]:  # a late hour joined two runs: one episode, the later resolved into it
            merged = known.pop(other)
            if merged[1] is None:
                changes.events.append(Resolved(merged[0], other, None))
        if run.peak > owner[2]:
            changes.events.append(Peak(owner[0], run.peak))
            owner[2] = run.peak
        if run.end is not None and owner[1] is None:
            changes.events.append(Resolved(owner[0], run.end, None))
            owner[1] = run.end
        known[min(run.start, inside[0])] = owner
    state.runs = {str(k): v for k, v in sorted(known.items())}
    state.episode = next((v[0] for v in state.runs.values() if v[1] is None), None)


def _fire(fig: HourFigures, run: _Run, now: int, changes: Changes) -> list[Any]:
    mean, n = run.first
    late_s = max(0, now - run.start - HOUR_MS - CLOSE_GRACE_MS) // 1000
    text = f"{fig.rule.name}: {mean:.1f} mg/m3 over {n} valid minutes (limit {fig.limit:g})"
    if late_s > 0:
        text += f"; a past hour, judged {late_s} s after it closed (late data)"
    open_run = run.end is None
    ep = Episode(id=f"ep_{uuid.uuid4().hex}", rule_id=fig.rule.id, subject=fig.subject.id,
                 open_key=f"{fig.rule.id}|{fig.subject.id}" if open_run else None, site=fig.subject.site,
                 device=fig.subject.device, metric=fig.metric, severity=fig.rule.severity, state="firing",
                 started_ms=run.start, ended_ms=None, value=mean, peak=run.peak, limit=fig.limit, unit="mg/m3",
                 window="1h", message=text[:300], evidence=run.evidence, annotated=0)
    changes.events.append(ep)
    if not open_run:
        changes.events.append(Resolved(ep.id, run.end, None))  # type: ignore[arg-type]
    return [ep.id, run.end, run.peak]


def _prune(state: State, before_ms: int) -> None:
    """Forget verdicts and closed runs older than the late window: those hours cannot change any more."""
    state.hours = {k: v for k, v in state.hours.items() if int(k) >= before_ms}
    state.runs = {k: v for k, v in state.runs.items() if v[1] is None or v[1] >= before_ms}


def _local(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="minutes")
