"""A scenario played over plant time: the park's readings over any range of times, events applied, in arrays.

Why arrays: a month of a 200-device park at one reading a minute is 8.6 million readings; evaluating them
one reading at a time would take minutes, while the models evaluate a (devices, times) block in one numpy
pass. A ``Timeline`` hands out ``Frame``s in time order; the live publisher takes one time per frame, the
backfill a few hours per frame, and both see the same values for the same seed and times.

Counters are integrated on sub-steps of at most a minute between samples, so they stay consistent with their
rates whatever the reading interval; a meter reset subtracts the counter's value at the reset time from then
on (the new meter starts at zero), so the integrated state itself never runs backwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt

from smartpark.core.catalog import Catalog, default_catalog
from smartpark.core.errors import ConfigError
from smartpark.core.reference import Reference, default_reference
from smartpark.core.registry.parkfile import ParkFile
from smartpark.simulators.models import MAX_STEP_S, CemsModel, DeviceRef, KindModel, ParkModel, resume_counters
from smartpark.simulators.scenario import (
    POLLUTANT_METRIC,
    ClockSkew,
    Drift,
    Event,
    Exceedance,
    FlagPeriod,
    MeterReset,
    O2Excursion,
    Outage,
    Scenario,
    Stuck,
)
from smartpark.simulators.signals import Array, local_time, salted, smooth_noise

__all__ = ["FLAG_CODES", "Block", "Frame", "Generated", "Timeline"]

FLAG_CODES = "NFMSDCTB"  # flag arrays hold an index into this; 0 is N (normal)
Codes = npt.NDArray[np.uint8]
SPAN_FACTOR = 2.5  # calibration gas reads this many times the limit (measured): invalid data that looks bad
STARTUP_O2_RISE = 1.5  # a start-up runs its fans with little fuel: more O2, lower measured, higher corrected
STARTUP_O2_MAX = 19.5


class Generated(msgspec.Struct, array_like=True, gc=False):
    """One generated reading as the ground truth records it: ``ts`` is true plant time, ``sent_ts`` the
    device's clock (they differ under clock skew)."""

    site: str
    device: str
    ts: int
    sent_ts: int
    metrics: dict[str, float]
    flags: dict[str, str]


@dataclass(slots=True)
class Block:
    """One kind model's devices over a frame's times."""

    refs: list[DeviceRef]
    metrics: dict[str, Array]  # (devices, times); NaN where a device does not report the metric
    flags: dict[str, Codes] = field(default_factory=dict)  # only metrics that carry a flag somewhere


@dataclass(slots=True)
class Frame:
    t_ms: npt.NDArray[np.int64]
    blocks: list[Block]
    skew_ms: list[npt.NDArray[np.int64]]  # per block, (devices,)

    def readings(self) -> Iterator[Generated]:
        """Every reading, time by time, devices in block order (Python objects: for publishing and truth)."""
        columns = [self._columns(b) for b in self.blocks]
        for j, t in enumerate(self.t_ms.tolist()):
            for block, skews, cols in zip(self.blocks, self.skew_ms, columns, strict=True):
                for i, ref in enumerate(block.refs):
                    metrics = {n: v for n, col in cols.items() if (v := col[i][j]) == v}  # NaN != NaN
                    flags = {n: FLAG_CODES[c] for n, f in block.flags.items() if (c := int(f[i, j])) and n in metrics}
                    yield Generated(ref.site.id, ref.device.id, t, t + int(skews[i]), metrics, flags)

    @staticmethod
    def _columns(block: Block) -> dict[str, list[list[float]]]:
        return {n: np.round(v, 4).tolist() for n, v in block.metrics.items()}

    @property
    def count(self) -> int:
        return sum(len(b.refs) for b in self.blocks) * len(self.t_ms)


class Timeline:
    """The park's readings from ``start_ms`` on, with the scenario's events; frames must come in time order."""

    def __init__(self, park: ParkFile, scenario: Scenario, start_ms: int, *, reference: Reference | None = None,
                 catalog: Catalog | None = None) -> None:
        self.park, self.scenario = park, scenario
        self.reference = reference or default_reference()
        self.catalog = catalog or default_catalog()
        self.start_s = start_ms / 1000.0
        self.model = ParkModel(park, scenario.seed, start_ms=start_ms)
        for m in self.model.models:
            if isinstance(m, CemsModel):
                m.upsets = scenario.upsets
        self.kinds: list[KindModel] = [m for m in self.model.models if m.refs]
        self._counters = [m.offsets() for m in self.kinds]
        self._last_s = self.start_s
        self._reset_base: dict[tuple[int, int], dict[str, float]] = {}
        self._where = {r.device.id: (b, i) for b, m in enumerate(self.kinds) for i, r in enumerate(m.refs)}
        self._check(scenario.events)
        self.skew_ms = [np.zeros(len(m.refs), dtype=np.int64) for m in self.kinds]
        for ev in scenario.events:
            if isinstance(ev, ClockSkew):
                b, i = self._where[ev.device]
                self.skew_ms[b][i] = round(ev.skew_s * 1000)

    def resume(self, values: dict[str, dict[str, float]]) -> None:
        """Start counters at stored values (device -> metric -> value; see simulators/resume.py)."""
        resume_counters(self.kinds, self._counters, values)

    # ------------------------------------------------------------------------------------ validation

    def targets(self, device: str) -> list[tuple[int, int]]:
        """(block, row) pairs a device id stands for: itself, or for a gateway its site's devices."""
        if device in self._where:
            return [self._where[device]]
        for site in self.park.sites:
            if any(d.id == device and d.kind == "gateway" for d in site.devices):
                return [self._where[d.id] for d in site.devices if d.id in self._where]
        raise ConfigError(f"scenario {self.scenario.source}: no reporting device or gateway {device!r} in the park")

    def _check(self, events: list[Event]) -> None:
        for ev in events:
            targets = self.targets(ev.device)
            if isinstance(ev, Outage | ClockSkew | MeterReset | FlagPeriod):
                continue
            b, _ = targets[0]
            kind = self.kinds[b]
            if isinstance(ev, Exceedance | O2Excursion) and not isinstance(kind, CemsModel):
                raise ConfigError(f"scenario {self.scenario.source}: {ev.device} is not a stack monitor (cems)")
            if isinstance(ev, Stuck | Drift) and ev.metric not in kind.gauges(np.zeros(1), local_time(
                    np.zeros(1), self.model.tz)):
                raise ConfigError(f"scenario {self.scenario.source}: {ev.device} has no gauge {ev.metric!r}")

    # ---------------------------------------------------------------------------------------- frames

    def frames(self, end_ms: int, interval_s: float | None = None, chunk: int = 240) -> Iterator[Frame]:
        """Frames of ``chunk`` times each, one time every ``interval_s`` from the start up to ``end_ms``."""
        step_ms = round(1000 * (interval_s or self.scenario.interval_s))
        first = round(self.start_s * 1000)
        for k in range(first, end_ms, step_ms * chunk):
            yield self.frame(np.arange(k, min(k + step_ms * chunk, end_ms), step_ms, dtype=np.int64))

    def frame(self, t_ms: npt.NDArray[np.int64]) -> Frame:
        t_s = t_ms.astype(np.float64) / 1000.0
        if t_s[0] < self._last_s:
            raise ValueError("frames must come in time order")
        lt = local_time(t_s, self.model.tz)
        blocks = [Block(m.refs, m.gauges(t_s, lt)) for m in self.kinds]
        for b, (block, values) in enumerate(zip(blocks, self._advance(t_s), strict=True)):
            block.metrics.update(values)
            self._apply_resets(b, block, t_s)
        for ev in self.scenario.events:
            self._apply(ev, blocks, t_s)
        return Frame(t_ms, blocks, self.skew_ms)

    def _advance(self, t_s: Array) -> list[dict[str, Array]]:
        """Counter values at each time: integrated from the last frame's end on sub-steps <= MAX_STEP_S."""
        edges = np.concatenate([[self._last_s], t_s])
        dt = np.diff(edges)
        k = np.maximum(1, np.ceil(dt / MAX_STEP_S)).astype(np.int64)
        seg = np.repeat(np.arange(len(dt)), k)
        j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
        fine = np.append(edges[seg] + dt[seg] * j / k[seg], edges[-1])
        at = np.cumsum(k)  # index in ``fine`` of each sample time
        lt = local_time(fine, self.model.tz)
        out = []
        for b, model in enumerate(self.kinds):
            values: dict[str, Array] = {}
            for name, rate in model.rates(fine, lt).items():
                steps = (rate[:, 1:] + rate[:, :-1]) * (np.diff(fine) / 2.0)[None, :]
                cum = np.concatenate([np.zeros((rate.shape[0], 1)), np.cumsum(steps, axis=1)], axis=1)
                self._reset_bases(b, name, fine, cum)
                values[name] = self._counters[b][name][:, None] + cum[:, at]
                self._counters[b][name] = values[name][:, -1].copy()
            out.append(values)
        self._last_s = float(t_s[-1])
        return out

    def _reset_bases(self, b: int, name: str, fine: Array, cum: Array) -> None:
        """Remember each meter's reading at its reset time (the new meter counts from there)."""
        for ev in self.scenario.events:
            if not isinstance(ev, MeterReset):
                continue
            at_s = self.start_s + 60.0 * ev.at_min
            for tb, row in self.targets(ev.device):
                base = self._reset_base.setdefault((tb, row), {})
                if tb == b and name not in base and at_s <= fine[-1]:
                    base[name] = float(self._counters[b][name][row] + np.interp(at_s, fine, cum[row]))

    def _apply_resets(self, b: int, block: Block, t_s: Array) -> None:
        for ev in self.scenario.events:
            if isinstance(ev, MeterReset):
                at_s = self.start_s + 60.0 * ev.at_min
                for tb, row in self.targets(ev.device):
                    for name, base in self._reset_base.get((tb, row), {}).items() if tb == b else ():
                        after = t_s >= at_s
                        block.metrics[name][row, after] -= base

    # ---------------------------------------------------------------------------------------- events

    def _apply(self, ev: Event, blocks: list[Block], t_s: Array) -> None:
        if isinstance(ev, Outage | ClockSkew | MeterReset):
            return  # network behaviour, or done while integrating
        t0, t1 = ev.window_s(self.start_s)
        mask = (t_s >= t0) & (t_s < t1)
        if not mask.any():
            return
        for b, row in self.targets(ev.device):
            block = blocks[b]
            if isinstance(ev, Drift):
                days = np.maximum(t_s - t0, 0.0) / 86_400.0
                block.metrics[ev.metric][row, mask] *= 1.0 + ev.pct_per_day / 100.0 * days[mask]
            elif isinstance(ev, Stuck):
                block.metrics[ev.metric][row, mask] = self._stuck_value(ev, b, row, t0)
            elif isinstance(ev, O2Excursion):
                block.metrics["o2_pct"][row, mask] = ev.o2_pct
            elif isinstance(ev, Exceedance):
                self._exceed(ev, (b, row), block, t_s, mask)
            elif isinstance(ev, FlagPeriod):
                self._flag(ev, (b, row), block, mask)

    def _stuck_value(self, ev: Stuck, b: int, row: int, t0: float) -> float:
        if ev.value is not None:
            return ev.value
        t = np.array([t0])
        return float(self.kinds[b].gauges(t, local_time(t, self.model.tz))[ev.metric][row, 0])

    def source_limit(self, b: int, row: int, pollutant: str) -> tuple[float, float | None]:
        """(limit mg/m³, reference O2 %) of a stack from the platform's reference data."""
        source = self.reference.source_type(self.kinds[b].refs[row].device.source_type)
        return source.limits_mg_m3[pollutant], source.o2_ref_pct  # type: ignore[index]

    def _exceed(self, ev: Exceedance, at: tuple[int, int], block: Block, t_s: Array, mask: npt.NDArray[np.bool_]
                ) -> None:
        """Hold the O2-corrected concentration at magnitude x limit, written back as measured at actual O2."""
        b, row = at
        limit, o2_ref = self.source_limit(b, row, ev.pollutant)
        o2 = block.metrics["o2_pct"][row]
        if ev.cause == "startup":
            o2[mask] = np.minimum(o2[mask] + STARTUP_O2_RISE, STARTUP_O2_MAX)
        keys = salted(self.kinds[b].keys[row : row + 1], f"episode/{ev.pollutant}")  # type: ignore[attr-defined]
        corrected = limit * ev.magnitude * (1.0 + 0.04 * smooth_noise(keys, t_s[mask], 300.0)[0])
        factor = 1.0 if o2_ref is None else (21.0 - o2[mask]) / (21.0 - o2_ref)
        block.metrics[POLLUTANT_METRIC[ev.pollutant]][row, mask] = np.clip(corrected * factor, 0.0, 1e4)

    def _flag(self, ev: FlagPeriod, at: tuple[int, int], block: Block, mask: npt.NDArray[np.bool_]) -> None:
        row = at[1]
        names = ev.metrics or [n for n, v in block.metrics.items() if not math.isnan(v[row, mask][0])]
        code = FLAG_CODES.index(ev.flag)
        for name in names:
            if name not in block.metrics:
                raise ConfigError(f"scenario {self.scenario.source}: {ev.device} does not report {name!r}")
            flags = block.flags.setdefault(name, np.zeros(block.metrics[name].shape, dtype=np.uint8))
            flags[row, mask] = code
            self._flagged_value(ev.flag, name, at, block, mask)

    def _flagged_value(self, flag: str, name: str, at: tuple[int, int], block: Block,
                       mask: npt.NDArray[np.bool_]) -> None:
        """What the instrument reads meanwhile: span gas under calibration, zero under a fault."""
        b, row = at
        pollutant = next((p for p, m in POLLUTANT_METRIC.items() if m == name), None)
        if flag == "C" and pollutant is not None:
            block.metrics[name][row, mask] = SPAN_FACTOR * self.source_limit(b, row, pollutant)[0]
        elif flag == "D" and self.catalog[name].kind == "gauge":
            block.metrics[name][row, mask] = 0.0
