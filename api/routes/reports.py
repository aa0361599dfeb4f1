"""The monthly report as HTML or PDF (a site key: its own site's only; the park's report needs an admin)."""

from __future__ import annotations

import threading
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response

from smartpark.api.deps import PrincipalDep, ReferenceDep, RegistryDep, SettingsDep, StoreDep, scoped_site
from smartpark.api.errors import ERRORS, ApiError, Forbidden
from smartpark.api.reports import ReportError, build_report, render_html, render_pdf
from smartpark.api.routes.screening import MONTH, check_month, screening_data

router = APIRouter(prefix="/v1", tags=["reports"], responses=ERRORS)
_printing = threading.BoundedSemaphore(2)  # Chromium prints at most two reports at once on this process


class Busy(ApiError):
    status, code = 503, "busy"


@router.get("/reports/{month}", response_class=Response,
            responses={200: {"content": {"text/html": {}, "application/pdf": {}}}})
def monthly_report(request: Request, registry: RegistryDep, store: StoreDep, ref: ReferenceDep,  # noqa: PLR0917 - FastAPI parameters
                   settings: SettingsDep, who: PrincipalDep,
                   month: Annotated[str, Path(pattern=MONTH, examples=["2026-03"])],
                   site: Annotated[str | None, Query(description="A site; default: the park (admin)")] = None,
                   fmt: Annotated[Literal["html", "pdf"], Query(alias="format")] = "html") -> Response:
    """The month's report: energy and intensity against the quota, hourly emission compliance against the 95 %
    rule with the exceeding hours, greening coverage, data availability, two-high screening."""
    target = scoped_site(registry, who, site) if site else None
    if target is None and who.role != "admin":
        raise Forbidden("the park's report needs an admin key; name your site with ?site=")
    check_month(month, registry)
    html = render_html(build_report(registry, store, ref, settings, screening_data(request), month, target))
    name = f"smartpark-report-{month}-{target.id if target else 'park'}"
    if fmt == "html":
        return HTMLResponse(html)
    if not _printing.acquire(timeout=30):
        raise Busy("the report printer is busy; try again shortly")
    try:
        pdf = render_pdf(html)
    except ReportError as exc:
        raise Busy(str(exc)) from exc
    finally:
        _printing.release()
    return Response(pdf, media_type="application/pdf",
                    headers={"content-disposition": f'attachment; filename="{name}.pdf"'})
