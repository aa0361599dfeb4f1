"""Scenarios: what a simulation run makes happen, as data (YAML) rather than code.

A scenario names the park, the seed, the reading rate, the network's behaviour (jitter, latency, duplicates,
out-of-order delivery, malformed messages) and timed events: exceedance episodes on a stack, O2 excursions,
5G outages, meter replacements, stuck sensors, drift, calibration / maintenance / fault periods, clock skew.
Event times are minutes from the run's start, so one scenario replays at any date, live or in a backfill.
Files are validated with msgspec like park files: an unknown key is an error naming the file, line and key.
"""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

from smartpark.core.errors import ConfigError
from smartpark.core.registry.parkfile import _locate

__all__ = [
    "ClockSkew",
    "Drift",
    "Event",
    "Exceedance",
    "FlagPeriod",
    "MeterReset",
    "Network",
    "O2Excursion",
    "Outage",
    "Scenario",
    "Stuck",
    "Transport",
    "default_scenario",
    "load_scenario",
    "parse_scenario",
    "scenario_path",
]

Minutes = Annotated[float, msgspec.Meta(ge=0)]
Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
Pollutant = Literal["pm", "so2", "nox"]
POLLUTANT_METRIC: dict[str, str] = {"pm": "pm_mg_m3", "so2": "so2_mg_m3", "nox": "nox_mg_m3"}


class _Timed(msgspec.Struct, forbid_unknown_fields=True, tag_field="kind"):
    device: str
    start_min: Minutes
    duration_min: Annotated[float, msgspec.Meta(gt=0)] = 60.0

    def window_s(self, start_s: float) -> tuple[float, float]:
        """(from, until) in epoch seconds, until exclusive."""
        t0 = start_s + 60.0 * self.start_min
        return t0, t0 + 60.0 * self.duration_min


class Exceedance(_Timed, tag="exceedance"):
    """O2-corrected concentration held at ``magnitude`` x the source type's limit (a start-up or a trip)."""

    pollutant: Pollutant = "so2"
    magnitude: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    cause: Literal["startup", "bag_filter_trip", "fgd_trip"] = "startup"


class O2Excursion(_Timed, tag="o2_excursion"):
    """O2 near 21 % (air ingress, fan on a cold stack): corrected values cannot be computed (invalid)."""

    o2_pct: Annotated[float, msgspec.Meta(ge=0, le=21)] = 20.6


class Outage(_Timed, tag="outage"):
    """A device's (or a gateway's: its site's devices') 5G link down; readings buffered, sent as batches."""


class MeterReset(msgspec.Struct, forbid_unknown_fields=True, tag_field="kind", tag="meter_reset"):
    """A meter replaced: its counters restart from zero at ``at_min``."""

    device: str
    at_min: Minutes


class Stuck(_Timed, tag="stuck"):
    """A sensor stuck at its value at the start of the period (or at ``value``)."""

    metric: str = "power_kw"
    value: float | None = None


class Drift(_Timed, tag="drift"):
    """A sensor drifting by ``pct_per_day`` percent a day of the period."""

    metric: str = "o2_pct"
    pct_per_day: float = 5.0


class FlagPeriod(_Timed, tag="flag"):
    """Calibration (C), maintenance (M) or a fault (D): the metrics carry the flag (all when none named)."""

    flag: Literal["C", "M", "D", "F", "B"] = "C"
    metrics: list[str] = []


class ClockSkew(msgspec.Struct, forbid_unknown_fields=True, tag_field="kind", tag="clock_skew"):
    """A device's clock off by ``skew_s`` seconds: the ``ts`` it sends, not when it measures."""

    device: str
    skew_s: float


Event = Exceedance | O2Excursion | Outage | MeterReset | Stuck | Drift | FlagPeriod | ClockSkew


class Network(msgspec.Struct, forbid_unknown_fields=True):
    """How messages travel: per-message chances of duplicates, out-of-order delivery and malformed payloads."""

    jitter_ms: Annotated[int, msgspec.Meta(ge=0)] = 0  # a tick's sends start up to this late, in shuffled order
    latency_ms: Annotated[int, msgspec.Meta(ge=0)] = 0  # fixed delay between measuring and sending
    duplicate_rate: Rate = 0.0
    reorder_rate: Rate = 0.0
    malformed_rate: Rate = 0.0


class Transport(msgspec.Struct, forbid_unknown_fields=True):
    """How a device reaches the platform: MQTT (the default) or, for a stack monitor, HJ 212 over TCP to the
    gateway with its own faults (per packet chances)."""

    device: str
    transport: Literal["mqtt", "hj212"] = "hj212"
    bad_crc_rate: Rate = 0.0  # a packet goes out first with a wrong CRC (the gateway answers 9011 QnRtn=9)
    split_rate: Rate = 0.0  # a packet is sent as a split packet in two parts (Flag D, PNUM/PNO)
    reconnect_rate: Rate = 0.0  # the unit drops its connection and reconnects before a packet


class Scenario(msgspec.Struct, forbid_unknown_fields=True):
    name: str = "unnamed"
    description: str = ""
    park: str | None = None  # park file, relative to the scenario file; None: the demo park
    seed: int = 1
    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0  # one reading per device per interval (plant time)
    start: datetime | None = None  # plant time of the run's start (with offset); None: now, or N days ago
    upsets: bool = True  # the models' own rare, unscheduled upsets on stacks
    network: Network = msgspec.field(default_factory=Network)
    events: list[Event] = []
    transports: list[Transport] = []  # devices that do not speak MQTT (HJ 212 stack monitors)
    source: str = ""  # where it was read from (set by the loader)


def scenario_path(name: str = "demo") -> Path:
    """A scenario shipped with the package (simulators/scenarios/NAME.yaml)."""
    return Path(str(resources.files("smartpark.simulators").joinpath(f"scenarios/{name}.yaml")))


def parse_scenario(text: str, path: str = "<scenario>") -> Scenario:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if root is None:
        raise ConfigError(f"{path}: empty scenario file")
    try:
        scenario = msgspec.convert(data, Scenario, strict=False)
    except msgspec.ValidationError as exc:
        line, key = _locate(root, str(exc))
        raise ConfigError(f"{path}:{line}: {exc}" + (f" (key `{key}`)" if key else "")) from exc
    if scenario.start is not None and scenario.start.tzinfo is None:
        raise ConfigError(f"{path}: `start` needs an offset (e.g. 2025-07-07T00:00:00+08:00)")
    return msgspec.structs.replace(scenario, source=path)


def load_scenario(path: Path) -> Scenario:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"scenario {path}: {exc}") from exc
    return parse_scenario(text, str(path))


def default_scenario() -> Scenario:
    return load_scenario(scenario_path("demo"))


def park_file_of(scenario: Scenario) -> Path | None:
    """The scenario's park file resolved against the scenario's folder; None for the demo park."""
    if scenario.park is None:
        return None
    park = Path(scenario.park)
    return park if park.is_absolute() or not scenario.source else Path(scenario.source).parent / park
