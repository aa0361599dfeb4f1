"""The pollutant-code table (``core/data/hj212-codes.yaml``): the catalog metric of each HJ 212 code and suffix."""

from __future__ import annotations

from pathlib import Path

import msgspec

from smartpark.core.catalog import Catalog
from smartpark.core.datafiles import convert_yaml, read_data_file
from smartpark.core.errors import ConfigError

__all__ = ["CodeMap", "CodeSpec", "load_codes"]

WHAT = "HJ 212 code table"


class CodeSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    metric: str
    corrected: str | None = None
    hourly: str | None = None
    hourly_corrected: str | None = None
    daily: str | None = None
    daily_corrected: str | None = None
    scale: float = 1.0


class _CodesFile(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    codes: dict[str, CodeSpec]


# command -> (value suffix, corrected suffix, which CodeSpec fields hold the targets)
_TARGETS = {
    "2011": ("Rtd", "ZsRtd", "metric", "corrected"),
    "2051": ("Avg", "ZsAvg", "metric", "corrected"),
    "2061": ("Avg", "ZsAvg", "hourly", "hourly_corrected"),
    "2031": ("Avg", "ZsAvg", "daily", "daily_corrected"),
}


class CodeMap:
    """(command, code) -> [(suffix, metric, scale)], built once from the table, checked against the catalog."""

    def __init__(self, codes: dict[str, CodeSpec], catalog: Catalog) -> None:
        self.codes = codes
        self.targets: dict[tuple[str, str], tuple[tuple[str, str, float], ...]] = {}
        for cn, (value, zs, field, zs_field) in _TARGETS.items():
            for code, spec in codes.items():
                pairs = [(value, getattr(spec, field)), (zs, getattr(spec, zs_field))]
                found = tuple((suffix, metric, spec.scale) for suffix, metric in pairs if metric)
                for _, metric, _ in found:
                    if metric not in catalog:
                        raise ConfigError(f"{WHAT}: {code} maps to {metric!r}, which the metric catalog lacks")
                self.targets[(cn, code)] = found

    def for_item(self, cn: str, code: str) -> tuple[tuple[str, str, float], ...] | None:
        """The (suffix, metric, scale) targets of one factor under one command; None for an unknown code."""
        return self.targets.get((cn, code))


def load_codes(catalog: Catalog, path: Path | None = None) -> CodeMap:
    text, source = read_data_file(path, "hj212-codes.yaml", WHAT)
    raw = convert_yaml(text, source, WHAT, _CodesFile)
    return CodeMap(raw.codes, catalog)

