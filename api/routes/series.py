"""Windows of one metric, aggregated by the store (never by pulling raw points into Python), as JSON or CSV."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from fastapi import APIRouter, Header, Query
from fastapi.responses import Response, StreamingResponse

from smartpark.api.deps import CatalogDep, RegistryDep, SettingsDep, StoreDep, scoped_site
from smartpark.api.errors import ERRORS, NotFound, Unprocessable
from smartpark.api.limits import HeavyDep, check_cost
from smartpark.api.models import SeriesPublic
from smartpark.core.catalog import Catalog, Metric
from smartpark.core.clock import now_ms
from smartpark.core.energy import CounterRules, counter_query, energy_meters
from smartpark.core.ids import ID_SCHEMA_PATTERN
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.base import MINUTE_MS, Series, SeriesQuery

router = APIRouter(prefix="/v1", tags=["series"], responses=ERRORS)
CSV_EXAMPLE = ("site,device,metric,unit,agg,time,value\n"
               "steel-works,sinter-1-cems,nox_mg_m3,mg/m3,mean,2026-01-05T08:00:00+00:00,31.2\n")

MAX_WINDOWS = 10_000
MAX_RANGE_MS = 400 * 86_400_000
EARLIEST_MS, LATEST_MS = 0, 7_258_118_400_000  # 1970-01-01 .. 2200-01-01: what every store can represent
_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^([1-9]\d{0,5})([smhd])$")


def parse_every(every: str) -> int:
    match = _DURATION.fullmatch(every)
    if match is None:
        raise Unprocessable(f"every={every!r}: use a number and a unit s, m, h or d, like 1m or 1h")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


Agg = Annotated[Literal["mean", "min", "max", "last", "sum", "count", "delta"], Query(
    description="`delta`: a counter's consumption per window, as the KPIs count it (README \"Counter rules\"): "
                "a decrease is a reset and the reading after it counts; implausible steps and gaps do not; "
                "windows start at `start`")]


@router.get("/series", response_model=list[SeriesPublic], responses={
    200: {"content": {"text/csv": {"example": CSV_EXAMPLE}}, "description": "JSON, or CSV with format=csv or "
          "Accept: text/csv"}, 429: ERRORS[429]})
def series(  # noqa: PLR0917 - FastAPI query parameters
    registry: RegistryDep, store: StoreDep, catalog: CatalogDep, settings: SettingsDep, who: HeavyDep,
    site: Annotated[str, Query(description="Site id", pattern=ID_SCHEMA_PATTERN)],
    metric: Annotated[str, Query(description="A catalog metric, e.g. nox_mg_m3", max_length=100)],
    device: Annotated[str | None, Query(description="Only this device", pattern=ID_SCHEMA_PATTERN)] = None,
    start: Annotated[datetime | None, Query(description="RFC 3339; default end - 24 h")] = None,
    end: Annotated[datetime | None, Query(description="RFC 3339, exclusive; default now")] = None,
    every: Annotated[str, Query(description="Window, e.g. 1m, 15m, 1h, 1d", max_length=10)] = "1m",
    agg: Agg = "mean",
    group_by: Literal["device", "site"] = "device",
    format: Annotated[Literal["json", "csv"] | None, Query(description="Default: from Accept")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> list[SeriesPublic] | Response:
    """Limits: at most 10,000 windows, SMARTPARK_API_MAX_SERIES_POINTS points and SMARTPARK_API_MAX_QUERY_COST
    device-windows per request; a key's requests at once and per second are limited too (429, Retry-After)."""
    scoped_site(registry, who, site)
    spec = _aggregable(catalog, metric, agg)
    end_ms = _ms(end, "end") if end else now_ms()
    start_ms = _ms(start, "start") if start else end_ms - 86_400_000
    every_ms = parse_every(every)
    _check_range(start_ms, end_ms, every_ms)
    if agg == "delta" and every_ms % MINUTE_MS:
        raise Unprocessable("agg=delta works on whole minutes: use an `every` of 1m or more, in minutes")
    _check_size(settings, registry, site=site, device=device, group_by=group_by, agg=agg,
                range_ms=end_ms - start_ms, every_ms=every_ms)
    query = SeriesQuery(spec.domain, metric, start_ms, end_ms, every_ms, agg, site, device, group_by)
    if agg == "delta" and spec.domain == "energy":
        query = _counter_bounded(query, settings, registry)
    found = store.series(query)
    if format == "csv" or (format is None and "text/csv" in (accept or "")):
        return _csv(found, metric=metric, unit=spec.unit, agg=agg)
    return [_public(s, metric=metric, unit=spec.unit, agg=agg, every=every) for s in found]


def _public(s: Series, *, metric: str, unit: str, agg: str, every: str) -> SeriesPublic:
    return SeriesPublic(site=s.site, device=s.device, metric=metric, unit=unit, agg=agg, every=every,
                        points=[(datetime.fromtimestamp(t / 1000, UTC), v) for t, v in s.points])


def _aggregable(catalog: Catalog, metric: str, agg: str) -> Metric:
    """The catalog metric, when ``agg`` applies to its kind."""
    spec = catalog.get(metric)
    if spec is None:
        raise NotFound(f"metric {metric!r} is not in the catalog")
    if agg == "delta" and spec.kind != "counter":
        raise Unprocessable(f"agg=delta needs a counter; {metric} is a {spec.kind}")
    return spec


def _counter_bounded(query: SeriesQuery, settings: Settings, registry: Registry) -> SeriesQuery:
    """An energy delta query with the KPIs' counter bounds (README "Counter rules"), so the two agree."""
    rules = CounterRules.of(settings.counter_max_gap_s, settings.counter_max_per_h)
    meters = energy_meters(registry.devices(query.site))
    bounded = counter_query(query.field, (query.start_ms, query.end_ms, query.every_ms), rules, meters, query.site)
    return msgspec.structs.replace(bounded, device=query.device, group_by=query.group_by)


def _ms(value: datetime, name: str) -> int:
    if value.tzinfo is None:
        raise Unprocessable(f"{name}={value.isoformat()}: give times with an offset (RFC 3339), like "
                            "2026-01-01T00:00:00Z")
    ms = int(value.timestamp() * 1000)
    if not EARLIEST_MS <= ms <= LATEST_MS:
        raise Unprocessable(f"{name}={value.isoformat()}: times lie between 1970-01-01 and 2200-01-01")
    return ms


def _check_size(settings: Settings, registry: Registry, *, site: str, device: str | None, group_by: str, agg: str,
                range_ms: int, every_ms: int) -> None:
    """Refuse what would cost the store or the answer too much, before asking the store."""
    devices = 1 if device else max(1, sum(d.kind != "gateway" for d in registry.devices(site)))
    windows = -(-range_ms // every_ms)
    points = windows * (1 if device or group_by == "site" else devices)
    if points > settings.api_max_series_points:
        narrow = ["a longer `every`", "a shorter range", "one `device`", "group_by=site"]
        raise Unprocessable(f"this request would answer {points:,} points, over the limit of "
                            f"{settings.api_max_series_points:,}: ask for " + ", or ".join(narrow),
                            {"points": points, "max": settings.api_max_series_points, "narrow": narrow})
    # the store scans every device's windows; delta differences each minute first, whatever `every` is
    check_cost(settings, devices=devices, range_ms=range_ms, window_ms=MINUTE_MS if agg == "delta" else every_ms,
               narrow=["a shorter range", "one `device`"] + ([] if agg == "delta" else ["a longer `every`"]))


def _csv(found: list[Series], *, metric: str, unit: str, agg: str) -> StreamingResponse:
    """Streamed a series at a time: the first bytes leave at once and no second copy of the answer is built."""

    def rows() -> Iterator[str]:
        yield "site,device,metric,unit,agg,time,value\n"
        for s in found:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            prefix = [s.site, s.device or "", metric, unit, agg]
            writer.writerows([*prefix, datetime.fromtimestamp(t / 1000, UTC).isoformat(), repr(v)]
                             for t, v in s.points)
            yield buf.getvalue()

    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8",
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
