"""The audit trail (admin only): stored values that later readings changed, newest first, a page at a time.

The ingest records a rewrite when a reading carries a time already stored for its device with a different
value (core/registry/audit.py); the new value is kept, the old one is here. A redelivery of the same value
is not a change and is not listed.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from smartpark.api.deps import AdminDep
from smartpark.api.errors import ADMIN_ERRORS
from smartpark.core.ids import ID_SCHEMA_PATTERN
from smartpark.core.registry import AuditTrail, ValueRewrite

__all__ = ["router"]

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ADMIN_ERRORS)
_init_lock = threading.Lock()

Id = Annotated[str | None, Query(pattern=ID_SCHEMA_PATTERN)]  # pydantic's (Rust) regex: `$` is the very end
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Limit = Annotated[int, Query(ge=1, le=1000)]


def _trail(request: Request) -> AuditTrail:
    """The audit trail on the registry's database, its table created on first use (as the alert tables)."""
    with _init_lock:
        trail = getattr(request.app.state, "audit_trail", None)
        if trail is None:
            trail = AuditTrail(request.app.state.registry.engine)
            trail.init()
            request.app.state.audit_trail = trail
        return trail


TrailDep = Annotated[AuditTrail, Depends(_trail)]


class RewritePublic(BaseModel):
    site: str
    device: str
    measurement: str
    metric: str
    ts: datetime
    old_value: float
    new_value: float
    received_at: datetime


class RewritePage(BaseModel):
    items: list[RewritePublic]
    total: int
    offset: int
    limit: int


def _iso(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _public(r: ValueRewrite) -> RewritePublic:
    return RewritePublic(site=r.site, device=r.device, measurement=r.measurement, metric=r.metric, ts=_iso(r.ts_ms),
                         old_value=r.old_value, new_value=r.new_value, received_at=_iso(r.received_ms))


@router.get("/rewrites")
def list_rewrites(trail: TrailDep, _: AdminDep, *, site: Id = None, device: Id = None, offset: Offset = 0,
                  limit: Limit = 100) -> RewritePage:
    """Stored values changed by a later reading (same device, metric and time, another value), newest first."""
    rows, total = trail.rewrites(site=site, device=device, offset=offset, limit=limit)
    return RewritePage(items=[_public(r) for r in rows], total=total, offset=offset, limit=limit)
