"""The overview page at /: server-rendered (Jinja2, no build step), refreshing itself. Its login form takes an
API key, verifies it and puts a short-lived, revocable session token (``api/sessions.py``) in the signed
cookie, never the key; logout revokes the token."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from smartpark.api.deps import AlertsDep, CatalogDep, RegistryDep, SettingsDep, StoreDep, principal_for_key
from smartpark.api.office import OfficeFigures
from smartpark.api.overview import active_alerts, site_cards
from smartpark.api.sessions import mint_session, revoke_session, session_principal
from smartpark.api.site_page import energy_chart, site_page
from smartpark.core.clock import park_zone

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
REFRESH_S = 30
MAX_FORM_BYTES = 4096


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, registry: RegistryDep, store: StoreDep, catalog: CatalogDep,  # noqa: PLR0917 - FastAPI parameters
             settings: SettingsDep, alerts: AlertsDep) -> Response:
    park = registry.park()
    context: dict[str, object] = {"park_name": park.name if park else "smartpark"}
    who = session_principal(registry, request.session.get("sid"))
    if who is None:
        request.session.pop("sid", None)
        request.session.pop("api_key", None)  # a cookie of older versions carried the key itself: never honoured
        context["error"] = request.session.pop("login_error", None)
        return templates.TemplateResponse(request, "overview.html", context)
    sites = [s for s in registry.sites() if who.can_see(s.id)]
    tz = park_zone(park)
    figures = office_figures(request).get(sites) or {}
    active, alerts_ok = active_alerts(alerts, {s.id for s in sites})
    context.update(
        cards=site_cards(store, registry, sites, catalog, settings.api_stale_after_s),
        alerts=active, alerts_ok=alerts_ok, refresh_s=REFRESH_S, office=figures,
        charts={k: energy_chart(f.month) for k, f in figures.items()},
        now=datetime.fromtimestamp(time.time(), tz).strftime("%Y-%m-%d %H:%M:%S %Z"))
    return templates.TemplateResponse(request, "overview.html", context)


@router.get("/sites/{site_id}", response_class=HTMLResponse)
def site_detail(site_id: str, request: Request, registry: RegistryDep, store: StoreDep, catalog: CatalogDep,  # noqa: PLR0917 - FastAPI parameters
                settings: SettingsDep, alerts: AlertsDep) -> Response:
    """A site's page: its card's figures, hourly emission means against limits, energy per day and meter,
    its alerts. Without a session: to the login; a site the session may not see: 404."""
    who = session_principal(registry, request.session.get("sid"))
    if who is None:
        return RedirectResponse("/", status_code=303)
    site = registry.site(site_id) if who.can_see(site_id) else None
    if site is None:
        raise HTTPException(404, "no such site")
    park = registry.park()
    figures = office_figures(request).get([site]) or {}
    card = site_cards(store, registry, [site], catalog, settings.api_stale_after_s)[0]
    active, alerts_ok = active_alerts(alerts, {site.id})
    context = {"park_name": park.name if park else "smartpark", "site": site, "card": card,
               "f": figures.get(site.id), "chart": energy_chart(figures[site.id].month) if site.id in figures else "",
               "page": site_page(registry, store, request.app.state.reference, settings, site),
               "alerts": active, "alerts_ok": alerts_ok, "refresh_s": REFRESH_S}
    return templates.TemplateResponse(request, "site.html", context)


def office_figures(request: Request) -> OfficeFigures:
    """The app's office figures (api/office.py), made on first use."""
    state = request.app.state
    if getattr(state, "office", None) is None:
        state.office = OfficeFigures(state.registry, state.store, state.reference, state.settings)
    return state.office


@router.post("/login")
async def login(request: Request) -> RedirectResponse:
    """Form post (urlencoded, parsed here: no multipart dependency for one field); 413 past 4 KiB; 403 when
    posted from another site's page (login CSRF: the victim would be logged in as the attacker)."""
    _same_origin(request)
    body = (await _read_form(request)).decode("utf-8", "replace")
    key = (parse_qs(body).get("api_key") or [""])[0].strip()
    registry = request.app.state.registry
    who = principal_for_key(registry, key)
    revoke_session(registry, request.session.pop("sid", None))  # a new login never reuses a session
    if who is None:
        request.session["login_error"] = "That key is not valid (or was revoked)."
    else:
        request.session["sid"] = mint_session(registry, who.key_id)
    return RedirectResponse("/", status_code=303)


def _same_origin(request: Request) -> None:
    """403 unless the form was posted from this host's page: its Origin, or else its Referer, names the host the
    request was sent to (a browser always sends one of them with a form post; `null` and absence fail). Behind
    a reverse proxy that rewrites Host, its X-Forwarded-Host counts too (a page cannot set it on a form post)."""
    hosts = {request.headers.get("host", "").lower(),
             request.headers.get("x-forwarded-host", "").split(",")[0].strip().lower()} - {""}
    sender = request.headers.get("origin") or request.headers.get("referer") or ""
    if urlsplit(sender).netloc.lower() not in hosts:
        raise HTTPException(403, "cross-site form post refused: log in from the overview page itself")


async def _read_form(request: Request) -> bytes:
    """The body, refused with 413 past MAX_FORM_BYTES: by its Content-Length, or while streaming it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise HTTPException(413, f"the login form is limited to {MAX_FORM_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, f"the login form is limited to {MAX_FORM_BYTES} bytes")
    return bytes(body)


@router.post("/logout")
def logout(request: Request) -> RedirectResponse:
    """Revoke the session token (copies of the cookie stop working too) and clear the cookie."""
    revoke_session(request.app.state.registry, request.session.get("sid"))
    request.session.clear()
    return RedirectResponse("/", status_code=303)
