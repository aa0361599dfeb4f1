"""The FastAPI application: registry and store opened in the lifespan, routes per resource."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.middleware.sessions import SessionMiddleware

from smartpark.api.errors import install_error_handlers
from smartpark.api.routes import alerts, daily, devices, health, keys, kpis, page, reports, screening, series, sites
from smartpark.api.sessions import SESSION_TTL_S, create_session_table
from smartpark.api.warm import KpiWarmer
from smartpark.core.catalog import Catalog
from smartpark.core.reference import Reference, load_reference
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["create_app"]


def create_app(settings: Settings, *, registry: Registry, store: TimeSeriesStore, catalog: Catalog,
               metrics: Sequence[CollectorRegistry] = (), reference: Reference | None = None) -> FastAPI:
    """Build the app around already-validated settings and opened clients (the caller owns their lifetime).

    ``metrics``: extra Prometheus registries served at /metrics (the in-process ingest's, under `smartpark up`).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings, app.state.registry = settings, registry
        app.state.store, app.state.catalog = store, catalog
        app.state.metrics_registries = list(metrics)
        app.state.reference = reference or load_reference(settings.reference_file)
        ttl_s = getattr(store, "hour_cache_s", 0.0)  # only a store that keeps computed hours is worth warming
        warmer = KpiWarmer(registry, store, app.state.reference, ttl_s) if settings.api_warm_kpis and ttl_s else None
        if warmer:
            warmer.start()
        app.state.kpi_warmer = warmer
        try:
            yield
        finally:
            if warmer:
                await asyncio.to_thread(warmer.stop)  # joins the thread: not on the event loop

    app = FastAPI(title="smartpark", version="1", lifespan=lifespan,
                  description="Sites, series and KPIs of an industrial park's energy, emissions and greening.")
    install_error_handlers(app)
    # the overview page's login: a signed cookie holding a session token (api/sessions.py, never the API key);
    # a random secret per process in development (settings refuse a missing or placeholder one in production)
    create_session_table(registry.engine)
    app.add_middleware(SessionMiddleware, secret_key=settings.api_session_secret or secrets.token_urlsafe(32),
                       session_cookie="smartpark_session", same_site="strict", max_age=SESSION_TTL_S,
                       https_only=settings.env == "production")
    for module in (health, sites, devices, series, daily, kpis, screening, reports, keys, page, alerts):
        app.include_router(module.router)
    return app
