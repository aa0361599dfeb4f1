"""The metric catalog: which metrics exist, their domain (InfluxDB measurement), unit, kind and range.

Loaded from a data file so a park can extend it without code (contract "Metric catalog v1").
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

import msgspec
import yaml

from smartpark.core.errors import ConfigError

__all__ = ["DOMAINS", "Catalog", "Metric", "default_catalog", "load_catalog"]

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

    __slots__ = ("domain_of", "metrics", "version")

    def __init__(self, metrics: dict[str, Metric], version: int = 1) -> None:
        self.metrics = dict(metrics)
        self.version = version
        self.domain_of = {name: m.domain for name, m in self.metrics.items()}  # the ingest's hot lookup

    def get(self, name: str) -> Metric | None:
        return self.metrics.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.metrics

    def __getitem__(self, name: str) -> Metric:
        return self.metrics[name]

    def in_domain(self, domain: str) -> list[Metric]:
        return [m for m in self.metrics.values() if m.domain == domain]


def _parse(text: str, source: str) -> Catalog:
    try:
        raw = msgspec.convert(yaml.safe_load(text), _CatalogFile, strict=False)  # YAML 1.1 reads 1.0e6 as str
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ConfigError(f"metric catalog {source}: {exc}") from exc
    metrics = {}
    for name, spec in raw.metrics.items():
        if spec.min > spec.max:
            raise ConfigError(f"metric catalog {source}: {name}: min {spec.min} > max {spec.max}")
        metrics[name] = Metric(name=name, **msgspec.structs.asdict(spec))
    return Catalog(metrics, raw.version)


def load_catalog(path: Path | None = None) -> Catalog:
    """Load a catalog file; ``None`` loads the catalog shipped with smartpark."""
    if path is None:
        return default_catalog()
    try:
        return _parse(Path(path).read_text(encoding="utf-8"), str(path))
    except OSError as exc:
        raise ConfigError(f"metric catalog {path}: {exc}") from exc


@cache
def default_catalog() -> Catalog:
    text = resources.files("smartpark.core").joinpath("data/catalog.yaml").read_text(encoding="utf-8")
    return _parse(text, "catalog.yaml (built in)")
