"""The daily figures per site (the `kpi.daily` webhook's data), as JSON or CSV for a city platform that pulls."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from smartpark.api import summary
from smartpark.api.deps import PrincipalDep, ReferenceDep, RegistryDep, SettingsDep, StoreDep
from smartpark.api.errors import ERRORS, Unprocessable
from smartpark.api.summary import SiteSummary

router = APIRouter(prefix="/v1", tags=["kpis"], responses=ERRORS)


@router.get("/kpis/daily", response_model=list[SiteSummary],
            responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"}})
def daily(registry: RegistryDep, store: StoreDep, ref: ReferenceDep, settings: SettingsDep, who: PrincipalDep,  # noqa: PLR0917 - FastAPI parameters
          day: Annotated[date | None, Query(alias="date", description="A local day; default: yesterday")] = None,
          fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json") -> list[SiteSummary] | Response:
    """Each visible site's figures for one closed local day: what the `kpi.daily` webhook sends."""
    tz = summary.local_tz(registry)
    today = datetime.now(tz).date()
    day = day or today - timedelta(days=1)
    if day > today or day.year < 2000:
        raise Unprocessable("the day must be since 2000 and not after today", {"date": day.isoformat()})
    sites = [s for s in registry.sites() if who.can_see(s.id)]
    rows = summary.summarise(registry, store, ref, settings, day, day + timedelta(days=1), sites).sites
    if fmt == "json":
        return rows
    carriers = [(name, c.unit) for name, c in ref.energy.carriers.items()]
    return Response(summary.csv_text(rows, carriers), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="kpi-daily-{day.isoformat()}.csv"'})
