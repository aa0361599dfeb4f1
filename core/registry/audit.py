"""The audit trail of rewritten history: a reading that changed a value already stored.

Readings are keyed by device time, so a device re-publishing an old timestamp with a new value replaces the
stored one (InfluxDB and the embedded store overwrite in place). The new value is kept (a correction is
legitimate: a recalibrated CEMS, a gateway resending its buffer), but the change is evidence and is recorded
here, in the metadata database: which device, site, metric and time, the old and the new value, and when the
change arrived. The ingest writes it (ingest/rewrites.py finds the changes); admins list it through the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import BigInteger, Float, Index, Integer, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from smartpark.core.registry.models import Base
from smartpark.core.repository import SqlRepository

__all__ = ["AuditTrail", "Rewrite", "ValueRewrite"]


class ValueRewrite(Base):
    """One stored value replaced by a different one (same device, metric and time)."""

    __tablename__ = "audit_rewrites"
    __table_args__ = (Index("ix_audit_rewrites_site_received", "site", "received_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_ms: Mapped[int] = mapped_column(BigInteger, index=True)  # when the changing reading arrived
    site: Mapped[str] = mapped_column(String(63))
    device: Mapped[str] = mapped_column(String(63), index=True)
    measurement: Mapped[str] = mapped_column(String(63))
    metric: Mapped[str] = mapped_column(String(63))
    ts_ms: Mapped[int] = mapped_column(BigInteger)  # the reading's (device) time
    old_value: Mapped[float] = mapped_column(Float)
    new_value: Mapped[float] = mapped_column(Float)


class Rewrite(NamedTuple):
    site: str
    device: str
    measurement: str
    metric: str
    ts_ms: int
    old_value: float
    new_value: float
    received_ms: int


class AuditTrail(SqlRepository):
    """The audit table on the metadata database's engine (the registry's)."""

    def init(self) -> None:
        """Create the table if missing (idempotent): the ingest and the API work on a database that predates it."""
        ValueRewrite.__table__.create(self.engine, checkfirst=True)  # type: ignore[attr-defined]

    def record(self, rewrites: Sequence[Rewrite]) -> None:
        if not rewrites:
            return
        with self.session() as s:
            s.add_all([ValueRewrite(**r._asdict()) for r in rewrites])

    def rewrites(self, *, site: str | None = None, device: str | None = None, offset: int = 0,
                 limit: int = 100) -> tuple[list[ValueRewrite], int]:
        """A page of rewrites, newest first, and how many match in all."""
        where = [c for c in (ValueRewrite.site == site if site else None,
                             ValueRewrite.device == device if device else None) if c is not None]
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(ValueRewrite).where(*where)) or 0
            rows = list(s.scalars(select(ValueRewrite).where(*where)
                                  .order_by(ValueRewrite.id.desc()).offset(offset).limit(limit)))
        return rows, total
