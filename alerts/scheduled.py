"""Rules evaluated on a schedule: hourly means, no data, energy quotas, greening bands.

Figures are gathered without holding the engine's lock (store queries may take a while), then observed
under it. Hourly means come from the readings the stream keeps (valid, O2-corrected values: the store
cannot filter by flag); closed hours are judged by alerts/hours.py, again whenever late readings change
them; energy and greening come from the time-series store. No-data rules go by when the engine last heard
from a device, not by the times it reports: a device replaying its past is talking, not silent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from zoneinfo import ZoneInfo

from smartpark.alerts.book import Observation, Subject
from smartpark.alerts.evaluate import day_start, hour_start, hourly_mean
from smartpark.alerts.hours import HourFigures, closed_hours, hour_figures
from smartpark.alerts.repo import AlertRepo, rfc3339
from smartpark.alerts.rules import RuleSpec
from smartpark.alerts.stream import DeviceInfo
from smartpark.core.energy import CounterRules, counter_query, energy_meters, main_meter_ids
from smartpark.core.errors import StoreError
from smartpark.core.reference import Reference
from smartpark.core.registry import Registry, Site
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["ScheduledEvaluator"]

log = logging.getLogger("smartpark.alerts")
HOUR_MS = 3_600_000
GREEN_LOOKBACK_MS = 400 * 86_400_000  # green area is surveyed rarely

Found = list[tuple[RuleSpec, Subject, Observation]]


class ScheduledEvaluator:
    def __init__(self, repo: AlertRepo, store: TimeSeriesStore, registry: Registry, reference: Reference, *,
                 valid_minutes: int, no_data_s: float, late_window_ms: int,
                 heard: Callable[[], dict[str, int]], counter_rules: CounterRules | None = None) -> None:
        self.repo, self.store, self.registry, self.reference = repo, store, registry, reference
        self.counter_rules = counter_rules or CounterRules()
        self.valid_minutes, self.no_data_s, self.heard = valid_minutes, no_data_s, heard
        self.late_window_ms = late_window_ms

    def gather(self, rules: list[RuleSpec], devices: list[DeviceInfo], touched: dict[str, int],
               tz: ZoneInfo, now: int) -> tuple[Found, list[HourFigures]]:
        """Observations of every scheduled rule on every subject in its scope, and the closed hours to judge
        (no state is touched). ``touched``: per device, its earliest reading kept since the last round."""
        out: Found = []
        hours: list[HourFigures] = []
        sites = self.registry.sites() if any(r.kind in ("energy_quota", "greening_band") for r in rules) else []
        for rule in rules:
            try:
                if rule.kind == "hourly_mean" and rule.mode == "closed":
                    hours += self._closed(rule, devices, touched, tz, now)
                elif rule.kind == "hourly_mean":
                    out += self._running(rule, devices, now, tz)
                elif rule.kind == "no_data":
                    out += self._no_data(rule, devices, now)
                elif rule.kind == "energy_quota":
                    out += self._energy(rule, sites, tz, now)
                elif rule.kind == "greening_band":
                    out += self._greening(rule, sites, now)
            except StoreError as exc:
                log.warning("rule %s not evaluated this round: %s", rule.id, exc)
        return out, hours

    # --- hourly means
    def _stacks(self, rule: RuleSpec, devices: list[DeviceInfo]) -> list[tuple[DeviceInfo, float]]:
        out = []
        for dev in devices:
            limit = self.reference.source_type(dev.source_type).limits_mg_m3.get(rule.pollutant)  # type: ignore[arg-type]
            if limit is not None and rule.covers(dev.site, dev.id, dev.kind, dev.source_type):
                out.append((dev, limit))
        return out

    def _closed(self, rule: RuleSpec, devices: list[DeviceInfo], touched: dict[str, int], tz: ZoneInfo,
                now: int) -> list[HourFigures]:
        metric = self.reference.emissions.pollutants[rule.pollutant]  # type: ignore[index]
        out = []
        for dev, limit in self._stacks(rule, devices):
            start, end = closed_hours(touched.get(dev.id), now, tz, self.late_window_ms)
            if start >= end:
                continue
            rows = self.repo.minutes(dev.id, rule.pollutant, start, end)  # type: ignore[arg-type]
            figures = hour_figures(rows, start, end, tz, self.valid_minutes)
            if figures:
                out.append(HourFigures(rule, Subject(dev.site, dev.id), limit, metric, figures))
        return out

    def _running(self, rule: RuleSpec, devices: list[DeviceInfo], now: int, tz: ZoneInfo) -> Found:
        """The running hour, as an early warning (judged on what has arrived so far)."""
        out: Found = []
        metric = self.reference.emissions.pollutants[rule.pollutant]  # type: ignore[index]
        start = hour_start(now, tz)
        for dev, limit in self._stacks(rule, devices):
            mean, n = hourly_mean(self.repo.minutes(dev.id, rule.pollutant, start, now + 1),  # type: ignore[arg-type]
                                  rule.min_minutes)
            if mean is None:
                continue
            obs = Observation(mean > limit, now, round(mean, 3), limit, metric, "mg/m3", "1h running",
                              f"{rule.name}: {mean:.1f} mg/m3 over {n} valid minutes (limit {limit:g})",
                              {"hour": rfc3339(start), "value": round(mean, 3), "valid_minutes": n})
            out.append((rule, Subject(dev.site, dev.id), obs))
        return out

    # --- no data
    def _no_data(self, rule: RuleSpec, devices: list[DeviceInfo], now: int) -> Found:
        """Silence by the engine's clock: how long since the device's last message (reading or status)."""
        out: Found = []
        after_ms = int((rule.after_s or self.no_data_s) * 1000)
        heard = self.heard()
        for dev in devices:
            last = heard.get(dev.id)
            if last is None or not rule.covers(dev.site, dev.id, dev.kind, dev.source_type):
                continue  # never heard: not "stopped sending"
            silent_s = max(now - last, 0) / 1000
            obs = Observation(now - last > after_ms, now, round(silent_s, 1), after_ms / 1000, None, "s", "no data",
                              f"no data from {dev.id} for {silent_s:.0f} s", {"ts": now, "last_heard": rfc3339(last)})
            out.append((rule, Subject(dev.site, dev.id), obs))
        return out

    # --- energy quota
    def _energy(self, rule: RuleSpec, sites: list[Site], tz: ZoneInfo, now: int) -> Found:
        out: Found = []
        start = day_start(now, tz)
        for site in sites:
            quota = site.energy_quota_tce_day
            if not quota or not rule.covers(site.id, None, None, None):
                continue
            used = self._tce(site.id, start, now)
            out.append((rule, Subject(site.id), Observation(
                used > quota, now, round(used, 3), quota, "energy_tce", "tce", "1d",
                f"{site.id}: {used:.1f} tce today against a quota of {quota:g}", {"ts": now, "value": used})))
        return out

    def _tce(self, site: str, start: int, end: int) -> float:
        """Today's use in tce as the KPIs count it: the site's main meters only, counter steps by the rules of
        the store's ``delta`` (a reset counts the reading after it; implausible steps and gaps not at all)."""
        meters = energy_meters(self.registry.devices(site))
        mains = main_meter_ids(meters)
        kg = 0.0
        for carrier in self.reference.energy.carriers.values():
            query = counter_query(carrier.metric, (start, end + 1, HOUR_MS), self.counter_rules, meters, site)
            used = sum(v for s in self.store.series(query) if s.device in mains for _, v in s.points)
            kg += used * carrier.kgce_per_unit
        return kg / 1000

    # --- greening
    def _greening(self, rule: RuleSpec, sites: list[Site], now: int) -> Found:
        out: Found = []
        band = self.reference.greening.default_band_pct
        for site in sites:
            if not site.area_m2 or not rule.covers(site.id, None, None, None):
                continue
            areas = [v.value for v in self.store.latest(site.id, lookback_ms=GREEN_LOOKBACK_MS)
                     if v.metric == "green_area_m2"]
            if not areas:
                continue
            pct = 100 * sum(areas) / site.area_m2
            low = site.greening_min_pct if site.greening_min_pct is not None else band.min
            high = site.greening_max_pct if site.greening_max_pct is not None else band.max
            out.append((rule, Subject(site.id), Observation(
                not low <= pct <= high, now, round(pct, 2), low if pct < low else high, "green_cover_pct", "%",
                "latest", f"{site.id}: green cover {pct:.1f} % outside {low:g}..{high:g} %",
                {"ts": now, "value": pct})))
        return out
