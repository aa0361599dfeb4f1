"""The FastAPI application: registry and store opened in the lifespan, routes per resource."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from smartpark.alerts.access import AlertAccess
from smartpark.api.errors import install_error_handlers
from smartpark.api.headers import SecurityHeaders
from smartpark.api.limits import BodyLimit, KeyLimits
from smartpark.api.routes import (
    alerts,
    audit,
    daily,
    devices,
    health,
    keys,
    kpis,
    page,
    reports,
    screening,
    series,
    sites,
)
from smartpark.api.sessions import SESSION_TTL_S
from smartpark.api.warm import KpiWarmer
from smartpark.core.catalog import Catalog
from smartpark.core.reference import Reference, load_reference
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore
from smartpark.core.store.hour_cache import HourCache

__all__ = ["SchemeSessionMiddleware", "create_app"]


class SchemeSessionMiddleware:
    """Starlette's session cookie, `Secure` when the request came over HTTPS (or always, if so configured).

    The scheme is the connection's or, behind a reverse proxy the API trusts (SMARTPARK_API_FORWARDED_ALLOW_IPS,
    uvicorn's proxy headers), the proxy's X-Forwarded-Proto: the login works over TLS and over plain HTTP.
    """

    def __init__(self, app: ASGIApp, *, always_secure: bool = False, **options: Any) -> None:
        self._plain = SessionMiddleware(app, https_only=False, **options)
        self._secure = SessionMiddleware(app, https_only=True, **options)
        self._always = always_secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        secure = self._always or scope.get("scheme") in ("https", "wss")
        await (self._secure if secure else self._plain)(scope, receive, send)


def create_app(settings: Settings, *, registry: Registry, store: TimeSeriesStore, catalog: Catalog,
               metrics: Sequence[CollectorRegistry] = (), reference: Reference | None = None) -> FastAPI:
    """Build the app around already-validated settings and opened clients (the caller owns their lifetime).

    ``metrics``: extra Prometheus registries served at /metrics (the in-process ingest's, under `smartpark up`).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings, app.state.registry = settings, registry
        # the routes see the store through the hour cache (where configured), which the warmer fills
        cache = HourCache(store, settings.api_hour_cache_s) if settings.api_hour_cache_s > 0 else None
        app.state.store, app.state.catalog = cache or store, catalog
        app.state.metrics_registries = list(metrics)
        app.state.reference = reference or load_reference(settings.reference_file)
        await asyncio.to_thread(alert_access.start, app.state.reference)  # tables before any request
        app.state.kpi_warmer = warmer = _started_warmer(settings, registry, cache, app.state.reference)
        try:
            yield
        finally:
            if warmer:
                await asyncio.to_thread(warmer.stop)  # joins the thread: not on the event loop

    app = FastAPI(title="smartpark", version="1", lifespan=lifespan,
                  description="Sites, series and KPIs of an industrial park's energy, emissions and greening.")
    alert_access = app.state.alerts = AlertAccess(registry.engine, settings)  # the API's one way in to the alert tables
    install_error_handlers(app)
    _add_middleware(app, settings)
    app.state.limits = KeyLimits(settings)
    for module in (health, sites, devices, series, daily, kpis, screening, reports, keys, page, alerts, audit):
        app.include_router(module.router)
    return app


def _started_warmer(settings: Settings, registry: Registry, cache: HourCache | None,
                    reference: Reference) -> KpiWarmer | None:
    """The thread that keeps the hour cache warm with the KPIs, when both are configured."""
    warmer = KpiWarmer(registry, cache, reference) if settings.api_warm_kpis and cache else None
    if warmer:
        warmer.start()
    return warmer


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """Sessions, security headers and the body limit, the last added the outermost (before any auth)."""
    # the overview page's login: a signed cookie holding a session token (api/sessions.py, never the API key);
    # a random secret per process in development (settings refuse a missing or placeholder one in production)
    settings.check_session_secret()
    app.add_middleware(SchemeSessionMiddleware,  # type: ignore[arg-type]  # Starlette types only its own options
                       secret_key=settings.api_session_secret or secrets.token_urlsafe(32),
                       session_cookie="smartpark_session", same_site="strict", max_age=SESSION_TTL_S,
                       always_secure=settings.api_secure_cookie == "always")
    app.add_middleware(SecurityHeaders)
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
