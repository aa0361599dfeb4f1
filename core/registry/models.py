"""Registry tables: the park, its sites and devices, and API keys (SQLAlchemy 2, any SQLAlchemy URL)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from smartpark.core.clock import DEFAULT_TIMEZONE

__all__ = ["ApiKey", "Base", "Device", "Park", "Site"]


class Base(DeclarativeBase):
    """Every table of the metadata database (registry, alerts, page sessions); its schema is the migrations'.

    Named constraints, so a migration can drop or alter one by name on every database (SQLite batch mode too).
    """

    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    })


class Park(Base):
    __tablename__ = "parks"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    region: Mapped[str] = mapped_column(String(40), default="national")
    timezone: Mapped[str] = mapped_column(String(64), default=DEFAULT_TIMEZONE)


class Site(Base):
    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    park_id: Mapped[str] = mapped_column(ForeignKey("parks.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    enterprise: Mapped[str] = mapped_column(String(200))
    industry: Mapped[str] = mapped_column(String(40))
    area_m2: Mapped[float] = mapped_column(Float)
    energy_quota_tce_day: Mapped[float | None] = mapped_column(Float, default=None)
    energy_quota_tce_year: Mapped[float | None] = mapped_column(Float, default=None)
    greening_min_pct: Mapped[float | None] = mapped_column(Float, default=None)
    greening_max_pct: Mapped[float | None] = mapped_column(Float, default=None)

    devices: Mapped[list[Device]] = relationship(back_populates="site", cascade="all, delete-orphan")


class Device(Base):
    __tablename__ = "devices"

    # Device ids are unique in the park: a topic naming a device under another site is a mismatch.
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    source_type: Mapped[str | None] = mapped_column(String(40), default=None)
    mqtt_password_hash: Mapped[str | None] = mapped_column(String(200), default=None)
    # HJ 212 identity of a stack monitor's data acquisition unit (hj212/): its MN, unique in the park, and
    # the hash of its PW (the same PBKDF2 format as the MQTT password).
    hj212_mn: Mapped[str | None] = mapped_column(String(64), default=None, unique=True)
    hj212_pw_hash: Mapped[str | None] = mapped_column(String(200), default=None)
    online: Mapped[bool | None] = mapped_column(Boolean, default=None)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # meter hierarchy (energy meters; rules in core/registry/hierarchy.py): role main/sub/generation (None: the
    # default, sub where a parent is set, else main), the parent meter's id, the rated power bounding a step
    role: Mapped[str | None] = mapped_column(String(12), default=None)
    parent_id: Mapped[str | None] = mapped_column(String(63), default=None)
    rated_kw: Mapped[float | None] = mapped_column(Float, default=None)
    # two-high screening (core/screening.py): the process a meter's line runs, the product a line makes
    process: Mapped[str | None] = mapped_column(String(40), default=None)
    product: Mapped[str | None] = mapped_column(String(40), default=None)

    site: Mapped[Site] = relationship(back_populates="devices")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public prefix of the key
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(10))
    sites: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
