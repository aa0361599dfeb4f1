"""The FastAPI application: registry and store opened in the lifespan, routes per resource."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from smartpark.api.errors import install_error_handlers
from smartpark.api.routes import health, series, sites
from smartpark.core.catalog import Catalog
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

__all__ = ["create_app"]


def create_app(settings: Settings, *, registry: Registry, store: TimeSeriesStore, catalog: Catalog,
               metrics: Sequence[CollectorRegistry] = ()) -> FastAPI:
    """Build the app around already-validated settings and opened clients (the caller owns their lifetime).

    ``metrics``: extra Prometheus registries served at /metrics (the in-process ingest's, under `smartpark up`).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings, app.state.registry = settings, registry
        app.state.store, app.state.catalog = store, catalog
        app.state.metrics_registries = list(metrics)
        yield

    app = FastAPI(title="smartpark", version="1", lifespan=lifespan,
                  description="Sites, series and KPIs of an industrial park's energy, emissions and greening.")
    install_error_handlers(app)
    for module in (health, sites, series):
        app.include_router(module.router)
    return app
