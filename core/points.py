"""A point: one row of one measurement, the unit every store writes."""

from __future__ import annotations

import msgspec

__all__ = ["FieldValue", "Point"]

FieldValue = float | str


class Point(msgspec.Struct, frozen=True, gc=False):
    """One timestamped row: ``measurement`` (a domain), tags ``site`` and ``device``, fields by name.

    Float fields are metric values; string fields carry non-default flags (``<metric>_flag``).
    """

    measurement: str
    site: str
    device: str
    ts_ms: int
    fields: dict[str, FieldValue]
