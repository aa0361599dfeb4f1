"""The "two-high" screening reference data (core/data/screening.yaml): sectors, the energy-use threshold,
restricted product lines, and the national benchmark and baseline energy-efficiency levels per process."""

from __future__ import annotations

import msgspec

from smartpark.core.datafiles import DataFile
from smartpark.core.errors import ConfigError

__all__ = ["Process", "Product", "Screening", "Sector", "default_screening", "load_screening"]

WHAT = "screening reference data"


class Sector(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    industries: list[str]


class Product(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    restricted: bool = False
    confidence: str = "U"
    source: str = ""


class Process(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Levels in kgce per tonne of the line's output (lower is better); None where no national level exists."""

    name: str
    sector: str
    confidence: str
    source: str
    benchmark_kgce_t: float | None = None
    baseline_kgce_t: float | None = None


class Screening(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    sectors: dict[str, Sector]
    sectors_confidence: str
    sectors_source: str
    energy_threshold_tce_year: float
    energy_threshold_confidence: str
    energy_threshold_source: str
    key_unit_tce_year: float
    key_unit_confidence: str
    key_unit_source: str
    products: dict[str, Product]
    processes: dict[str, Process]

    def sector_of(self, industry: str) -> str | None:
        return next((k for k, s in self.sectors.items() if industry in s.industries), None)


def _build(data: Screening, source: str) -> Screening:
    for name, p in data.processes.items():
        if p.sector not in data.sectors:
            raise ConfigError(f"{WHAT} {source}: process {name} names unknown sector {p.sector!r}")
        if (p.benchmark_kgce_t is None) != (p.baseline_kgce_t is None):
            raise ConfigError(f"{WHAT} {source}: process {name} needs both benchmark and baseline, or neither")
    for name, confidence in [*((n, e.confidence) for n, e in data.products.items()),
                             *((n, e.confidence) for n, e in data.processes.items())]:
        if confidence not in ("C", "S", "U"):
            raise ConfigError(f"{WHAT} {source}: {name} confidence must be C, S or U")
    return data


_FILE = DataFile("screening.yaml", WHAT, Screening, _build)
load_screening = _FILE.load
default_screening = _FILE.default
