"""The hour-sum cache: computed emission hours kept in memory over any TimeSeriesStore.

A month of O2-corrected minute means costs InfluxDB about 5 s per steel site (bench/bench_api.py), so the API
keeps the sums of every whole hour for ``ttl_s`` and revalidates them on each call with the store's
``hour_fingerprints`` (InfluxDB: per-hour counts, about a tenth of the cost; the embedded store scans what
its minute means scan). An hour whose fingerprint differs from the one it was computed with (late or resent
readings, a flag added afterwards, the current hour) is computed again, from its own minutes only. What a
store's fingerprint cannot see (InfluxDB: a reading overwritten in place by another value with the same
fields) is picked up when the hour's entry expires.

A big computation (a cold month, the warmer's renewal) runs once per query at a time (single flight): a
request arriving meanwhile waits for it and then finds the hours kept instead of asking the store again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence

import msgspec

from smartpark.core.points import Point
from smartpark.core.store import base
from smartpark.core.store.base import DAY_MS, HOUR_MS

__all__ = ["HOUR_CACHE_QUERIES", "SINGLE_FLIGHT_HOURS", "HourCache"]

HOUR_CACHE_QUERIES = 256  # kept HourQuery keys (about one per site with stacks), least recently used dropped
SINGLE_FLIGHT_HOURS = 24  # more hours to compute than this: one computation per key at a time

Kept = dict[tuple[str, int], tuple[tuple[float, ...], float, list[base.HourSum]]]  # -> (fingerprint, expiry, sums)


class HourCache:
    """A TimeSeriesStore that keeps ``store``'s computed whole hours for ``ttl_s`` (> 0) and passes every other
    call through. Thread-safe; closing it closes the store."""

    def __init__(self, store: base.TimeSeriesStore, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.store, self.ttl_s = store, ttl_s
        self._lock = threading.Lock()
        self._computing: dict[base.HourQuery, threading.Lock] = {}  # per cache key: see hour_sums
        self._kept: dict[base.HourQuery, Kept] = {}

    def hour_sums(self, query: base.HourQuery, hours: Collection[int] | None = None, *,
                  renew_within_s: float = 0.0) -> list[base.HourSum]:
        """The store's hour_sums, the kept hours still valid not asked again. ``renew_within_s``: hours whose
        entry expires that soon are computed again (a warmer's call: users then never meet an expired hour).
        Given ``hours``, the store is asked directly."""
        if hours is not None:
            return self.store.hour_sums(query, hours)
        if not query.devices or not query.fields or query.end_ms <= query.start_ms:
            return []
        if not 0 <= query.offset_ms < HOUR_MS:
            raise ValueError(f"offset_ms must be in [0, {HOUR_MS}), got {query.offset_ms}")
        key = msgspec.structs.replace(query, start_ms=0, end_ms=0)
        prints = self.store.hour_fingerprints(query)
        out, todo = self._kept_hours(key, prints, renew_within_s)
        if len(todo) <= SINGLE_FLIGHT_HOURS:  # the usual call: the current hour and a few late ones
            return self._computed_hours(query, key, prints, out, todo)
        with self._lock:
            computing = self._computing.setdefault(key, threading.Lock())
        with computing:
            out, todo = self._kept_hours(key, prints, renew_within_s)
            return self._computed_hours(query, key, prints, out, todo)

    def _kept_hours(self, key: base.HourQuery, prints: base.HourPrints,
                    renew_within_s: float) -> tuple[list[base.HourSum], set[int]]:
        """(the kept sums still valid for ``prints``, the hours to compute). Hours due for renewal (expiring
        within ``renew_within_s``) are to compute, but stay kept for other callers until replaced."""
        now = time.monotonic()
        with self._lock:
            kept = self._kept.pop(key, {})
            self._kept[key] = kept  # most recently used last
            while len(self._kept) > HOUR_CACHE_QUERIES:
                old = next(iter(self._kept))
                self._kept.pop(old)
                self._computing.pop(old, None)  # a caller holding it still finishes; the next makes a new one
            for k in [k for k, entry in kept.items() if entry[1] <= now]:
                del kept[k]  # expired
            todo = {k[1] for k, fingerprint in prints.items()
                    if k not in kept or kept[k][0] != fingerprint or kept[k][1] <= now + renew_within_s}
            out = [h for k in prints if k[1] not in todo for h in kept[k][2]]
        return out, todo

    def _computed_hours(self, query: base.HourQuery, key: base.HourQuery, prints: base.HourPrints,
                        out: list[base.HourSum], todo: set[int]) -> list[base.HourSum]:
        """``out`` plus the hours of ``todo`` computed by the store; whole hours kept."""
        if todo:
            fresh: dict[tuple[str, int], list[base.HourSum]] = {}
            for h in self.store.hour_sums(query, todo):
                fresh.setdefault((h.device, h.ts_ms), []).append(h)
            expires = time.monotonic() + self.ttl_s
            with self._lock:
                kept = self._kept.setdefault(key, {})
                for (device, hour), fingerprint in prints.items():
                    if hour not in todo:
                        continue
                    sums = fresh.get((device, hour), [])
                    out += sums
                    if query.start_ms <= hour and hour + HOUR_MS <= query.end_ms:
                        kept[(device, hour)] = (fingerprint, expires, sums)
                    else:
                        kept.pop((device, hour), None)
        out.sort(key=lambda h: (h.device, h.field, h.ts_ms))
        return out

    # --- everything else: the store's

    def hour_fingerprints(self, query: base.HourQuery) -> base.HourPrints:
        return self.store.hour_fingerprints(query)

    def init(self) -> None:
        self.store.init()

    def ping(self) -> None:
        self.store.ping()

    def write(self, points: Sequence[Point]) -> None:
        self.store.write(points)

    def stored_fields(self, points: Sequence[Point]) -> base.StoredFields:
        return self.store.stored_fields(points)

    def series(self, query: base.SeriesQuery) -> list[base.Series]:
        return self.store.series(query)

    def latest(self, site: str, *, lookback_ms: int = 7 * DAY_MS) -> list[base.LatestValue]:
        return self.store.latest(site, lookback_ms=lookback_ms)

    def latest_many(self, sites: Sequence[str], *, lookback_ms: int = 7 * DAY_MS) -> dict[str, list[base.LatestValue]]:
        return self.store.latest_many(sites, lookback_ms=lookback_ms)

    def counter_deltas(self, query: base.SeriesQuery) -> tuple[list[base.Series], list[base.CounterEvent]]:
        return self.store.counter_deltas(query)

    def minute_means(self, query: base.MinuteQuery) -> list[base.MinuteRow]:
        return self.store.minute_means(query)

    def close(self) -> None:
        self.store.close()
