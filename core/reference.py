"""Reference data (limits, reference O2, standard-coal and grid CO2 factors), loaded from a data file.

Every figure lives in core/data/reference.yaml with its source and confidence, so a park corrects data,
not code. Loaded and validated once at start-up.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from smartpark.core.datafiles import DataFile
from smartpark.core.errors import ConfigError

__all__ = ["Carrier", "Reference", "SourceType", "default_reference", "load_reference"]

WHAT = "reference data"

Confidence = Literal["C", "S", "U"]
Pollutant = Literal["pm", "so2", "nox"]


class SourceType(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    description: str
    o2_ref_pct: float | None  # None: judged on measured values, no correction
    limits_mg_m3: dict[Pollutant, float]
    confidence: Confidence
    source: str


class Emissions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    valid_flags: list[str]
    o2_correction_max_pct: float
    compliance_target_pct: float
    pollutants: dict[Pollutant, str]
    source_types: dict[str, SourceType]


class Carrier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    metric: str
    kgce_per_unit: float
    unit: str
    confidence: Confidence
    source: str
    # CO2 by scope: 1 burnt on site, 2 purchased; None: no CO2 (e.g. a feedstock). Electricity takes the grid
    # factor of the park's region and year; every other carrier its own factor, with its source and confidence.
    co2_scope: Literal[1, 2] | None = None
    co2_kg_per_unit: float | None = None
    co2_confidence: Confidence | None = None
    co2_source: str | None = None


class Energy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    carriers: dict[str, Carrier]
    grid_co2_kg_per_kwh: dict[str, dict[int, float]]
    output_metric: str


class Band(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min: float
    max: float


class Greening(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    industrial_green_land_max_pct: float
    default_band_pct: Band


class Reference(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    emissions: Emissions
    energy: Energy
    greening: Greening

    def source_type(self, name: str | None) -> SourceType:
        """The source type's limits and reference O2; unknown or missing types fall back to `other`."""
        types = self.emissions.source_types
        return types.get(name or "other", types["other"])

    def grid_factor(self, region: str, year: int) -> tuple[float, int, str]:
        """(kgCO2/kWh, year, region): the region's latest year not after ``year`` (else its earliest);
        the national figures where the region has none."""
        for where in (region, "national"):
            years = self.energy.grid_co2_kg_per_kwh.get(where, {})
            usable = [y for y in years if y <= year] or sorted(years)
            if usable:
                chosen = max(usable)
                return years[chosen], chosen, where
        raise ConfigError("reference data has no grid CO2 factor at all")


def _build(ref: Reference, source: str) -> Reference:
    for name, c in ref.energy.carriers.items():
        if c.co2_scope is not None and c.metric != "energy_kwh" and (c.co2_kg_per_unit is None or not c.co2_source):
            raise ConfigError(f"{WHAT} {source}: carrier {name} has a CO2 scope but no co2_kg_per_unit and co2_source")
    if "other" not in ref.emissions.source_types:
        raise ConfigError(f"{WHAT} {source}: emissions.source_types needs an `other` entry")
    return ref


_FILE = DataFile("reference.yaml", WHAT, Reference, _build)
load_reference = _FILE.load
default_reference = _FILE.default
