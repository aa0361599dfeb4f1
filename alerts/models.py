"""Alert tables in the metadata database: rules, evaluation state, episodes, webhook subscriptions, the
delivery outbox and its attempt log, and the per-minute means the hourly rules read.

They share the registry's declarative ``Base`` (one metadata database, one migration history in
core/migrations: `Registry.init` creates them, whatever was imported). Times are epoch milliseconds
(integers: exact, and the same in SQLite and PostgreSQL).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from smartpark.core.registry.models import Base

__all__ = ["AlertMinute", "AlertRule", "AlertSeen", "AlertState", "Delivery", "DeliveryAttempt", "Episode",
           "WebhookSubscription"]


class AlertRule(Base):
    __tablename__ = "alert_rules"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated RuleSpec, as the API shows it
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class AlertState(Base):
    """What a rule remembers about one subject (a device or a site) between readings and restarts."""

    __tablename__ = "alert_states"

    rule_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    subject: Mapped[str] = mapped_column(String(63), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Episode(Base):
    __tablename__ = "alert_episodes"
    __table_args__ = (Index("ix_alert_episodes_site_start", "site", "started_ms"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(63), index=True)
    subject: Mapped[str] = mapped_column(String(63))
    # Set while firing, NULL once resolved: the unique index makes a second open episode impossible.
    open_key: Mapped[str | None] = mapped_column(String(130), unique=True, default=None)
    site: Mapped[str] = mapped_column(String(63))
    device: Mapped[str | None] = mapped_column(String(63), default=None)
    metric: Mapped[str | None] = mapped_column(String(63), default=None)
    severity: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10))  # firing | resolved
    started_ms: Mapped[int] = mapped_column(BigInteger)
    ended_ms: Mapped[int | None] = mapped_column(BigInteger, default=None)
    value: Mapped[float | None] = mapped_column(Float, default=None)
    peak: Mapped[float | None] = mapped_column(Float, default=None)
    limit: Mapped[float | None] = mapped_column(Float, default=None)
    unit: Mapped[str] = mapped_column(String(20), default="")
    window: Mapped[str] = mapped_column(String(20), default="")
    message: Mapped[str] = mapped_column(String(300), default="")
    evidence: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the readings (or minutes) that triggered it
    annotated: Mapped[int] = mapped_column(Integer, default=0)  # 0 none, 1 firing, 2 firing and resolved


class WebhookSubscription(Base):
    __tablename__ = "alert_webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(100))  # whsec_<base64>: needed in clear to sign
    sites: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: every site
    severities: Mapped[list[str]] = mapped_column(JSON, default=list)
    rules: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(String(200), default="")
    created_ms: Mapped[int] = mapped_column(BigInteger)


class Delivery(Base):
    """The outbox: one message to one subscription; its id is the ``webhook-id`` of every attempt."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_due", "state", "next_ms"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("alert_webhooks.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(20))
    episode_id: Mapped[str | None] = mapped_column(String(40), default=None)
    body: Mapped[str] = mapped_column(Text)  # the exact bytes signed and sent, the same on every attempt
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending|delivered|failed|gone
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    next_ms: Mapped[int] = mapped_column(BigInteger)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str] = mapped_column(String(500), default="")


class DeliveryAttempt(Base):
    __tablename__ = "alert_delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("alert_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[int | None] = mapped_column(Integer, default=None)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str] = mapped_column(String(500), default="")


class AlertMinute(Base):
    """One pollutant's valid O2-corrected value in one reading of a device (``minute_ms`` is the reading's time;
    ``total``/``n`` are that value and 1). Keyed by reading time, a redelivered or late reading overwrites itself;
    the hourly rules group the rows into minute means when they judge an hour."""

    __tablename__ = "alert_minutes"

    device: Mapped[str] = mapped_column(String(63), primary_key=True)
    pollutant: Mapped[str] = mapped_column(String(10), primary_key=True)
    minute_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    total: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)


class AlertSeen(Base):
    """Time of the last reading the engine took from a device: no-data rules and replay dedup read it."""

    __tablename__ = "alert_seen"

    device: Mapped[str] = mapped_column(String(63), primary_key=True)
    last_ms: Mapped[int] = mapped_column(BigInteger)

