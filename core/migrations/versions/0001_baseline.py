"""Baseline: the registry (parks, sites, devices, API keys), the alert engine's tables and page sessions.

The schema of smartpark 0.1.0, which created its tables with ``create_all`` at start. A database from then
has some or all of these tables and no ``alembic_version``: this revision creates only the missing tables
(alert tables exist only where the engine or the API had run), so such a database is adopted in place.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STR63 = sa.String(length=63)


def _table(name: str, *columns: sa.Column[Any] | sa.Constraint, indexes: tuple[tuple[str, list[str]], ...] = ()) -> None:
    """Create a table and its indexes unless a pre-migration smartpark already made it."""
    if sa.inspect(op.get_bind()).has_table(name):
        return
    op.create_table(name, *columns)
    for index, cols in indexes:
        op.create_index(index, name, cols, unique=False)


def _registry() -> None:
    _table("parks",
           sa.Column("id", STR63, nullable=False),
           sa.Column("name", sa.String(length=200), nullable=False),
           sa.Column("region", sa.String(length=40), nullable=False),
           sa.Column("timezone", sa.String(length=64), nullable=False),
           sa.PrimaryKeyConstraint("id"))
    _table("sites",
           sa.Column("id", STR63, nullable=False),
           sa.Column("park_id", STR63, nullable=False),
           sa.Column("name", sa.String(length=200), nullable=False),
           sa.Column("enterprise", sa.String(length=200), nullable=False),
           sa.Column("industry", sa.String(length=40), nullable=False),
           sa.Column("area_m2", sa.Float(), nullable=False),
           sa.Column("energy_quota_tce_day", sa.Float(), nullable=True),
           sa.Column("energy_quota_tce_year", sa.Float(), nullable=True),
           sa.Column("greening_min_pct", sa.Float(), nullable=True),
           sa.Column("greening_max_pct", sa.Float(), nullable=True),
           sa.ForeignKeyConstraint(["park_id"], ["parks.id"], name="fk_sites_park_id_parks"),
           sa.PrimaryKeyConstraint("id"),
           indexes=(("ix_sites_park_id", ["park_id"]),))
    _table("devices",
           sa.Column("id", STR63, nullable=False),
           sa.Column("site_id", STR63, nullable=False),
           sa.Column("kind", sa.String(length=20), nullable=False),
           sa.Column("source_type", sa.String(length=40), nullable=True),
           sa.Column("mqtt_password_hash", sa.String(length=200), nullable=True),
           sa.Column("online", sa.Boolean(), nullable=True),
           sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
           sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name="fk_devices_site_id_sites"),
           sa.PrimaryKeyConstraint("id"),
           indexes=(("ix_devices_site_id", ["site_id"]),))
    _table("api_keys",
           sa.Column("id", sa.String(length=16), nullable=False),
           sa.Column("key_hash", sa.String(length=64), nullable=False),
           sa.Column("role", sa.String(length=10), nullable=False),
           sa.Column("sites", sa.JSON(), nullable=False),
           sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
           sa.Column("revoked", sa.Boolean(), nullable=False),
           sa.PrimaryKeyConstraint("id"))
    _table("api_page_sessions",
           sa.Column("token_hash", sa.String(length=64), nullable=False),
           sa.Column("key_id", sa.String(length=16), nullable=False),
           sa.Column("created_ms", sa.BigInteger(), nullable=False),
           sa.Column("expires_ms", sa.BigInteger(), nullable=False),
           sa.PrimaryKeyConstraint("token_hash"),
           indexes=(("ix_api_page_sessions_expires_ms", ["expires_ms"]), ("ix_api_page_sessions_key_id", ["key_id"])))


def _alert_rules() -> None:
    _table("alert_rules",
           sa.Column("id", STR63, nullable=False),
           sa.Column("kind", sa.String(length=20), nullable=False),
           sa.Column("enabled", sa.Boolean(), nullable=False),
           sa.Column("spec", sa.JSON(), nullable=False),
           sa.Column("created_ms", sa.BigInteger(), nullable=False),
           sa.Column("updated_ms", sa.BigInteger(), nullable=False),
           sa.PrimaryKeyConstraint("id"))
    _table("alert_states",
           sa.Column("rule_id", STR63, nullable=False),
           sa.Column("subject", STR63, nullable=False),
           sa.Column("data", sa.JSON(), nullable=False),
           sa.PrimaryKeyConstraint("rule_id", "subject"))
    _table("alert_episodes",
           sa.Column("id", sa.String(length=40), nullable=False),
           sa.Column("rule_id", STR63, nullable=False),
           sa.Column("subject", STR63, nullable=False),
           sa.Column("open_key", sa.String(length=130), nullable=True),
           sa.Column("site", STR63, nullable=False),
           sa.Column("device", STR63, nullable=True),
           sa.Column("metric", STR63, nullable=True),
           sa.Column("severity", sa.String(length=10), nullable=False),
           sa.Column("state", sa.String(length=10), nullable=False),
           sa.Column("started_ms", sa.BigInteger(), nullable=False),
           sa.Column("ended_ms", sa.BigInteger(), nullable=True),
           sa.Column("value", sa.Float(), nullable=True),
           sa.Column("peak", sa.Float(), nullable=True),
           sa.Column("limit", sa.Float(), nullable=True),
           sa.Column("unit", sa.String(length=20), nullable=False),
           sa.Column("window", sa.String(length=20), nullable=False),
           sa.Column("message", sa.String(length=300), nullable=False),
           sa.Column("evidence", sa.JSON(), nullable=False),
           sa.Column("annotated", sa.Integer(), nullable=False),
           sa.PrimaryKeyConstraint("id"),
           sa.UniqueConstraint("open_key", name="uq_alert_episodes_open_key"),
           indexes=(("ix_alert_episodes_rule_id", ["rule_id"]),
                    ("ix_alert_episodes_site_start", ["site", "started_ms"])))
    _table("alert_minutes",
           sa.Column("device", STR63, nullable=False),
           sa.Column("pollutant", sa.String(length=10), nullable=False),
           sa.Column("minute_ms", sa.BigInteger(), nullable=False),
           sa.Column("total", sa.Float(), nullable=False),
           sa.Column("n", sa.Integer(), nullable=False),
           sa.PrimaryKeyConstraint("device", "pollutant", "minute_ms"))
    _table("alert_seen",
           sa.Column("device", STR63, nullable=False),
           sa.Column("last_ms", sa.BigInteger(), nullable=False),
           sa.PrimaryKeyConstraint("device"))


def _alert_webhooks() -> None:
    _table("alert_webhooks",
           sa.Column("id", sa.String(length=40), nullable=False),
           sa.Column("url", sa.String(length=2000), nullable=False),
           sa.Column("secret", sa.String(length=100), nullable=False),
           sa.Column("sites", sa.JSON(), nullable=False),
           sa.Column("severities", sa.JSON(), nullable=False),
           sa.Column("rules", sa.JSON(), nullable=False),
           sa.Column("enabled", sa.Boolean(), nullable=False),
           sa.Column("disabled_reason", sa.String(length=200), nullable=False),
           sa.Column("description", sa.String(length=200), nullable=False),
           sa.Column("created_ms", sa.BigInteger(), nullable=False),
           sa.PrimaryKeyConstraint("id"))
    _table("alert_deliveries",
           sa.Column("id", sa.String(length=40), nullable=False),
           sa.Column("subscription_id", sa.String(length=40), nullable=False),
           sa.Column("event_type", sa.String(length=20), nullable=False),
           sa.Column("episode_id", sa.String(length=40), nullable=True),
           sa.Column("body", sa.Text(), nullable=False),
           sa.Column("state", sa.String(length=10), nullable=False),
           sa.Column("attempts", sa.Integer(), nullable=False),
           sa.Column("created_ms", sa.BigInteger(), nullable=False),
           sa.Column("next_ms", sa.BigInteger(), nullable=False),
           sa.Column("last_status", sa.Integer(), nullable=True),
           sa.Column("last_error", sa.String(length=500), nullable=False),
           sa.ForeignKeyConstraint(["subscription_id"], ["alert_webhooks.id"],
                                   name="fk_alert_deliveries_subscription_id_alert_webhooks", ondelete="CASCADE"),
           sa.PrimaryKeyConstraint("id"),
           indexes=(("ix_alert_deliveries_due", ["state", "next_ms"]),
                    ("ix_alert_deliveries_subscription_id", ["subscription_id"])))
    _table("alert_delivery_attempts",
           sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
           sa.Column("delivery_id", sa.String(length=40), nullable=False),
           sa.Column("attempt", sa.Integer(), nullable=False),
           sa.Column("at_ms", sa.BigInteger(), nullable=False),
           sa.Column("status", sa.Integer(), nullable=True),
           sa.Column("latency_ms", sa.Float(), nullable=False),
           sa.Column("error", sa.String(length=500), nullable=False),
           sa.ForeignKeyConstraint(["delivery_id"], ["alert_deliveries.id"],
                                   name="fk_alert_delivery_attempts_delivery_id_alert_deliveries", ondelete="CASCADE"),
           sa.PrimaryKeyConstraint("id"),
           indexes=(("ix_alert_delivery_attempts_delivery_id", ["delivery_id"]),))


def upgrade() -> None:
    _registry()
    _alert_rules()
    _alert_webhooks()


def downgrade() -> None:
    for name in ("alert_delivery_attempts", "alert_deliveries", "alert_webhooks", "alert_seen", "alert_minutes",
                 "alert_episodes", "alert_states", "alert_rules", "api_page_sessions", "api_keys", "devices",
                 "sites", "parks"):
        op.drop_table(name)
