"""The metric catalog: which metrics exist, their domain (InfluxDB measurement), unit, kind and range.

Loaded from a data file so a park can extend it without code (contract "Metric catalog v1").
"""

from __future__ import annotations

from typing import Literal

import msgspec

from smartpark.core.datafiles import DataFile
from smartpark.core.errors import ConfigError

__all__ = ["DOMAINS", "Catalog", "Metric", "default_catalog", "load_catalog"]

WHAT = "metric catalog"

DOMAINS = ("energy", "emissions", "greening")
Domain = Literal["energy", "emissions", "greening"]
Kind = Literal["gauge", "counter"]


class Metric(msgspec.Struct, frozen=True):
    name: str
    domain: Domain
    unit: str
    kind: Kind
    min: float
    max: float
    description: str = ""

    def in_range(self, value: float) -> bool:
        return self.min <= value <= self.max


class _MetricSpec(msgspec.Struct, forbid_unknown_fields=True):
    domain: Domain
    unit: str
    kind: Kind
    min: float
    max: float
    description: str = ""


class _CatalogFile(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    metrics: dict[str, _MetricSpec]


class Catalog:
    """An immutable lookup of metrics by name."""

    __slots__ = ("_splits", "domain_of", "metrics", "version")

    def __init__(self, metrics: dict[str, Metric], version: int = 1) -> None:
        self.metrics = dict(metrics)
        self.version = version
        self.domain_of = {name: m.domain for name, m in self.metrics.items()}  # the ingest's hot lookup
        self._splits: dict[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]] = {}

    def split(self, names: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """``names`` (known metrics) grouped by domain: ((domain, names), ...) in first-seen order. Cached: a
        park's devices send a few dozen distinct metric sets, over and over."""
        plan = self._splits.get(names)
        if plan is None:
            groups: dict[str, list[str]] = {}
            for n in names:
                groups.setdefault(self.domain_of[n], []).append(n)
            plan = tuple((domain, tuple(members)) for domain, members in groups.items())
            if len(self._splits) < 4096:
                self._splits[names] = plan
        return plan

    def get(self, name: str) -> Metric | None:
        return self.metrics.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.metrics

    def __getitem__(self, name: str) -> Metric:
        return self.metrics[name]

    def in_domain(self, domain: str) -> list[Metric]:
        return [m for m in self.metrics.values() if m.domain == domain]


def _build(raw: _CatalogFile, source: str) -> Catalog:
    metrics = {}
    for name, spec in raw.metrics.items():
        if spec.min > spec.max:
            raise ConfigError(f"{WHAT} {source}: {name}: min {spec.min} > max {spec.max}")
        metrics[name] = Metric(name=name, **msgspec.structs.asdict(spec))
    return Catalog(metrics, raw.version)


_FILE = DataFile("catalog.yaml", WHAT, _CatalogFile, _build)
load_catalog = _FILE.load
default_catalog = _FILE.default
