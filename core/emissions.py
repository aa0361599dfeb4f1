"""Emission arithmetic shared by the simulators, the KPIs and the alerts: O2 correction and flag validity."""

from __future__ import annotations

from smartpark.core.reference import Reference, SourceType

__all__ = ["is_valid_flag", "o2_correct"]


def o2_correct(c_meas: float, o2_meas: float, source: SourceType, max_o2_pct: float) -> float | None:
    """C_ref = C_meas x (21 - O2_ref) / (21 - O2_meas); the measured value where the source type has no
    reference O2; None where O2 is so close to 21 % that the factor explodes (the reading is invalid)."""
    if source.o2_ref_pct is None:
        return c_meas
    if o2_meas >= max_o2_pct:
        return None
    return c_meas * (21.0 - source.o2_ref_pct) / (21.0 - o2_meas)


def is_valid_flag(flag: str | None, reference: Reference) -> bool:
    """HJ 212 flags N and S are valid data; absent means N."""
    return (flag or "N") in reference.emissions.valid_flags
