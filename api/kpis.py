"""The regulatory KPIs, computed from store aggregates (never raw points) and the reference data.

- energy: consumption per carrier from counters (the store's reset-aware `delta`), tce with the standard-coal
  factors, CO2 from electricity with the grid factor of the park's region and year, intensity per tonne of
  output, and the use of the site's quota over the period;
- emissions: per stack and pollutant, hourly means of the valid minutes (the store's hourly sums and counts of
  valid O2-corrected minute means, ``hour_sums``), O2-corrected where the source type has a reference O2,
  each local clock hour marked invalid (fewer valid minutes than the setting), compliant or exceeding, and
  the compliance rate over the valid hours;
- greening: mean green area over the site's area, against its band (the reference band where none is set).

Hours and days are local clock hours of the park's time zone: a regulator's hour 08:00 is 08:00 in the park.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from smartpark.api.models import (
    CarrierUse,
    Co2Use,
    CounterEventPublic,
    EmissionsKpi,
    EnergyDay,
    EnergyKpi,
    GreeningKpi,
    HourMean,
    MeterUse,
    PollutantCompliance,
    StackCompliance,
)
from smartpark.core import energy
from smartpark.core.energy import CounterRules, energy_meters, role_of
from smartpark.core.reference import Reference
from smartpark.core.registry import Device, Site
from smartpark.core.store.base import (
    DAY_MS,
    CounterEvent,
    HourQuery,
    HourSum,
    SeriesQuery,
    TimeSeriesStore,
    hour_sums_from_minutes,
    minute_query,
)

__all__ = [
    "CounterRules",
    "Period",
    "Usage",
    "counter_event",
    "counter_query",
    "emissions_kpi",
    "energy_kpi",
    "energy_meters",
    "energy_usage",
    "greening_kpi",
    "hour_query",
    "hour_sums",
    "park_coverage",
    "period",
    "role_of",
]

HOUR_MS = 3_600_000
O2 = "o2_pct"


@dataclass(frozen=True, slots=True)
class Period:
    start_ms: int
    end_ms: int
    tz: ZoneInfo

    @property
    def days(self) -> float:
        """Local calendar days in the period (a 25-hour day of a daylight-saving change is one day: quotas)."""
        start, end = self.dt(self.start_ms), self.dt(self.end_ms)
        whole = (end.date() - start.date()).days
        return whole + ((end - end.replace(hour=0, minute=0, second=0, microsecond=0))
                        - (start - start.replace(hour=0, minute=0, second=0, microsecond=0))).total_seconds() / 86_400

    def dt(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC).astimezone(self.tz)

    def uniform_days(self) -> bool:
        """Every local day of the period is 24 hours long (no daylight-saving change in it)."""
        day = datetime.fromtimestamp(self.start_ms / 1000, UTC).astimezone(self.tz).date()
        at = self.start_ms
        while at < self.end_ms:
            day += timedelta(days=1)
            nxt = int(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp() * 1000)
            if nxt - at != DAY_MS:
                return False
            at = nxt
        return True

    def hour_of(self) -> _LocalHours:
        return _LocalHours(self.tz)

    def hour_offset_ms(self) -> int | None:
        """Where local hours start past each UTC hour over the whole period (0 for whole-hour offsets, DST
        included; 1,800,000 for +05:30), or None if that changes within the period (a half-hour DST shift)."""
        offsets = set()
        for utc_hour in range(self.start_ms // HOUR_MS, -(-self.end_ms // HOUR_MS) + 1):
            off = datetime.fromtimestamp(utc_hour * 3600, UTC).astimezone(self.tz).utcoffset()
            offsets.add(-int(off.total_seconds() * 1000 if off else 0) % HOUR_MS)
            if len(offsets) > 1:
                return None
        return offsets.pop()


def period(tz: ZoneInfo, start: date | None, end: date | None, today: date | None = None) -> Period:
    """[start, end) in local days; by default the current month up to and including today."""
    today = today or datetime.now(tz).date()
    start = start or today.replace(day=1)
    end = end or today + timedelta(days=1)
    def ms(d: date) -> int:
        return int(datetime(d.year, d.month, d.day, tzinfo=tz).timestamp() * 1000)
    return Period(ms(start), ms(end), tz)


class _LocalHours:
    """Start of the local clock hour of a time, with the UTC offset looked up once per UTC hour."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._offsets: dict[int, int] = {}

    def __call__(self, ts_ms: int) -> int:
        utc_hour = ts_ms // HOUR_MS
        offset = self._offsets.get(utc_hour)
        if offset is None:
            off = datetime.fromtimestamp(utc_hour * 3600, UTC).astimezone(self.tz).utcoffset()
            offset = self._offsets[utc_hour] = int(off.total_seconds() * 1000) if off else 0
        return ts_ms - (ts_ms + offset) % HOUR_MS


# ------------------------------------------------------------------------------------------------- energy


@dataclass(slots=True)
class Usage:
    """What the store gave for some sites' energy meters: (metric, device) -> window -> counted amount."""

    windows: dict[tuple[str, str], dict[int, float]]
    events: list[tuple[str, CounterEvent]]  # (metric, event)

    def total(self, metric: str, device: str) -> float:
        return sum(self.windows.get((metric, device), {}).values())


def counter_query(metric: str, p: Period, rules: CounterRules, meters: Sequence[Device], site: str | None,
                  ) -> SeriesQuery:
    """A delta query over local days: daily windows from local midnight, hourly when a day is not 24 h long."""
    every = DAY_MS if p.uniform_days() else HOUR_MS
    return energy.counter_query(metric, (p.start_ms, p.end_ms, every), rules, meters, site)


def energy_usage(store: TimeSeriesStore, ref: Reference, meters: Sequence[Device], site: str | None, p: Period,
                 *, rules: CounterRules) -> Usage:
    """Counted consumption per meter and window, and the counters' events, for every carrier and the output."""
    ids = {d.id for d in meters}
    usage = Usage({}, [])
    for metric in dict.fromkeys([c.metric for c in ref.energy.carriers.values()] + [ref.energy.output_metric]):
        series, events = store.counter_deltas(counter_query(metric, p, rules, meters, site))
        for s in series:
            if s.device in ids:
                usage.windows[metric, s.device or ""] = dict(s.points)
        usage.events += [(metric, e) for e in events if e.device in ids]
    return usage


def energy_kpi(usage: Usage, ref: Reference, region: str, sites: Sequence[Site], meters: Sequence[Device], *,
               p: Period, park: bool = False) -> EnergyKpi:
    """Energy KPIs of one site, or summed over ``sites`` with ``park``: totals from the main meters only."""
    ids = {s.id for s in sites}
    meters = [d for d in meters if d.site_id in ids]
    mains = [d.id for d in meters if role_of(d) == "main"]

    def main_total(metric: str) -> float:
        return sum(usage.total(metric, d) for d in mains)

    carriers = _carrier_uses(ref, main_total)
    tce = sum(c.tce for c in carriers)
    factor, year, where = ref.grid_factor(region, p.dt(p.start_ms).year)
    co2 = _co2(ref, carriers, factor, year, where)
    scope = {k: sum(c.co2_t for c in co2 if c.scope == k) for k in (1, 2)}
    electricity = sum(c.co2_t for c in co2 if c.carrier in _electricity(ref))
    output = main_total(ref.energy.output_metric)
    quota = _quota(sites, p)
    events = [counter_event(metric, e, p) for metric, e in usage.events if e.site in ids]
    return EnergyKpi(
        site=None if park else sites[0].id, start=p.dt(p.start_ms), end=p.dt(p.end_ms), carriers=carriers,
        total_tce=tce, days=_days(usage, ref, mains, p), meters=[] if park else _meters(usage, meters),
        generation_kwh=sum(usage.total("energy_kwh", d.id) for d in meters if role_of(d) == "generation"),
        co2=co2, co2_scope1_t=scope[1], co2_scope2_t=scope[2], co2_total_t=scope[1] + scope[2],
        co2_electricity_t=electricity, co2_t=electricity, grid_factor_kg_per_kwh=factor, grid_factor_year=year,
        grid_region=where, output_t=output or None, intensity_tce_per_t=tce / output if output > 0 else None,
        quota_tce=quota, quota_use_pct=100 * tce / quota if quota else None, counter_events=events,
        excluded=_excluded_from_mains(usage, set(mains)))


def _carrier_uses(ref: Reference, main_total: Callable[[str], float]) -> list[CarrierUse]:
    """Each carrier's amount on the main meters, in its unit and in tonnes of standard coal equivalent."""
    return [CarrierUse(carrier=name, metric=c.metric, amount=(amount := main_total(c.metric)), unit=c.unit,
                       kgce_per_unit=c.kgce_per_unit, tce=amount * c.kgce_per_unit / 1000)
            for name, c in ref.energy.carriers.items()]


def _excluded_from_mains(usage: Usage, mains: set[str]) -> dict[str, float]:
    """Per metric, what the counter rules left out of the main meters' totals."""
    excluded: dict[str, float] = {}
    for metric, e in usage.events:
        if e.device in mains and e.excluded:
            excluded[metric] = excluded.get(metric, 0.0) + e.excluded
    return excluded


def _electricity(ref: Reference) -> set[str]:
    return {name for name, c in ref.energy.carriers.items() if c.metric == "energy_kwh"}


def _co2(ref: Reference, carriers: Sequence[CarrierUse], grid: float, year: int, region: str) -> list[Co2Use]:
    """CO2 per carrier with a scope: the grid factor for electricity, the carrier's own factor otherwise."""
    out = []
    for use in carriers:
        c = ref.energy.carriers[use.carrier]
        if c.co2_scope is None:
            continue
        if c.metric == "energy_kwh":
            factor, confidence, source = grid, "S", f"grid factor {region} {year} (MEE/NBS, reference data)"
        else:
            factor, confidence, source = c.co2_kg_per_unit or 0.0, c.co2_confidence or "U", c.co2_source or ""
        out.append(Co2Use(carrier=use.carrier, scope=c.co2_scope, amount=use.amount, co2_kg_per_unit=factor,
                          co2_t=use.amount * factor / 1000, confidence=confidence, source=source))
    return out


def _days(usage: Usage, ref: Reference, mains: Sequence[str], p: Period) -> list[EnergyDay]:
    """The main meters' amounts per local day (windows are local days, or local hours on a DST day)."""
    per_day: dict[date, dict[str, float]] = {}
    for (metric, device), windows in usage.windows.items():
        if device in mains:
            for ts, value in windows.items():
                day = per_day.setdefault(p.dt(ts).date(), {})
                day[metric] = day.get(metric, 0.0) + value
    kgce = {c.metric: c.kgce_per_unit for c in ref.energy.carriers.values()}
    return [EnergyDay(day=d, amounts=amounts, total_tce=sum(v * kgce.get(m, 0.0) for m, v in amounts.items()) / 1000)
            for d, amounts in sorted(per_day.items())]


def _meters(usage: Usage, meters: Sequence[Device]) -> list[MeterUse]:
    """Per meter its amounts; under a meter with sub-meters, its amount minus theirs (the unmetered)."""
    metrics = sorted({m for m, _ in usage.windows})
    amounts = {d.id: {m: usage.total(m, d.id) for m in metrics if (m, d.id) in usage.windows} for d in meters}
    children: dict[str, list[str]] = {}
    for d in meters:
        if role_of(d) == "sub" and d.parent_id in amounts:
            children.setdefault(d.parent_id, []).append(d.id)
    out = []
    for d in meters:
        unmetered = None
        if d.id in children:
            unmetered = {m: v - sum(amounts[c].get(m, 0.0) for c in children[d.id]) for m, v in amounts[d.id].items()}
        out.append(MeterUse(device=d.id, role=role_of(d), parent=d.parent_id, amounts=amounts[d.id],
                            unmetered=unmetered))
    return out


def counter_event(metric: str, e: CounterEvent, p: Period) -> CounterEventPublic:
    return CounterEventPublic(site=e.site, device=e.device, metric=metric, at=p.dt(e.ts_ms), kind=e.kind,
                              elapsed_s=e.elapsed_ms / 1000, reading=e.reading, step=e.step, counted=e.counted,
                              excluded=e.excluded)


def _quota(sites: Iterable[Site], p: Period) -> float | None:
    """The quota over the period: daily quota x days, else the yearly quota pro rata; None if a site has none."""
    total = 0.0
    for s in sites:
        if s.energy_quota_tce_day:
            total += s.energy_quota_tce_day * p.days
        elif s.energy_quota_tce_year:
            total += s.energy_quota_tce_year * p.days / 365
        else:
            return None
    return total or None


# ---------------------------------------------------------------------------------------------- emissions


def emissions_kpi(store: TimeSeriesStore, ref: Reference, site: Site, stacks: Sequence[Device], p: Period,
                  *, min_minutes: int, hours: bool = False) -> EmissionsKpi:
    sources = {dev.id: ref.source_type(dev.source_type) for dev in stacks}
    by_stack: dict[tuple[str, str], dict[int, tuple[float, int]]] = {}
    for h in hour_sums(store, ref, site, stacks, p):
        by_stack.setdefault((h.device, h.field), {})[h.ts_ms] = (h.total, h.valid)
    out = []
    for dev in stacks:
        source = sources[dev.id]
        pollutants = [
            _pollutant(name, metric, source.limits_mg_m3[name], by_stack.get((dev.id, metric), {}),
                       min_minutes=min_minutes, p=p, with_hours=hours)
            for name, metric in ref.emissions.pollutants.items() if name in source.limits_mg_m3]
        out.append(StackCompliance(device=dev.id, source_type=dev.source_type or "other",
                                   o2_ref_pct=source.o2_ref_pct, pollutants=pollutants))
    valid = sum(x.hours_valid for s in out for x in s.pollutants)
    compliant = sum(x.hours_compliant for s in out for x in s.pollutants)
    rate = 100 * compliant / valid if valid else None
    target = ref.emissions.compliance_target_pct
    return EmissionsKpi(site=site.id, start=p.dt(p.start_ms), end=p.dt(p.end_ms), min_valid_minutes=min_minutes,
                        target_pct=target, compliance_pct=rate, meets_target=None if rate is None else rate >= target,
                        stacks=out)


def hour_sums(store: TimeSeriesStore, ref: Reference, site: Site, stacks: Sequence[Device],
              p: Period) -> list[HourSum]:
    """Per stack, pollutant and local hour: sum and count of the valid O2-corrected minute means.

    The store aggregates per hour aligned to the UTC hour plus an offset: the local hours whenever the zone's
    offset keeps its minutes over the period (whole hours, Asia/Shanghai included). Otherwise (a half-hour
    DST shift inside the period) the same sums are made here from the store's minute means."""
    if not stacks:
        return []
    offset = p.hour_offset_ms()
    query = hour_query(ref, site, stacks, p, offset or 0)
    if offset is not None:
        return store.hour_sums(query)
    return hour_sums_from_minutes(store.minute_means(minute_query(query)), query, p.hour_of())


def hour_query(ref: Reference, site: Site, stacks: Sequence[Device], p: Period, offset_ms: int) -> HourQuery:
    """The store's HourQuery of the stacks' pollutants over ``p``, hours ``offset_ms`` past the UTC hour."""
    return HourQuery("emissions", tuple(ref.emissions.pollutants.values()), site.id, p.start_ms, p.end_ms,
                     tuple((d.id, ref.source_type(d.source_type).o2_ref_pct) for d in stacks), O2,
                     ref.emissions.o2_correction_max_pct, tuple(ref.emissions.valid_flags), offset_ms)


def _pollutant(name: str, metric: str, limit: float, acc: dict[int, tuple[float, int]], *,
               min_minutes: int, p: Period, with_hours: bool) -> PollutantCompliance:
    hours = []
    for hour, (total, n) in sorted(acc.items()):
        mean = total / n if n else None
        status = "invalid" if n < min_minutes or mean is None else "exceeding" if mean > limit else "compliant"
        hours.append(HourMean(start=p.dt(hour), mean_mg_m3=mean, valid_minutes=n, status=status))
    valid = [h for h in hours if h.status != "invalid"]
    exceeding = [h for h in valid if h.status == "exceeding"]
    return PollutantCompliance(
        pollutant=name, metric=metric, limit_mg_m3=limit, hours_with_data=len(hours), hours_valid=len(valid),
        hours_compliant=len(valid) - len(exceeding), hours_exceeding=len(exceeding),
        compliance_pct=100 * (len(valid) - len(exceeding)) / len(valid) if valid else None,
        exceeding=exceeding, hours=hours if with_hours else None)


# ----------------------------------------------------------------------------------------------- greening


def green_area(store: TimeSeriesStore, site: str | None, p: Period) -> dict[str, float]:
    """site -> mean green area over the period: each zone's mean of its local-day means, summed over the
    site's zones. A day's mean is over the readings of the park's local calendar day (DST included): sums and
    counts per local hour (per quarter hour where the zone's offset is not whole hours) added up per day."""
    every = HOUR_MS if p.hour_offset_ms() == 0 else 15 * 60_000
    sums, counts = ({(s.site, s.device): dict(s.points) for s in store.series(
        SeriesQuery("greening", "green_area_m2", p.start_ms, p.end_ms, every, agg, site=site))}
        for agg in ("sum", "count"))
    out: dict[str, float] = {}
    for (site_id, device), windows in sums.items():
        days: dict[date, list[float]] = {}
        for ts, total in windows.items():
            acc = days.setdefault(p.dt(ts).date(), [0.0, 0.0])
            acc[0] += total
            acc[1] += counts.get((site_id, device), {}).get(ts, 0.0)
        means = [t / n for t, n in days.values() if n]
        if means:
            out[site_id] = out.get(site_id, 0.0) + sum(means) / len(means)
    return out


def greening_kpi(site: Site, green_m2: float | None, ref: Reference) -> GreeningKpi:
    band = ref.greening.default_band_pct
    low = site.greening_min_pct if site.greening_min_pct is not None else band.min
    high = site.greening_max_pct if site.greening_max_pct is not None else band.max
    pct = 100 * green_m2 / site.area_m2 if green_m2 is not None else None
    status = "no_data" if pct is None else "below" if pct < low else "above" if pct > high else "within"
    return GreeningKpi(site=site.id, area_m2=site.area_m2, green_area_m2=green_m2, coverage_pct=pct,
                       band_min_pct=low, band_max_pct=high, status=status)


def park_coverage(kpis: Iterable[GreeningKpi]) -> float | None:
    """Area-weighted coverage over the sites with data: total green area over their total area."""
    with_data = [k for k in kpis if k.green_area_m2 is not None]
    area = sum(k.area_m2 for k in with_data)
    return 100 * sum(k.green_area_m2 or 0.0 for k in with_data) / area if area else None
