"""Evaluation without I/O: per-subject state, hysteresis latches, durations, and the window arithmetic.

Everything here is a function of (state, input): the engine feeds it readings or window figures and persists
the state it returns, which is what makes a restart neither lose an episode nor fire it twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from smartpark.alerts.rules import Condition, RuleSpec
from smartpark.core.contract import Reading
from smartpark.core.emissions import is_valid_flag, o2_correct
from smartpark.core.reference import Reference, SourceType

__all__ = ["EVIDENCE_MAX", "State", "Step", "advance", "condition_bounds", "condition_value", "covered",
           "day_start", "extend_live", "hour_start", "hourly_mean", "next_day", "threshold_active"]

MINUTE_MS = 60_000
EVIDENCE_MAX = 20  # readings kept as the evidence of an episode
LIVE_GAP_MS = 300_000  # live readings closer than this form one covered span (State.live)
LIVE_SPANS = 32
Step = Literal["fire", "resolve", "peak"] | None


@dataclass(slots=True)
class State:
    """What one rule remembers about one subject; stored as JSON in ``alert_states``."""

    latches: list[bool] = field(default_factory=list)
    pending_since: int | None = None
    last_ts: int = 0  # device time of the last input that changed the state: replays at or before it are no-ops
    episode: str | None = None
    peak: float | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    mark: int = 0  # scheduled rules: the last window evaluated (hour start, day start)
    # closed-hour rules (alerts/hours.py): hour start -> [valid minutes, exceeding (None: invalid), mean, judged at]
    hours: dict[str, list[Any]] = field(default_factory=dict)
    runs: dict[str, list[Any]] = field(default_factory=dict)  # run start -> [episode id, end or None, peak]
    # device-time spans the live timeline covered densely ([start, end], gaps up to LIVE_GAP_MS): a reading older
    # than last_ts inside one is a duplicate or a redelivery; one in a gap (before, between) is late data
    live: list[list[int]] = field(default_factory=list)
    # late data (back-dated, or filling a gap after live readings resumed) is judged on a timeline of its own
    late: State | None = None
    # the episode rate limit (StateBook): episodes opened in the clock hour starting at rate_hour (receive time)
    rate_hour: int = 0
    rate_count: int = 0
    suppressed: int = 0  # episodes not opened because of the rate limit, ever
    suppressed_since: int = 0  # ... since the last episode that was opened (which reports them)

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> State:
        if not data:
            return cls()
        late = data.get("late")
        return cls(**{**data, "late": cls.load(late) if late else None})

    def dump(self) -> dict[str, Any]:
        return asdict(self)


def covered(state: State, ts_ms: int) -> bool:
    """Whether the live timeline has judged the device around ``ts_ms`` (at or before last_ts). A state from
    before the spans were kept covers everything up to its last_ts."""
    if not state.live:
        return ts_ms <= state.last_ts
    return any(start <= ts_ms <= end for start, end in state.live)


def extend_live(state: State, ts_ms: int) -> None:
    """Record a reading the live timeline judged (newest last): it extends the last span or opens one; at most
    LIVE_SPANS are kept, the oldest two merging (a gap forgotten that way counts as covered)."""
    live = state.live
    if not live and state.last_ts:
        live.append([0, state.last_ts])  # a state from before spans were kept
    if live and ts_ms - live[-1][1] <= LIVE_GAP_MS:
        live[-1][1] = max(live[-1][1], ts_ms)
        return
    live.append([ts_ms, ts_ms])
    if len(live) > LIVE_SPANS:
        live[0:2] = [[live[0][0], live[1][1]]]


def advance(state: State, active: bool, ts_ms: int, *, duration_ms: int, sample: dict[str, Any],
            value: float | None) -> Step:
    """Move the episode lifecycle on by one observation; say what happened (fire, resolve, a new peak)."""
    if not active:
        state.pending_since, state.evidence = None, []
        if state.episode is None:
            return None
        return "resolve"
    if state.episode is not None:
        if value is not None and (state.peak is None or value > state.peak):
            state.peak = value
            return "peak"
        return None
    if state.pending_since is None:
        state.pending_since = ts_ms
    state.evidence = [*state.evidence, sample][-EVIDENCE_MAX:]
    if ts_ms - state.pending_since >= duration_ms:
        state.peak = max((s["value"] for s in state.evidence if s.get("value") is not None), default=value)
        return "fire"
    return None


def condition_value(cond: Condition, reading: Reading, source: SourceType, ref: Reference) -> float | None:
    """The value a condition compares: None when the reading lacks it or it is not valid data."""
    value = reading.metrics.get(cond.metric)
    if value is None or not is_valid_flag(reading.flags.get(cond.metric), ref):
        return None
    if not cond.o2_corrected:
        return value
    o2 = reading.metrics.get("o2_pct")
    if o2 is None or not is_valid_flag(reading.flags.get("o2_pct"), ref):
        return None
    return o2_correct(value, o2, source, ref.emissions.o2_correction_max_pct)


def condition_bounds(cond: Condition, source: SourceType) -> tuple[float, float] | None:
    """(limit, clear) of a condition for a device of this source type; None if the type has no such limit."""
    limit = cond.limit if cond.pollutant is None else source.limits_mg_m3.get(cond.pollutant)
    if limit is None:
        return None
    clear = cond.clear if cond.clear is not None else limit * cond.clear_ratio
    return limit, clear


def _latch(cond: Condition, value: float, bounds: tuple[float, float], was: bool) -> bool:
    """Hysteresis: on past the limit, off past the clear value, unchanged in between."""
    limit, clear = bounds
    if cond.op == ">":
        return value > limit or (was and value >= clear)
    return value < limit or (was and value <= clear)


def threshold_active(rule: RuleSpec, state: State, reading: Reading, source: SourceType, ref: Reference
                     ) -> tuple[bool, float | None, float | None] | None:
    """Update the latches from one reading; (active, first condition's value, its limit), or None when the
    reading carries nothing the rule compares (the state is then left alone)."""
    if len(state.latches) != len(rule.conditions):
        state.latches = [False] * len(rule.conditions)
    seen = False
    first: tuple[float | None, float | None] = (None, None)
    for i, cond in enumerate(rule.conditions):
        bounds = condition_bounds(cond, source)
        value = condition_value(cond, reading, source, ref) if bounds else None
        if value is None or bounds is None:
            continue
        seen = True
        state.latches[i] = _latch(cond, value, bounds, state.latches[i])
        if first == (None, None):
            first = (value, bounds[0])
    if not seen:
        return None
    active = any(state.latches) if rule.combine == "any" else all(state.latches)
    return active, first[0], first[1]


def hour_start(ts_ms: int, tz: ZoneInfo) -> int:
    """Start of the local clock hour holding ``ts_ms`` (regulatory hours are local hours)."""
    local = datetime.fromtimestamp(ts_ms / 1000, tz).replace(minute=0, second=0, microsecond=0)
    return int(local.timestamp() * 1000)


def day_start(ts_ms: int, tz: ZoneInfo) -> int:
    local = datetime.fromtimestamp(ts_ms / 1000, tz)
    midnight = datetime(local.year, local.month, local.day, tzinfo=tz)
    return int(midnight.timestamp() * 1000)


def next_day(day_ms: int, tz: ZoneInfo) -> int:
    local = datetime.fromtimestamp(day_ms / 1000, tz) + timedelta(days=1, hours=2)
    return day_start(int(local.timestamp() * 1000), tz)


def hourly_mean(rows: list[tuple[int, float, int]], min_valid: int) -> tuple[float | None, int]:
    """(mean of the minute means, valid minutes) from (time, total, n) rows in time order; mean None below
    ``min_valid``. Rows of one minute (several readings) make one minute mean, as the KPIs' minute means do."""
    minutes: dict[int, list[float]] = {}
    for ts, total, n in rows:
        if n > 0:
            acc = minutes.setdefault(ts - ts % MINUTE_MS, [0.0, 0])
            acc[0] += total
            acc[1] += n
    means = [total / n for total, n in minutes.values()]
    if len(means) < min_valid:
        return None, len(means)
    return sum(means) / len(means), len(means)
