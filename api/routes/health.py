"""Liveness (process up) and readiness (store and metadata reachable); no auth."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from smartpark.api.deps import RegistryDep, StoreDep
from smartpark.core.errors import StoreError
from smartpark.core.redact import redact

router = APIRouter(tags=["health"])
log = logging.getLogger("smartpark.api")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(registry: RegistryDep, store: StoreDep) -> JSONResponse:
    """Unauthenticated: says which part is down, never why (the reason, credentials redacted, goes to the log)."""
    checks: dict[str, str] = {}
    try:
        store.ping()
        checks["store"] = "ok"
    except StoreError as exc:
        checks["store"] = _down("store", exc)
    try:
        with registry.session() as s:
            s.execute(text("SELECT 1"))
        checks["metadata"] = "ok"
    except Exception as exc:
        checks["metadata"] = _down("metadata", exc)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)


def _down(part: str, exc: Exception) -> str:
    log.warning("readyz: %s unavailable: %s", part, redact(str(exc)))
    return "unavailable"


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text: the process's figures, and the ingest's when it runs in this process (`smartpark up`)."""
    body = generate_latest(REGISTRY)
    for registry in request.app.state.metrics_registries:
        body += generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
