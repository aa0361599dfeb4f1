"""Two-high screening: per enterprise its annualised energy use against the threshold, each process line's
energy intensity against the national benchmark and baseline levels, its restricted product lines, and the
reasons it is flagged or not. Energy figures are the energy KPI's (main meters; lines: their own meters)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from smartpark.api import kpis
from smartpark.api.summary import local_tz
from smartpark.core.reference import Reference
from smartpark.core.registry import Device, Registry, Site
from smartpark.core.screening import Screening
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["EnterpriseScreening", "LineScreening", "ScreeningReport", "month_span", "screen"]

Level = Literal["better_than_benchmark", "between", "worse_than_baseline", "no_output", "no_level"]


class LineScreening(BaseModel):
    device: str
    process: str
    process_name: str
    energy_kgce: float = Field(description="Every carrier counted by the line's meter, in kgce")
    output_t: float
    intensity_kgce_t: float | None
    benchmark_kgce_t: float | None
    baseline_kgce_t: float | None
    level: Level
    confidence: str
    source: str


class RestrictedLine(BaseModel):
    device: str
    product: str
    name: str
    source: str


class EnterpriseScreening(BaseModel):
    site: str
    name: str
    enterprise: str
    industry: str
    sector: str | None = Field(description="The two-high sector its industry belongs to, if any")
    energy_tce: float = Field(description="Over the period: = energy KPI total_tce")
    days: float
    annualised_tce: float = Field(description="energy_tce x 365 / days")
    threshold_tce_year: float
    key_energy_unit: bool
    lines: list[LineScreening]
    restricted: list[RestrictedLine]
    flagged: bool
    reasons: list[str] = Field(description="Why it is flagged, or why not")


class ScreeningReport(BaseModel):
    month: str
    start: date
    end: date
    threshold_tce_year: float
    threshold_confidence: str
    threshold_source: str
    enterprises: list[EnterpriseScreening]


def month_span(month: str) -> tuple[date, date]:
    """[first day, first day of the next month) of ``YYYY-MM`` (validated by the caller's pattern)."""
    year, mon = int(month[:4]), int(month[5:7])
    return date(year, mon, 1), date(year + mon // 12, mon % 12 + 1, 1)


def screen(registry: Registry, store: TimeSeriesStore, ref: Reference, settings: Settings,  # noqa: PLR0917 - the API's dependencies
           data: Screening, month: str, *, today: date | None = None, only: Site | None = None) -> ScreeningReport:
    """Every enterprise of the park, or ``only`` one (a site's report)."""
    tz = local_tz(registry)
    start, end = month_span(month)
    tomorrow = (today or datetime.now(tz).date()) + timedelta(days=1)
    p = kpis.period(tz, start, min(end, tomorrow))  # the current month: up to today (annualised from its days)
    park = registry.park()
    region = park.region if park else "national"
    sites = [only] if only else registry.sites()
    meters = kpis.energy_meters(registry.devices(only.id if only else None))
    rules = kpis.CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)
    usage = kpis.energy_usage(store, ref, meters, only.id if only else None, p, rules=rules)
    out = []
    for s in sites:
        tce = kpis.energy_kpi(usage, ref, region, [s], meters, p=p).total_tce
        devices = registry.devices(s.id)
        lines = [_line(d, usage, ref, data) for d in devices if d.kind == "energy_meter" and d.process]
        restricted = [RestrictedLine(device=d.id, product=d.product, name=data.products[d.product].name,
                                     source=data.products[d.product].source)
                      for d in devices if d.product and d.product in data.products
                      and data.products[d.product].restricted]
        out.append(_enterprise(s, tce, p.days, lines, restricted, data))
    return ScreeningReport(month=month, start=start, end=end, threshold_tce_year=data.energy_threshold_tce_year,
                           threshold_confidence=data.energy_threshold_confidence,
                           threshold_source=data.energy_threshold_source, enterprises=out)


def _line(d: Device, usage: kpis.Usage, ref: Reference, data: Screening) -> LineScreening:
    proc = data.processes[d.process or ""]
    kgce = sum(usage.total(c.metric, d.id) * c.kgce_per_unit for c in ref.energy.carriers.values())
    output = usage.total(ref.energy.output_metric, d.id)
    intensity = kgce / output if output > 0 else None
    bench, base = proc.benchmark_kgce_t, proc.baseline_kgce_t
    level: Level
    if intensity is None:
        level = "no_output"
    elif bench is None or base is None:
        level = "no_level"
    else:
        level = "worse_than_baseline" if intensity > base else "better_than_benchmark" if intensity <= bench \
            else "between"
    return LineScreening(device=d.id, process=d.process or "", process_name=proc.name, energy_kgce=kgce,
                         output_t=output, intensity_kgce_t=intensity, benchmark_kgce_t=bench, baseline_kgce_t=base,
                         level=level, confidence=proc.confidence, source=proc.source)


def _enterprise(s: Site, tce: float, days: float, lines: list[LineScreening], restricted: list[RestrictedLine],  # noqa: PLR0917
                data: Screening) -> EnterpriseScreening:
    annual = tce * 365 / days if days else 0.0
    limit = data.energy_threshold_tce_year
    sector = data.sector_of(s.industry)
    reasons, flagged = [], False
    if annual >= limit:
        flagged = True
        reasons.append(f"energy: annualised {annual:,.0f} tce/yr reaches the threshold of {limit:,.0f} tce/yr")
    else:
        reasons.append(f"energy: annualised {annual:,.0f} tce/yr is below the threshold of {limit:,.0f} tce/yr")
    for line in lines:
        reasons.append(_line_reason(line))
        flagged |= line.level == "worse_than_baseline"
    for r in restricted:
        flagged = True
        reasons.append(f"restricted product: {r.device} makes {r.name} (no new capacity)")
    if not restricted:
        reasons.append("restricted products: none declared")
    reasons.append(f"sector: {data.sectors[sector].name}" if sector
                   else f"sector: {s.industry} is not a two-high sector")
    return EnterpriseScreening(site=s.id, name=s.name, enterprise=s.enterprise, industry=s.industry, sector=sector,
                               energy_tce=tce, days=days, annualised_tce=annual, threshold_tce_year=limit,
                               key_energy_unit=annual >= data.key_unit_tce_year, lines=lines, restricted=restricted,
                               flagged=flagged, reasons=reasons)


def _line_reason(line: LineScreening) -> str:
    if line.intensity_kgce_t is None:
        return f"{line.process}: {line.device} counted no output: intensity unknown"
    what = f"{line.process}: {line.device} at {line.intensity_kgce_t:.1f} kgce/t"
    if line.level == "no_level":
        return f"{what}, no national benchmark or baseline for this process"
    levels = f"benchmark {line.benchmark_kgce_t:g}, baseline {line.baseline_kgce_t:g} kgce/t"
    return {"worse_than_baseline": f"{what} is worse than the baseline ({levels})",
            "between": f"{what} is between benchmark and baseline ({levels})",
            "better_than_benchmark": f"{what} meets the benchmark ({levels})"}[line.level]
