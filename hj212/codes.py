"""The pollutant-code table (``core/data/hj212-codes.yaml``): the catalog metric of each HJ 212 code and suffix."""

from __future__ import annotations

from pathlib import Path

import msgspec

from smartpark.core.catalog import Catalog
from smartpark.core.datafiles import read_yaml
from smartpark.core.errors import ConfigError

__all__ = ["FLAG", "IGNORED", "VALUE", "CodeMap", "CodeSpec", "Target", "load_codes"]

WHAT = "HJ 212 code table"


VALUE, FLAG = 1, 2
Target = tuple[int, str | tuple[str, ...], float] | None
IGNORED: Target = (0, "", 0.0)
UNMAPPED: Target = None


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
        self._resolved: dict[tuple[str, str], Target] = {}
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

    def resolve(self, cn: str, key: str) -> Target:
        """What a CP key (``a21002-Avg``) means under a command, cached: the same few dozen keys come in every
        packet. VALUE with (metric, scale), FLAG with the metrics it flags, IGNORED, or UNMAPPED."""
        found = self._resolved.get((cn, key))
        if found is None:
            found = self._resolve(cn, key)
            if len(self._resolved) < 65536:
                self._resolved[(cn, key)] = found
        return found

    def _resolve(self, cn: str, key: str) -> Target:
        code, _, suffix = key.partition("-")
        if not suffix:
            return IGNORED  # DataTime and other plain items
        targets = self.targets.get((cn, code))
        if targets is None:
            return UNMAPPED
        if suffix == "Flag":
            return (FLAG, tuple(metric for _, metric, _ in targets), 1.0)
        for wanted, metric, scale in targets:
            if suffix == wanted:
                return (VALUE, metric, scale)
        return IGNORED  # -Min, -Max, -Cou, -EFlag, ...


def load_codes(catalog: Catalog, path: Path | None = None) -> CodeMap:
    raw, _ = read_yaml(path, "hj212-codes.yaml", WHAT, _CodesFile)
    return CodeMap(raw.codes, catalog)

