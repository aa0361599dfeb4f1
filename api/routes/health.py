"""Liveness (process up) and readiness (store and metadata reachable); no auth."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from smartpark.api.deps import RegistryDep, StoreDep
from smartpark.core.errors import StoreError
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(registry: RegistryDep, store: StoreDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        store.ping()
        checks["store"] = "ok"
    except StoreError as exc:
        checks["store"] = str(exc)
    try:
        with registry.session() as s:
            s.execute(text("SELECT 1"))
        checks["metadata"] = "ok"
    except Exception as exc:
        checks["metadata"] = str(exc)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)
