"""Two-high screening of the park's enterprises for a month (admin only: it compares enterprises)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from smartpark.api.deps import AdminDep, ReferenceDep, RegistryDep, SettingsDep, StoreDep
from smartpark.api.errors import ERRORS, Unprocessable
from smartpark.api.screening import ScreeningReport, month_span, screen
from smartpark.api.summary import local_tz
from smartpark.core.screening import Screening, load_screening

router = APIRouter(prefix="/v1", tags=["screening"], responses=ERRORS)
MONTH = r"^20\d{2}-(0[1-9]|1[0-2])$"  # this century: time zones and local days are defined
Month = Annotated[str, Query(pattern=MONTH, description="A month of local days, YYYY-MM", examples=["2026-03"])]


def screening_data(request: Request) -> Screening:
    """The screening reference data, loaded once per app (SMARTPARK_SCREENING_FILE or the built-in file)."""
    data = getattr(request.app.state, "screening", None)
    if data is None:
        data = request.app.state.screening = load_screening(request.app.state.settings.screening_file)
    return data


def check_month(month: str, registry: RegistryDep) -> None:
    start, _ = month_span(month)
    if start > datetime.now(local_tz(registry)).date():
        raise Unprocessable("the month has not begun yet", {"month": month})


@router.get("/screening")
def screening(request: Request, registry: RegistryDep, store: StoreDep, ref: ReferenceDep, settings: SettingsDep,  # noqa: PLR0917 - FastAPI parameters
              _: AdminDep, month: Month) -> ScreeningReport:
    """Each enterprise's annualised energy use against the two-high threshold, its process lines' intensity
    against the national benchmark and baseline, its restricted product lines, and why it is flagged or not."""
    check_month(month, registry)
    return screen(registry, store, ref, settings, screening_data(request), month)
