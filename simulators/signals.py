"""Stateless signal primitives for the plant models: seeded noise and local clock features.

Noise here is a pure function of (device key, time), never a draw from a stateful generator, so any
instant can be evaluated on its own: a live tick, a backfill range or a test all see the same value for the
same device and time, and integrating a rate over sub-steps is reproducible.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

__all__ = ["Array", "Keys", "LocalTime", "device_key", "hash01", "local_time", "salted", "smooth_noise"]

Array = npt.NDArray[np.float64]
Keys = npt.NDArray[np.uint64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_DAY_S = 86_400.0


def device_key(seed: int, name: str) -> int:
    """A 64-bit key from the seed and a stable name: adding a device to a park leaves the others' keys alone."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(name.encode())])
    return int(rng.integers(0, 2**63, dtype=np.uint64))


def salted(keys: Keys, salt: str) -> Keys:
    """Keys for an independent noise stream (one per metric or effect) derived from the device keys."""
    return keys ^ np.uint64(zlib.crc32(salt.encode()) * 0x100000001)


def hash01(keys: Keys, idx: npt.NDArray[np.int64]) -> Array:
    """Uniform [0, 1) per (key, integer index), shape (keys, idx): splitmix64 finaliser, counter-based."""
    x = keys[:, None] ^ (idx.astype(np.uint64)[None, :] * _GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def smooth_noise(keys: Keys, t_s: Array, period_s: float) -> Array:
    """Continuous noise in [-1, 1] with knots every ``period_s`` (cosine-interpolated value noise)."""
    pos = t_s / period_s
    knot = np.floor(pos)
    frac = pos - knot
    k = knot.astype(np.int64)
    a, b = hash01(keys, k), hash01(keys, k + 1)
    w = (1.0 - np.cos(np.pi * frac)) / 2.0
    return 2.0 * (a + (b - a) * w[None, :]) - 1.0


@dataclass(frozen=True, slots=True)
class LocalTime:
    """Local clock features of a time array: regulatory hours and shifts are local clock hours."""

    hour: Array  # 0 <= hour < 24, fractional
    weekday: npt.NDArray[np.int64]  # Monday = 0
    doy: Array  # day of year, fractional, 0 = 1 January (to within a day: for seasons only)


def _utc_offsets(t_s: Array, tz: ZoneInfo) -> Array:
    """UTC offset in seconds per time, looked up once per distinct hour (offsets change on hour boundaries)."""
    hours = np.floor(t_s / 3600.0)
    uniq, inverse = np.unique(hours, return_inverse=True)
    offs = [datetime.fromtimestamp(h * 3600.0, UTC).astimezone(tz).utcoffset() for h in uniq]
    return np.array([o.total_seconds() if o else 0.0 for o in offs])[inverse.reshape(-1)]


def local_time(t_s: Array, tz: ZoneInfo) -> LocalTime:
    local = t_s + _utc_offsets(t_s, tz)
    days = np.floor(local / _DAY_S)
    hour = (local - days * _DAY_S) / 3600.0
    weekday = ((days.astype(np.int64) + 3) % 7).astype(np.int64)  # 1970-01-01 was a Thursday
    doy = np.mod(local / _DAY_S, 365.2425)
    return LocalTime(hour=hour, weekday=weekday, doy=doy)
