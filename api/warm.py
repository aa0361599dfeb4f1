"""Keeps the emission compliance KPIs warm: their hourly sums computed ahead of the first request.

A month of O2-corrected minute means costs InfluxDB about 5 s per steel site (bench/bench_api.py, "first");
the hour cache (core/store/hour_cache.py) keeps the result of each whole hour for its ``ttl_s`` and revalidates
it cheaply on every call.
This thread asks for the last 31 days of every site with stacks right after start-up and again before the
entries expire, so a request for the month (or any period inside those days) finds them computed.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from smartpark.api import kpis
from smartpark.api.summary import local_tz
from smartpark.core.reference import Reference
from smartpark.core.registry import Registry
from smartpark.core.store.hour_cache import HourCache

__all__ = ["KpiWarmer"]

log = logging.getLogger("smartpark.api")
WARM_DAYS = 31  # the current month, and any 30-day period up to today


class KpiWarmer:
    """A daemon thread computing every stacked site's recent emission hours into ``cache``: a round every third
    of its ``ttl_s`` renews the hours older than half of it, so no hour a user asks for has expired (none gets
    older than two thirds of ``ttl_s`` and a round)."""

    def __init__(self, registry: Registry, cache: HourCache, ref: Reference) -> None:
        self.registry, self.cache, self.ref = registry, cache, ref
        self.every_s, self.renew_within_s = cache.ttl_s / 3, cache.ttl_s / 2
        self.rounds = 0  # completed rounds (tests, logs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kpi-warmer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.warm()
            except Exception:  # the store or metadata DB away: try again next round, never kill the API
                log.exception("warming the emission KPIs failed; next try in %.0f s", self.every_s)
            self._stop.wait(self.every_s)

    def warm(self) -> None:
        """One round: the hourly sums of the last WARM_DAYS days of every site with stacks."""
        tz = local_tz(self.registry)
        today = datetime.now(tz).date()
        p = kpis.period(tz, today - timedelta(days=WARM_DAYS - 1), today + timedelta(days=1))
        offset = p.hour_offset_ms()
        if offset is None:  # the KPIs sum minute means over a DST shift: nothing kept to warm
            self.rounds += 1
            return
        for site in self.registry.sites():
            if self._stop.is_set():
                return
            stacks = [d for d in self.registry.devices(site.id) if d.kind == "cems"]
            try:
                if stacks:
                    query = kpis.hour_query(self.ref, site, stacks, p, offset)
                    self.cache.hour_sums(query, renew_within_s=self.renew_within_s)
            except Exception:  # one site's failure (a refused query, bad reference data) spares the others
                log.exception("warming the emission KPIs of %s failed", site.id)
        self.rounds += 1
