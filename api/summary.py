"""One site's (or the park's) figures over a period of local days, built from the very functions the KPI
endpoints call with the same arguments: the daily feed, its CSV, the monthly report and the overview all show
these, so each figure equals what ``/v1/sites/{id}/kpis/*`` and ``/v1/kpis`` return for the same period."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from smartpark.api import kpis
from smartpark.api.models import EmissionsKpi, EnergyKpi, GreeningKpi
from smartpark.core.clock import park_zone
from smartpark.core.reference import Reference
from smartpark.core.registry import Registry, Site
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["Exceedance", "SiteSummary", "Summaries", "csv_text", "local_tz", "summarise"]


class Exceedance(BaseModel):
    """One valid local hour whose mean was over its limit."""

    stack: str
    pollutant: str
    hour: str = Field(description="Start of the local clock hour, RFC 3339 with the park's offset")
    mean_mg_m3: float
    limit_mg_m3: float


class SiteSummary(BaseModel):
    """A site's figures over [start, end) local days (site null: the park)."""

    site: str | None
    name: str
    start: date
    end: date = Field(description="The local day after the last one")
    timezone: str
    energy_tce: float = Field(description="= energy KPI total_tce (main meters)")
    energy_days: dict[date, float] = Field(default_factory=dict, description="tce per local day (= KPI `days`)")
    carriers: dict[str, float] = Field(description="carrier -> amount in its unit (main meters)")
    units: dict[str, str]
    quota_tce: float | None
    quota_use_pct: float | None
    co2_total_t: float
    output_t: float | None
    intensity_tce_per_t: float | None
    compliance_pct: float | None = Field(description="= emissions KPI compliance_pct (valid hours)")
    target_pct: float
    meets_target: bool | None
    hours_valid: int
    hours_exceeding: int
    hours_expected: int = Field(description="Local hours x stack-pollutants of the period: availability's base")
    availability_pct: float | None = Field(description="Valid hours over the expected ones")
    exceeding: list[Exceedance] = Field(default_factory=list)
    coverage_pct: float | None = Field(description="= greening KPI coverage_pct (park: area-weighted)")
    band_min_pct: float | None
    band_max_pct: float | None
    greening_status: str


class Summaries(BaseModel):
    sites: list[SiteSummary]
    park: SiteSummary


def local_tz(registry: Registry) -> ZoneInfo:
    return park_zone(registry.park())


def summarise(registry: Registry, store: TimeSeriesStore, ref: Reference, settings: Settings,  # noqa: PLR0917 - the API's dependencies
              start: date, end: date, sites: Sequence[Site]) -> Summaries:
    """Per site and for ``sites`` together, as the KPI endpoints compute them for [start, end)."""
    tz = local_tz(registry)
    p = kpis.period(tz, start, end)
    park = registry.park()
    region = park.region if park else "national"
    ids = {s.id for s in sites}
    meters = [d for d in kpis.energy_meters(registry.devices()) if d.site_id in ids]
    rules = kpis.CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)
    one = sites[0].id if len(sites) == 1 else None  # one site: the store filters (the park's meters are many)
    usage = kpis.energy_usage(store, ref, meters, one, p, rules=rules)
    green = kpis.green_area(store, one, p)
    hours = round((p.end_ms - p.start_ms) / 3_600_000)
    rows, greens = [], []
    for s in sites:
        energy = kpis.energy_kpi(usage, ref, region, [s], meters, p=p)
        stacks = [d for d in registry.devices(s.id) if d.kind == "cems"]
        em = kpis.emissions_kpi(store, ref, s, stacks, p, min_minutes=settings.kpi_min_valid_minutes)
        greens.append(kpis.greening_kpi(s, green.get(s.id), ref))
        rows.append(_row(s.id, s.name, (start, end, tz), energy, em, greens[-1], hours))
    park_energy = kpis.energy_kpi(usage, ref, region, list(sites), meters, p=p, park=True)
    return Summaries(sites=rows, park=_park(rows, park_energy, (start, end, tz), park.name if park else "park",
                                            ref.emissions.compliance_target_pct, kpis.park_coverage(greens)))


def _row(site: str, name: str, span: tuple[date, date, ZoneInfo], energy: EnergyKpi, em: EmissionsKpi,  # noqa: PLR0917
         green: GreeningKpi, hours: int) -> SiteSummary:
    pollutants = [(st.device, x) for st in em.stacks for x in st.pollutants]
    valid = sum(x.hours_valid for _, x in pollutants)
    expected = hours * len(pollutants)
    exceeding = [Exceedance(stack=dev, pollutant=x.pollutant, hour=h.start.isoformat(), mean_mg_m3=h.mean_mg_m3 or 0.0,
                            limit_mg_m3=x.limit_mg_m3) for dev, x in pollutants for h in x.exceeding]
    exceeding.sort(key=lambda e: (e.hour, e.stack, e.pollutant))
    return SiteSummary(
        site=site, name=name, start=span[0], end=span[1], timezone=str(span[2]), energy_tce=energy.total_tce,
        energy_days={d.day: d.total_tce for d in energy.days},
        carriers={c.carrier: c.amount for c in energy.carriers}, units={c.carrier: c.unit for c in energy.carriers},
        quota_tce=energy.quota_tce, quota_use_pct=energy.quota_use_pct, co2_total_t=energy.co2_total_t,
        output_t=energy.output_t, intensity_tce_per_t=energy.intensity_tce_per_t, compliance_pct=em.compliance_pct,
        target_pct=em.target_pct, meets_target=em.meets_target, hours_valid=valid,
        hours_exceeding=sum(x.hours_exceeding for _, x in pollutants), hours_expected=expected,
        availability_pct=100 * valid / expected if expected else None, exceeding=exceeding,
        coverage_pct=green.coverage_pct, band_min_pct=green.band_min_pct, band_max_pct=green.band_max_pct,
        greening_status=green.status)


def _park(rows: list[SiteSummary], energy: EnergyKpi, span: tuple[date, date, ZoneInfo], name: str,  # noqa: PLR0917
          target: float, coverage: float | None) -> SiteSummary:
    """The park: energy summed over main meters, compliance over all valid hours, coverage area-weighted
    (as ``GET /v1/kpis`` computes its park figures)."""
    valid = sum(r.hours_valid for r in rows)
    exceeding = sum(r.hours_exceeding for r in rows)
    expected = sum(r.hours_expected for r in rows)
    rate = 100 * (valid - exceeding) / valid if valid else None
    return SiteSummary(
        site=None, name=name, start=span[0], end=span[1], timezone=str(span[2]), energy_tce=energy.total_tce,
        energy_days={d.day: d.total_tce for d in energy.days},
        carriers={c.carrier: c.amount for c in energy.carriers}, units={c.carrier: c.unit for c in energy.carriers},
        quota_tce=energy.quota_tce, quota_use_pct=energy.quota_use_pct, co2_total_t=energy.co2_total_t,
        output_t=energy.output_t, intensity_tce_per_t=energy.intensity_tce_per_t, compliance_pct=rate,
        target_pct=target, meets_target=None if rate is None else rate >= target, hours_valid=valid,
        hours_exceeding=exceeding, hours_expected=expected, availability_pct=100 * valid / expected if expected
        else None, exceeding=[e for r in rows for e in r.exceeding], coverage_pct=coverage, band_min_pct=None,
        band_max_pct=None, greening_status="no_data" if coverage is None else "park")


CSV_FIELDS = ["date", "site", "name", "energy_tce", "quota_tce", "quota_use_pct", "co2_total_t", "output_t",
              "intensity_tce_per_t", "compliance_pct", "target_pct", "hours_valid", "hours_exceeding",
              "availability_pct", "coverage_pct", "band_min_pct", "band_max_pct", "greening_status"]


def csv_text(rows: Sequence[SiteSummary], carriers: Sequence[tuple[str, str]]) -> str:
    """One line per site: the summary's scalar figures and each carrier's amount (column carrier_unit)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS + [f"{c}_{u}" for c, u in carriers])
    for r in rows:
        data = r.model_dump() | {"date": r.start.isoformat(), "site": r.site or "park"}
        writer.writerow([_cell(data[k]) for k in CSV_FIELDS] + [_cell(r.carriers.get(c)) for c, _ in carriers])
    return out.getvalue()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # the exact float the JSON carries
    text = str(value).replace("\n", " ")
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text  # no formulas in a spreadsheet


def next_day(d: date) -> date:
    return d + timedelta(days=1)
