"""Windows of one metric, aggregated by the store (never by pulling raw points into Python), as JSON or CSV."""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from fastapi import APIRouter, Header, Query
from fastapi.responses import Response

from smartpark.api.deps import CatalogDep, PrincipalDep, RegistryDep, SettingsDep, StoreDep, scoped_site
from smartpark.api.errors import ERRORS, NotFound, Unprocessable
from smartpark.api.models import SeriesPublic
from smartpark.core.energy import CounterRules, counter_query, energy_meters
from smartpark.core.store.base import MINUTE_MS, SeriesQuery

router = APIRouter(prefix="/v1", tags=["series"], responses=ERRORS)
CSV_EXAMPLE = ("site,device,metric,unit,agg,time,value\n"
               "steel-works,sinter-1-cems,nox_mg_m3,mg/m3,mean,2026-01-05T08:00:00+00:00,31.2\n")

MAX_WINDOWS = 10_000
MAX_RANGE_MS = 400 * 86_400_000
_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^([1-9]\d{0,5})([smhd])$")


def parse_every(every: str) -> int:
    match = _DURATION.fullmatch(every)
    if match is None:
        raise Unprocessable(f"every={every!r}: use a number and a unit s, m, h or d, like 1m or 1h")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def _ms(value: datetime) -> int:
    if value.tzinfo is None:
        raise Unprocessable(f"{value.isoformat()}: give times with an offset (RFC 3339), like 2026-01-01T00:00:00Z")
    return int(value.timestamp() * 1000)


@router.get("/series", response_model=list[SeriesPublic], responses={
    200: {"content": {"text/csv": {"example": CSV_EXAMPLE}}, "description": "JSON, or CSV with format=csv or "
          "Accept: text/csv"}})
def series(  # noqa: PLR0917 - FastAPI query parameters
    registry: RegistryDep, store: StoreDep, catalog: CatalogDep, who: PrincipalDep, settings: SettingsDep,
    site: Annotated[str, Query(description="Site id")],
    metric: Annotated[str, Query(description="A catalog metric, e.g. nox_mg_m3")],
    device: Annotated[str | None, Query(description="Only this device")] = None,
    start: Annotated[datetime | None, Query(description="RFC 3339; default end - 24 h")] = None,
    end: Annotated[datetime | None, Query(description="RFC 3339, exclusive; default now")] = None,
    every: Annotated[str, Query(description="Window, e.g. 1m, 15m, 1h, 1d")] = "1m",
    agg: Annotated[Literal["mean", "min", "max", "last", "sum", "count", "delta"], Query(
        description="`delta`: a counter's consumption per window, as the KPIs count it (README \"Counter rules\"): "
                    "a decrease is a reset and the reading after it counts; implausible steps and gaps do not; "
                    "windows start at `start`")] = "mean",
    group_by: Literal["device", "site"] = "device",
    format: Annotated[Literal["json", "csv"] | None, Query(description="Default: from Accept")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> list[SeriesPublic] | Response:
    scoped_site(registry, who, site)
    spec = catalog.get(metric)
    if spec is None:
        raise NotFound(f"metric {metric!r} is not in the catalog")
    if agg == "delta" and spec.kind != "counter":
        raise Unprocessable(f"agg=delta needs a counter; {metric} is a {spec.kind}")
    end_ms = _ms(end) if end else time.time_ns() // 1_000_000
    start_ms = _ms(start) if start else end_ms - 86_400_000
    every_ms = parse_every(every)
    _check_range(start_ms, end_ms, every_ms)
    if agg == "delta" and every_ms % MINUTE_MS:
        raise Unprocessable("agg=delta works on whole minutes: use an `every` of 1m or more, in minutes")
    query = SeriesQuery(spec.domain, metric, start_ms, end_ms, every_ms, agg, site, device, group_by)
    if agg == "delta" and spec.domain == "energy":  # the KPIs' counter bounds (README "Counter rules")
        rules = CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)
        meters = energy_meters(registry.devices(site))
        query = msgspec.structs.replace(counter_query(metric, (start_ms, end_ms, every_ms), rules, meters, site),
                                        device=device, group_by=group_by)
    out = [SeriesPublic(site=s.site, device=s.device, metric=metric, unit=spec.unit, agg=agg, every=every,
                        points=[(datetime.fromtimestamp(t / 1000, UTC), v) for t, v in s.points])
           for s in store.series(query)]
    wants_csv = format == "csv" or (format is None and "text/csv" in (accept or ""))
    return _csv(out) if wants_csv else out


def _csv(series: list[SeriesPublic]) -> Response:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["site", "device", "metric", "unit", "agg", "time", "value"])
    for s in series:
        writer.writerows([s.site, s.device or "", s.metric, s.unit, s.agg, t.isoformat(), repr(v)] for t, v in s.points)
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'inline; filename="series.csv"'})


def _check_range(start_ms: int, end_ms: int, every_ms: int) -> None:
    if end_ms <= start_ms:
        raise Unprocessable("end must be after start")
    if end_ms - start_ms > MAX_RANGE_MS:
        raise Unprocessable("the range may span at most 400 days")
    if every_ms > MAX_RANGE_MS:  # also keeps every window arithmetic within 64-bit integers (SQLite)
        raise Unprocessable("every may be at most 400 days")
    windows = (end_ms - start_ms) // every_ms
    if windows > MAX_WINDOWS:
        raise Unprocessable(f"{windows} windows requested; at most {MAX_WINDOWS}: widen `every`",
                            {"windows": windows, "max": MAX_WINDOWS})
