"""The overview page at /: server-rendered (Jinja2, no build step), refreshing itself; an API key typed into
its login form is kept in the signed session cookie and checked on every view like a Bearer key."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from smartpark.api.deps import CatalogDep, RegistryDep, SettingsDep, StoreDep, principal_for_key
from smartpark.api.overview import active_alerts, site_card

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
REFRESH_S = 30
MAX_FORM_BYTES = 4096


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, registry: RegistryDep, store: StoreDep, catalog: CatalogDep,
             settings: SettingsDep) -> Response:
    park = registry.park()
    context: dict[str, object] = {"park_name": park.name if park else "smartpark"}
    who = principal_for_key(registry, request.session.get("api_key", ""))
    if who is None:
        request.session.pop("api_key", None)
        context["error"] = request.session.pop("login_error", None)
        return templates.TemplateResponse(request, "overview.html", context)
    sites = [s for s in registry.sites() if who.can_see(s.id)]
    tz = ZoneInfo(park.timezone if park else "Asia/Shanghai")
    context.update(
        cards=[site_card(store, registry, s, catalog, settings.api_stale_after_s) for s in sites],
        alerts=active_alerts(registry, {s.id for s in sites}), refresh_s=REFRESH_S,
        now=datetime.fromtimestamp(time.time(), tz).strftime("%Y-%m-%d %H:%M:%S %Z"))
    return templates.TemplateResponse(request, "overview.html", context)


@router.post("/login")
async def login(request: Request) -> RedirectResponse:
    """Form post (urlencoded, parsed here: no multipart dependency for one field)."""
    body = (await request.body())[:MAX_FORM_BYTES].decode("utf-8", "replace")
    key = (parse_qs(body).get("api_key") or [""])[0].strip()
    if principal_for_key(request.app.state.registry, key) is None:
        request.session["login_error"] = "That key is not valid (or was revoked)."
    else:
        request.session["api_key"] = key
    return RedirectResponse("/", status_code=303)


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    request.session.clear()
    return RedirectResponse("/", status_code=303)
