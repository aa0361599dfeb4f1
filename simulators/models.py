"""Plant models: what each kind of device in a park would measure at a given time.

Vectorised with numpy over devices (a 300-device park costs one array operation per metric) and
deterministic from a seed. Gauges are pure functions of (devices, times); counters are integrals of rates that
are pure functions too, so they stay consistent with the gauges (``energy_kwh`` is the integral of
``power_kw``). ``ParkModel`` holds the only state: the counter values and when they were last advanced.

Each kind model exposes ``gauges(t_s, lt)`` and ``rates(t_s, lt)`` (per second, for counters): scenarios,
outages and backfill can wrap or re-evaluate them over any time array without touching the physics. The
numbers are simulation tuning, not reference data: the platform never reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from smartpark.core.clock import park_zone
from smartpark.core.reference import default_reference
from smartpark.core.registry.parkfile import DeviceSpec, ParkFile, SiteSpec
from smartpark.simulators.signals import (
    Array,
    Keys,
    LocalTime,
    device_key,
    hash01,
    local_time,
    salted,
    smooth_noise,
)

__all__ = [
    "STACKS",
    "CemsModel",
    "DeviceRef",
    "EnergyModel",
    "GreeningModel",
    "KindModel",
    "Metrics",
    "ParkModel",
    "Reading",
    "Stack",
    "resume_counters",
    "site_profile",
]

Metrics = dict[str, Array]  # metric -> (devices, times); NaN where a device does not report the metric
Reading = tuple[str, str, dict[str, float]]  # (site, device, metrics)

MAX_STEP_S = 60.0  # counters integrate rates on sub-steps no longer than this
MAX_STEPS = 10_000  # beyond ~7 days of gap the sub-step grows instead
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True, slots=True)
class DeviceRef:
    site: SiteSpec
    device: DeviceSpec


class KindModel(Protocol):
    refs: list[DeviceRef]

    def gauges(self, t_s: Array, lt: LocalTime) -> Metrics: ...

    def rates(self, t_s: Array, lt: LocalTime) -> Metrics: ...

    def offsets(self) -> dict[str, Array]: ...


# ------------------------------------------------------------------------------------------ load profiles


def _step(x: Array, width: float = 0.25) -> Array:
    """Smooth 0 -> 1 step at x = 0 (a ramp of about ``width`` hours, like a shift starting)."""
    return 0.5 * (1.0 + np.tanh(x / width))


def _bump(hour: Array, peak: float, width: float) -> Array:
    return np.exp(-(((hour - peak) / width) ** 2))


def _steel(lt: LocalTime) -> Array:
    return 0.82 + 0.03 * np.cos(_TWO_PI * (lt.hour - 3.0) / 24.0)  # continuous; cycles come per furnace


def _shifts(lt: LocalTime) -> Array:
    """Two shifts 08-20 on weekdays, a lunch dip, base load (lighting, compressors, IT) otherwise."""
    on = _step(lt.hour - 8.0) * _step(20.0 - lt.hour) * (lt.weekday < 5)
    return 0.15 + 0.8 * on * (1.0 - 0.12 * _bump(lt.hour, 12.5, 0.5))


def _arrivals(lt: LocalTime) -> Array:
    """Truck arrivals peaking in the early afternoon; cold rooms keep a base load."""
    weekend = np.where(lt.weekday < 5, 1.0, 0.75)
    return 0.3 + 0.6 * _bump(lt.hour, 13.0, 4.0) * weekend


def _mild_day(lt: LocalTime) -> Array:
    return 0.6 + 0.25 * _bump(lt.hour, 13.0, 5.0)


PROFILES: dict[str, Callable[[LocalTime], Array]] = {
    "steel": _steel,
    "automotive": _shifts,
    "parts": _shifts,
    "auto_parts": _shifts,
    "logistics": _arrivals,
}


def site_profile(industry: str, lt: LocalTime) -> Array:
    """A site's load as a fraction of its rated load over the times of ``lt``, by industry."""
    return PROFILES.get(industry, _mild_day)(lt)


def _profiles(industries: Sequence[str], lt: LocalTime) -> Array:
    """Profile per device, shape (devices, times), computed once per distinct industry."""
    names = sorted(set(industries))
    table = np.stack([site_profile(n, lt) for n in names]) if names else np.zeros((0, lt.hour.size))
    return table[[names.index(i) for i in industries]]


def _keys(refs: Sequence[DeviceRef], seed: int) -> Keys:
    return np.array([device_key(seed, f"{r.site.id}/{r.device.id}") for r in refs], dtype=np.uint64)


def _rngs(refs: Sequence[DeviceRef], seed: int) -> list[np.random.Generator]:
    """One generator per device for its fixed parameters, keyed by its ids (stable when a park grows)."""
    return [np.random.default_rng(device_key(seed, f"params/{r.site.id}/{r.device.id}")) for r in refs]


def _draw(rngs: Sequence[np.random.Generator], draw: Callable[[np.random.Generator], float]) -> Array:
    return np.array([draw(g) for g in rngs], dtype=np.float64)


def _integrate(rate: Array, t_s: Array) -> Array:
    """Trapezoid integral over time (axis 1) of a (devices, times) rate."""
    return ((rate[:, 1:] + rate[:, :-1]) * (np.diff(t_s) / 2.0)[None, :]).sum(axis=1)


# --------------------------------------------------------------------------------------------- energy

# Main-substation sizing by industry: kW per m² of site at full load, and per-hour counter rates at full load
# (None: scaled by site area with the factor in _AREA_RATES).
_KW_PER_M2 = {"steel": 0.05, "automotive": 0.025, "composites": 0.04, "logistics": 0.006}
_STEEL_RATES_H = {"gas_nm3": 8000.0, "water_m3": 2000.0, "steam_t": 250.0, "coal_t": 450.0, "output_t": 700.0}
_AREA_RATES = {  # per m² of site per hour at full load
    "gas_nm3": {"automotive": 2e-3, "composites": 1e-2, "logistics": 2e-4, "": 1e-3},
    "water_m3": {"logistics": 2e-5, "": 2e-4},
    "output_t": {"logistics": 1e-4, "": 2e-5},
}
_MAIN_COUNTERS = ("gas_nm3", "water_m3", "output_t")
_STEEL_COUNTERS = ("steam_t", "coal_t")


def _is_main(ref: DeviceRef, site_meters: Sequence[DeviceRef]) -> bool:
    """The site's main substation: the meter named ``*main-substation``, else the site's first meter."""
    mains = [r for r in site_meters if r.device.id.endswith("main-substation")]
    return ref is (mains[0] if mains else site_meters[0])


def _counter_rate_h(metric: str, site: SiteSpec) -> float:
    if site.industry == "steel":
        return _STEEL_RATES_H[metric]
    factors = _AREA_RATES[metric]
    return site.area_m2 * factors.get(site.industry, factors[""])


class EnergyModel:
    """Electricity meters: power by the site's load profile, furnace cycles at steel; main substations
    also meter the site's gas, water, output (and steam and coal at steel)."""

    def __init__(self, refs: list[DeviceRef], seed: int) -> None:
        self.refs = refs
        self.keys = _keys(refs, seed)
        rngs = _rngs(refs, seed)
        self.industries = [r.site.industry for r in refs]
        self.main = np.array([_is_main(r, [m for m in refs if m.site is r.site]) for r in refs], dtype=bool)
        self.rated_kw = self._rated(refs, _draw(rngs, lambda g: g.lognormal(0.0, 0.35)))
        steel = np.array([i == "steel" for i in self.industries])
        self.cycle_amp = np.where(steel, _draw(rngs, lambda g: g.uniform(0.06, 0.14)), 0.0)
        self.cycle_period_s = _draw(rngs, lambda g: g.uniform(2700.0, 5400.0))
        self.cycle_phase = _draw(rngs, lambda g: g.uniform(0.0, _TWO_PI))
        self.rates_h = {m: self._site_rates(m) for m in (*_MAIN_COUNTERS, *_STEEL_COUNTERS)}
        self._start_hours = _draw(rngs, lambda g: g.uniform(2000.0, 20000.0))

    def _rated(self, refs: Sequence[DeviceRef], jitter: Array) -> Array:
        site_kw = np.array([r.site.area_m2 * _KW_PER_M2.get(r.site.industry, 0.02) for r in refs])
        n_meters = np.array([sum(m.site is r.site for m in refs) for r in refs], dtype=np.float64)
        share = np.where(self.main, 1.0, 0.8 / np.maximum(n_meters - 1.0, 1.0))
        # a meter's declared rated power is what the platform checks steps against: the model stays below it
        # (load peaks at 1.2 x the model's rating)
        declared = np.array([r.device.rated_kw or np.inf for r in refs])
        return np.minimum(site_kw * share * jitter, declared / 1.2)

    def _site_rates(self, metric: str) -> Array:
        """Per-hour rate at full load where a main substation meters ``metric``, NaN elsewhere."""
        every_site = metric in _MAIN_COUNTERS
        return np.array([
            _counter_rate_h(metric, r.site) if main and (every_site or r.site.industry == "steel") else np.nan
            for r, main in zip(self.refs, self.main, strict=True)
        ])

    def load(self, t_s: Array, lt: LocalTime) -> Array:
        """Load as a fraction of rated, (devices, times)."""
        base = _profiles(self.industries, lt)
        angle = _TWO_PI * t_s[None, :] / self.cycle_period_s[:, None] + self.cycle_phase[:, None]
        cycles = self.cycle_amp[:, None] * np.tanh(4.0 * np.sin(angle))  # tap-to-tap: near-square wave
        noise = 0.04 * smooth_noise(salted(self.keys, "load30"), t_s, 1800.0)
        noise += 0.015 * smooth_noise(salted(self.keys, "load2"), t_s, 120.0)
        return np.clip(base * (1.0 + noise) + cycles, 0.02, 1.2)

    def gauges(self, t_s: Array, lt: LocalTime) -> Metrics:
        return {"power_kw": self.rated_kw[:, None] * self.load(t_s, lt)}

    def rates(self, t_s: Array, lt: LocalTime) -> Metrics:
        load = self.load(t_s, lt)
        out = {"energy_kwh": self.rated_kw[:, None] * load / 3600.0}
        out.update({m: r[:, None] * load / 3600.0 for m, r in self.rates_h.items()})
        return out

    def offsets(self) -> dict[str, Array]:
        out = {"energy_kwh": self.rated_kw * self._start_hours}
        out.update({m: r * self._start_hours for m, r in self.rates_h.items()})
        return out


# ----------------------------------------------------------------------------------------------- CEMS


@dataclass(frozen=True, slots=True)
class Stack:
    """How a source type behaves: reference O2 (None: judged on measured values), ultra-low limits
    (PM, SO2, NOx mg/m³) and the typical corrected level as a fraction of each limit."""

    o2_ref: float | None
    limits: tuple[float, float, float]
    level: tuple[float, float, float]
    o2_full: float  # % O2 at full load; more excess air at low load
    o2_idle: float
    flow_nm3_h: float
    temp_c: float
    moisture_pct: float


STACKS: dict[str, Stack] = {
    "sinter": Stack(16.0, (10, 35, 50), (0.45, 0.55, 0.65), 16.8, 18.2, 1.2e6, 110.0, 9.0),
    "pellet_grate_kiln": Stack(18.0, (10, 35, 50), (0.45, 0.5, 0.6), 16.0, 17.4, 6e5, 95.0, 10.0),
    "hot_blast_stove": Stack(None, (10, 50, 200), (0.35, 0.4, 0.5), 1.5, 4.0, 3e5, 210.0, 7.0),
    "coke_oven": Stack(8.0, (10, 30, 150), (0.45, 0.55, 0.6), 8.5, 11.0, 2.5e5, 180.0, 11.0),
    "coal_boiler": Stack(6.0, (10, 35, 50), (0.4, 0.55, 0.65), 5.5, 8.5, 4e5, 52.0, 13.0),
    "gas_boiler": Stack(3.0, (5, 35, 50), (0.3, 0.1, 0.6), 3.2, 6.0, 3e4, 95.0, 15.0),
    "glass_furnace": Stack(None, (20, 100, 400), (0.4, 0.45, 0.55), 11.0, 13.5, 6e4, 160.0, 9.0),
}
_DEFAULT_STACK = Stack(None, (10, 50, 200), (0.4, 0.5, 0.55), 8.0, 11.0, 1e5, 130.0, 10.0)
_POLLUTANTS = ("pm_mg_m3", "so2_mg_m3", "nox_mg_m3")
_SPIKE_WINDOW_S = 7200.0
_SPIKE_CHANCE = 0.03  # of 2-hour windows with an upset (about 1.6× the usual level)


class CemsModel:
    """Stack monitors: O2, flow and temperature follow the load; measured concentrations are the
    O2-corrected levels (mostly within the limits, with rare upsets) converted back to measured O2."""

    def __init__(self, refs: list[DeviceRef], seed: int) -> None:
        self.refs = refs
        self.keys = _keys(refs, seed)
        rngs = _rngs(refs, seed)
        stacks = [STACKS.get(r.device.source_type or "", _DEFAULT_STACK) for r in refs]
        self.industries = [r.site.industry for r in refs]
        # Limits and reference O2 are the platform's reference data, so "mostly within the limits" and a
        # scheduled exceedance mean the same to the simulator as to the KPIs and alerts.
        sources = [default_reference().source_type(r.device.source_type) for r in refs]
        self.o2_ref = np.array([s.o2_ref_pct if s.o2_ref_pct is not None else np.nan for s in sources])
        self.limits = np.array([[s.limits_mg_m3[p] for p in ("pm", "so2", "nox")] for s in sources],
                               dtype=np.float64).reshape(-1, 3)
        jitter = np.array([[g.uniform(0.85, 1.1) for _ in range(3)] for g in rngs]).reshape(-1, 3)
        self.level = np.array([s.level for s in stacks], dtype=np.float64).reshape(-1, 3) * jitter
        self.o2_full = np.array([s.o2_full for s in stacks])
        self.o2_idle = np.array([s.o2_idle for s in stacks])
        self.flow = np.array([s.flow_nm3_h for s in stacks]) * _draw(rngs, lambda g: g.lognormal(0.0, 0.2))
        self.temp = np.array([s.temp_c for s in stacks]) + _draw(rngs, lambda g: g.uniform(-8.0, 8.0))
        self.moisture = np.array([s.moisture_pct for s in stacks]) + _draw(rngs, lambda g: g.uniform(-1.5, 1.5))
        self.upsets = True  # the rare unscheduled upsets; a scenario may turn them off to schedule its own

    def load(self, t_s: Array, lt: LocalTime) -> Array:
        noise = 0.05 * smooth_noise(salted(self.keys, "load"), t_s, 1200.0)
        return np.clip(0.45 + 0.55 * _profiles(self.industries, lt) + noise, 0.3, 1.05)

    def gauges(self, t_s: Array, lt: LocalTime) -> Metrics:
        load = self.load(t_s, lt)
        o2 = self._o2(t_s, load)
        out = self._pollutants(t_s, load, o2)
        out["o2_pct"] = o2
        out["flow_nm3_h"] = self.flow[:, None] * (0.3 + 0.7 * load) * (1.0 + 0.03 * self._noise("flow", t_s, 300))
        out["temp_c"] = self.temp[:, None] + 12.0 * (load - 0.8) + 2.0 * self._noise("temp", t_s, 600)
        out["moisture_pct"] = self.moisture[:, None] + 0.8 * self._noise("moist", t_s, 900)
        return out

    def _noise(self, salt: str, t_s: Array, period_s: float) -> Array:
        return smooth_noise(salted(self.keys, salt), t_s, period_s)

    def _o2(self, t_s: Array, load: Array) -> Array:
        span = (self.o2_idle - self.o2_full)[:, None]
        drift = 0.35 * span * self._noise("o2air", t_s, 3600) + 0.15 * self._noise("o2", t_s, 600)
        o2 = self.o2_full[:, None] + span * (1.0 - load) / 0.7 + drift  # air ingress drifts, load swings
        return np.clip(o2, 0.5, 20.0)

    def _pollutants(self, t_s: Array, load: Array, o2: Array) -> Metrics:
        upset = hash01(salted(self.keys, "upset"), np.floor(t_s / _SPIKE_WINDOW_S).astype(np.int64))
        spike = np.where(self.upsets & (upset > 1.0 - _SPIKE_CHANCE), 1.6, 1.0)
        to_measured = self.to_measured(o2)
        out: Metrics = {}
        for j, name in enumerate(_POLLUTANTS):
            wobble = 1.0 + 0.2 * self._noise(f"{name}60", t_s, 3600) + 0.08 * self._noise(f"{name}5", t_s, 300)
            corrected = (self.limits[:, j] * self.level[:, j])[:, None] * wobble * (0.8 + 0.2 * load) * spike
            out[name] = np.clip(corrected * to_measured, 0.0, 1e4)
        return out

    def to_measured(self, o2: Array) -> Array:
        """Factor from O2-corrected to measured concentration, (devices, times); 1 where judged as measured."""
        ref = self.o2_ref[:, None]
        return np.where(np.isnan(ref), 1.0, (21.0 - o2) / (21.0 - np.nan_to_num(ref)))

    def rates(self, t_s: Array, lt: LocalTime) -> Metrics:
        return {}

    def offsets(self) -> dict[str, Array]:
        return {}


# ------------------------------------------------------------------------------------------- greening

_NDVI_PEAK_DOY = 200.0  # mid-July in the north-east
_IRRIGATION_M_PER_DAY = 0.004  # 4 mm a day on irrigated days, 05:00-07:00 local


def _season(doy: Array) -> Array:
    """0 in winter .. 1 at the height of summer."""
    d = np.mod(doy - _NDVI_PEAK_DOY + 182.6, 365.2425) - 182.6
    return np.exp(-((d / 60.0) ** 2))


class GreeningModel:
    """Green-area sensors, one per zone of a site: the zones' areas add up to the site's green area
    (12-20 % of the site, slowly varying), with NDVI and soil moisture by season and morning irrigation."""

    def __init__(self, refs: list[DeviceRef], seed: int) -> None:
        self.refs = refs
        self.keys = _keys(refs, seed)
        rngs = _rngs(refs, seed)
        site_rngs = [np.random.default_rng(device_key(seed, f"site/{r.site.id}")) for r in refs]
        self.site_keys = np.array([device_key(seed, f"site/{r.site.id}") for r in refs], dtype=np.uint64)
        self.site_ratio = _draw(site_rngs, lambda g: g.uniform(0.135, 0.17))
        weights = _draw(rngs, lambda g: g.uniform(0.5, 1.5))
        site_sum = np.array([weights[[m.site is r.site for m in refs]].sum() for r in refs])
        self.zone_m2 = np.array([r.site.area_m2 for r in refs]) * weights / np.maximum(site_sum, 1e-9)
        self.ndvi_summer = _draw(rngs, lambda g: g.uniform(0.6, 0.8))
        self.ndvi_winter = _draw(rngs, lambda g: g.uniform(0.08, 0.18))
        self.soil_base = _draw(rngs, lambda g: g.uniform(18.0, 28.0))
        self._start_m3 = self.zone_m2 * _draw(rngs, lambda g: g.uniform(0.05, 0.5))

    def green_area(self, t_s: Array, lt: LocalTime) -> Array:
        season = _season(lt.doy)[None, :]
        drift = 0.004 * smooth_noise(self.site_keys, t_s, 30 * 86_400.0)
        ratio = np.clip(self.site_ratio[:, None] + 0.008 * season + drift, 0.12, 0.2)
        return self.zone_m2[:, None] * ratio

    def _growing(self, lt: LocalTime) -> Array:
        return np.clip((_season(lt.doy) - 0.2) / 0.1, 0.0, 1.0)[None, :]

    def gauges(self, t_s: Array, lt: LocalTime) -> Metrics:
        season = _season(lt.doy)[None, :]
        ndvi = self.ndvi_winter[:, None] + (self.ndvi_summer - self.ndvi_winter)[:, None] * season
        ndvi += 0.02 * smooth_noise(salted(self.keys, "ndvi"), t_s, 3 * 86_400.0)
        since_watering = np.mod(lt.hour - 6.0, 24.0)[None, :]
        soil = self.soil_base[:, None] - 6.0 * (1.0 - season)
        soil += 5.0 * self._growing(lt) * np.exp(-since_watering / 8.0)
        soil += 1.5 * smooth_noise(salted(self.keys, "soil"), t_s, 6 * 3600.0)
        return {"green_area_m2": self.green_area(t_s, lt), "soil_moisture_pct": np.clip(soil, 3.0, 60.0),
                "ndvi": np.clip(ndvi, -1.0, 1.0)}

    def rates(self, t_s: Array, lt: LocalTime) -> Metrics:
        window = (_step(lt.hour - 5.0, 0.1) * _step(7.0 - lt.hour, 0.1))[None, :]
        per_s = _IRRIGATION_M_PER_DAY / (2 * 3600.0)
        return {"irrigation_m3": self.green_area(t_s, lt) * per_s * window * self._growing(lt)}

    def offsets(self) -> dict[str, Array]:
        return {"irrigation_m3": self._start_m3.copy()}


# ---------------------------------------------------------------------------------------------- the park

_KINDS: dict[str, Callable[[list[DeviceRef], int], KindModel]] = {
    "energy_meter": EnergyModel,
    "cems": CemsModel,
    "greening": GreeningModel,
}  # gateways measure nothing of their own


def resume_counters(models: Sequence[KindModel], counters: Sequence[dict[str, Array]],
                    values: dict[str, dict[str, float]]) -> None:
    """Set the counters (one dict of arrays per kind model, rows in its refs' order) to the stored values."""
    for model, columns in zip(models, counters, strict=True):
        for row, ref in enumerate(model.refs):
            for metric, value in values.get(ref.device.id, {}).items():
                if metric in columns:
                    columns[metric][row] = value


class ParkModel:
    """A park's devices and their counters; ``readings(ts_ms)`` is the park's state at ``ts_ms``.

    Counters start at seeded values at ``start_ms`` (default: the first call) and advance by the integral of
    their rates since the previous call. A call with an earlier time than the last leaves counters as they are
    (counters never run backwards). Same seed and same calls, same readings.
    """

    def __init__(self, park: ParkFile, seed: int, *, start_ms: int | None = None) -> None:
        self.park = park
        self.seed = seed
        self.tz = park_zone(park.park)
        refs = [DeviceRef(site, dev) for site in park.sites for dev in site.devices]
        self._order = {r.device.id: i for i, r in enumerate(refs)}
        self.models: list[KindModel] = [
            make([r for r in refs if r.device.kind == kind], seed) for kind, make in _KINDS.items()
        ]
        self.counters: list[dict[str, Array]] = [m.offsets() for m in self.models]
        self.last_s: float | None = None if start_ms is None else start_ms / 1000.0

    def resume(self, values: dict[str, dict[str, float]]) -> None:
        """Start counters at stored values (device -> metric -> value; see simulators/resume.py)."""
        resume_counters(self.models, self.counters, values)

    @property
    def devices(self) -> list[DeviceRef]:
        """The devices that report readings (no gateways), in park-file order."""
        refs = [r for m in self.models for r in m.refs]
        return sorted(refs, key=lambda r: self._order[r.device.id])

    def advance(self, ts_ms: int) -> None:
        """Integrate counter rates from the last time to ``ts_ms`` on sub-steps of at most a minute."""
        t = ts_ms / 1000.0
        if self.last_s is None or t <= self.last_s:
            self.last_s = t if self.last_s is None else self.last_s
            return
        steps = min(max(1, math.ceil((t - self.last_s) / MAX_STEP_S)), MAX_STEPS)
        grid = np.linspace(self.last_s, t, steps + 1)
        lt = local_time(grid, self.tz)
        for model, counters in zip(self.models, self.counters, strict=True):
            for name, rate in model.rates(grid, lt).items():
                counters[name] = counters[name] + _integrate(rate, grid)
        self.last_s = t

    def readings(self, ts_ms: int) -> list[Reading]:
        """Every reporting device's metrics at ``ts_ms`` (gauges at that instant, counters advanced to it)."""
        self.advance(ts_ms)
        t_s = np.array([ts_ms / 1000.0])
        lt = local_time(t_s, self.tz)
        out: list[tuple[int, Reading]] = []
        for model, counters in zip(self.models, self.counters, strict=True):
            columns = {name: v[:, 0] for name, v in model.gauges(t_s, lt).items()}
            columns.update(counters)
            for i, ref in enumerate(model.refs):
                metrics = {n: round(float(v[i]), 4) for n, v in columns.items() if math.isfinite(v[i])}
                out.append((self._order[ref.device.id], (ref.site.id, ref.device.id, metrics)))
        return [reading for _, reading in sorted(out, key=lambda o: o[0])]
