"""The platform's clock and the park's time zone, each in one place.

Every stored timestamp is Unix time in milliseconds (UTC), so "now" is ``now_ms()`` everywhere. Regulatory
hours and days are the park's local clock hours: its IANA zone comes from the park file (``park.timezone``),
``Asia/Shanghai`` (the reference park's) when no park is loaded yet.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

__all__ = ["DEFAULT_TIMEZONE", "now_ms", "park_zone", "zone"]

DEFAULT_TIMEZONE = "Asia/Shanghai"


class _Zoned(Protocol):
    @property
    def timezone(self) -> str: ...


def now_ms() -> int:
    """Now, in Unix milliseconds."""
    return time.time_ns() // 1_000_000


@lru_cache(maxsize=16)
def zone(name: str | None = None) -> ZoneInfo:
    """The zone called ``name`` (None: DEFAULT_TIMEZONE); a name that is not an IANA zone raises."""
    return ZoneInfo(DEFAULT_TIMEZONE if name is None else name)


def park_zone(park: _Zoned | None) -> ZoneInfo:
    """The local zone of a park (a registry row or a park file's spec); the default before one is loaded."""
    return zone(park.timezone if park is not None else None)
