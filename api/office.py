"""The park office's figures on the overview and site pages: per site this month's KPIs (compliance against
95 %, exceeding hours, energy against the quota to date, greening against its band) and today's energy, as
api/summary.py computes them for the KPI endpoints' default period (this month up to and including today).

A month of emission hours costs the store seconds when not cached, too slow for a page that refreshes
itself: the figures are kept ``TTL_S`` and, once older, served while one background refresh replaces them
(a view finding none of today's waits up to ``FIRST_WAIT_S`` for them, then renders without; a store
error never fails the page)."""

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
FIRST_WAIT_S = 10.0  # a view with no figures of today waits this long for them, then shows the page without


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
        self._done = threading.Event()
        self._tried = ""  # the local day of the last finished attempt: after a failure, views do not wait

    def get(self, sites: Sequence[Site], wait_s: float = FIRST_WAIT_S) -> dict[str, SiteFigures] | None:
        """The figures of ``sites`` (a subset of the park's, by the caller's scope); None while the first ones
        of the day are still being computed after ``wait_s``, or could not be (then no view waits again while
        the next attempt runs in the background; the page says so)."""
        day = datetime.now(local_tz(self.registry)).date().isoformat()
        with self._lock:
            value = self._value
            current = value is not None and value[1] == day
            if not (current and time.monotonic() - value[0] < TTL_S) and not self._refreshing:  # type: ignore[index]
                self._refreshing = True
                self._done = threading.Event()
                threading.Thread(target=self._refresh, name="office-figures", daemon=True).start()
            done = self._done
        if not current and self._tried != day:  # the day's first figures are being computed: wait a little
            done.wait(wait_s)
            value = self._value
            if value is None or value[1] != day:
                return None
        wanted = {s.id for s in sites}
        return {k: v for k, v in value[2].items() if k in wanted}  # type: ignore[index]

    def _refresh(self) -> None:
        try:
            self._compute()
        except Exception:  # the last figures stay (or none); the next view tries again
            log.exception("overview figures not computed")
        finally:
            with self._lock:
                self._refreshing = False
                self._tried = datetime.now(local_tz(self.registry)).date().isoformat()
                self._done.set()

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
