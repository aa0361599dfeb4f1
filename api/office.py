"""The park office's figures on the overview and site pages: per site this month's KPIs (compliance against
95 %, exceeding hours, energy against the quota to date, greening against its band) and today's energy, as
api/summary.py computes them for the KPI endpoints' default period (this month up to and including today).

A month of emission hours costs the store seconds when not cached, too slow for a page that refreshes
itself: the figures are kept ``TTL_S`` and, once older, served while one background refresh replaces them
(only the very first page view waits for them)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from smartpark.api.summary import SiteSummary, local_tz, summarise
from smartpark.core.reference import Reference
from smartpark.core.registry import Registry, Site
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["OfficeFigures", "SiteFigures"]

log = logging.getLogger("smartpark.api")
TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class SiteFigures:
    month: SiteSummary
    today: SiteSummary


class OfficeFigures:
    """Per app: the latest figures of every site, computed together, refreshed in the background."""

    def __init__(self, registry: Registry, store: TimeSeriesStore, ref: Reference, settings: Settings) -> None:
        self.registry, self.store, self.ref, self.settings = registry, store, ref, settings
        self._lock = threading.Lock()
        self._value: tuple[float, str, dict[str, SiteFigures]] | None = None  # (at, local day, per site)
        self._refreshing = False

    def get(self, sites: Sequence[Site]) -> dict[str, SiteFigures]:
        """The figures of ``sites`` (a subset of the park's, by the caller's scope)."""
        day = datetime.now(local_tz(self.registry)).date().isoformat()
        with self._lock:
            value = self._value
            fresh = value is not None and value[1] == day and time.monotonic() - value[0] < TTL_S
            if value is not None and value[1] == day and not fresh and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="office-figures", daemon=True).start()
        if value is None or value[1] != day:  # nothing for today yet: this view waits
            value = self._compute()
        wanted = {s.id for s in sites}
        return {k: v for k, v in value[2].items() if k in wanted}

    def _refresh(self) -> None:
        try:
            self._compute()
        except Exception:  # the stale figures stay; the next view tries again
            log.exception("overview figures not refreshed")
        finally:
            with self._lock:
                self._refreshing = False

    def _compute(self) -> tuple[float, str, dict[str, SiteFigures]]:
        tz = local_tz(self.registry)
        today = datetime.now(tz).date()
        tomorrow = today + timedelta(days=1)
        sites = self.registry.sites()
        month = summarise(self.registry, self.store, self.ref, self.settings, today.replace(day=1), tomorrow, sites)
        day = summarise(self.registry, self.store, self.ref, self.settings, today, tomorrow, sites)
        value = (time.monotonic(), today.isoformat(),
                 {m.site or "": SiteFigures(m, d) for m, d in zip(month.sites, day.sites, strict=True)})
        with self._lock:
            self._value = value
        return value
