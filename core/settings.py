"""One settings object for every service, from ``SMARTPARK_*`` environment variables and an optional ``.env``.

Each setting is documented where it is declared; ``.env.example`` lists them all with their defaults and is
checked against this class by the tests. Settings are validated before any I/O.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from smartpark.core.errors import ConfigError

__all__ = ["MqttTarget", "Settings", "env_example", "load_settings"]

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "password", "secret", "admin"})


class MqttTarget:
    """Host, port and credentials parsed from ``SMARTPARK_MQTT_URL``."""

    __slots__ = ("host", "password", "port", "tls", "username")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"SMARTPARK_MQTT_URL must look like mqtt://user:pass@host:1883, got {url!r}")
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname
        self.port = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTPARK_", env_file=".env", extra="ignore",
                                      use_attribute_docstrings=True)

    env: Literal["development", "production"] = "development"
    """`production` refuses placeholder secrets and the embedded broker and store."""

    # --- MQTT
    mqtt_url: str = ""
    """Broker as mqtt://user:pass@host:1883 (mqtts:// for TLS). Empty: `smartpark up` runs the embedded broker."""
    mqtt_v5: bool = True
    """Speak MQTT 5 to an external broker (session expiry, Receive Maximum, shared subscriptions); else 3.1.1."""
    mqtt_embedded_host: str = "127.0.0.1"
    """Address the embedded broker listens on."""
    mqtt_embedded_port: int = Field(1883, ge=1, le=65535)
    """Port of the embedded broker."""

    # --- time-series store
    influx_url: str = ""
    """InfluxDB base URL (v1 HTTP API, e.g. http://localhost:8086). Empty: the embedded SQLite store."""
    influx_db: str = "smartpark"
    """InfluxDB database (on 2.x/3.x: the bucket mapped to it)."""
    influx_username: str = ""
    """InfluxDB 1.x user (basic auth)."""
    influx_password: str = ""
    """InfluxDB 1.x password."""
    influx_token: str = ""
    """InfluxDB 2.x/3.x token (sent as `Authorization: Token ...`); wins over user/password."""
    influx_timeout_s: float = Field(10.0, gt=0)
    """Timeout of one InfluxDB HTTP call."""
    influx_gzip: bool = False
    """Send writes gzip'd (level 1: a tenth of the bytes). Off: on the same host or LAN compressing costs the ingest
    and InfluxDB more CPU than the bytes are worth (bench_ingest, batch payloads: ~277k readings/s plain, ~250k
    gzip'd); turn it on when InfluxDB is across a slow or metered link."""
    retention_days: int = Field(3650, ge=1)
    """Readings older than this are rejected (`ts_out_of_window`); also the raw retention policy."""

    # --- local state
    data_dir: Path = Path("smartpark-data")
    """Spool, dead letters, embedded store and metadata database live here."""
    database_url: str = ""
    """Metadata database (SQLAlchemy URL). Empty: SQLite `meta.sqlite` in the data dir."""
    catalog_file: Path | None = None
    """A metric catalog to use instead of the built-in one."""
    reference_file: Path | None = None
    """Reference data (limits, reference O2, coal and CO2 factors) to use instead of the built-in file."""
    screening_file: Path | None = None
    """Two-high screening data (sectors, energy threshold, restricted products, process benchmark and baseline
    levels) to use instead of the built-in core/data/screening.yaml."""

    # --- API
    api_host: str = "127.0.0.1"
    """Address the API listens on."""
    api_port: int = Field(8000, ge=1, le=65535)
    """Port of the API."""
    api_session_secret: str = ""
    """Signs the overview page's session cookie (it holds the API key). Empty in development: a random one per
    process (logins end with a restart); production needs a real secret of at least 32 characters."""
    api_stale_after_s: float = Field(300.0, gt=0)
    """A device whose latest reading is older than this is shown as stale (age in /latest, the overview page)."""
    kpi_min_valid_minutes: int = Field(45, ge=1, le=60)
    """An hourly emission mean is valid with at least this many valid minutes (domain.md: 45, unconfirmed)."""
    counter_max_gap_s: int = Field(86_400, ge=60, le=31 * 86_400)
    """A counter step spanning more than this (a meter silent that long) is counted in no period and listed as a
    gap; it is also how far before a period the previous reading is looked for (the cost of a delta query)."""
    counter_max_per_h: dict[str, float] = Field(default_factory=lambda: {
        "energy_kwh": 1_000_000.0, "gas_nm3": 1_000_000.0, "steam_t": 10_000.0, "coal_t": 10_000.0,
        "water_m3": 1_000_000.0, "output_t": 100_000.0, "irrigation_m3": 100_000.0})
    """Plausibility bound per counter metric, in its unit per hour (energy_kwh: kW), for meters without a
    rated_kw: a step implying more is not counted and is listed as implausible. JSON object in the environment."""
    api_warm_kpis: bool = True
    """Compute the emission compliance hours of the last 31 days of every site with stacks in the background
    and keep them fresh, so the month's compliance answers in ~0.3 s, not ~5 s, from the first request
    (InfluxDB only: the embedded store keeps nothing)."""

    # --- ingest
    ingest_client_id: str = "smartpark-ingest"
    """MQTT client id of the ingest: fixed, so its persistent session survives restarts."""
    ingest_mqtt_client: Literal["session", "paho"] = "session"
    """MQTT 5 client of the ingest: `session` (thin layer on the mqtt5 codec, the fast one) or `paho`.
    MQTT 3.1.1 (the embedded broker, SMARTPARK_MQTT_V5=false) always uses paho."""
    ingest_shared: str = ""
    """Empty: a plain subscription. `1` or a group name: an MQTT 5 shared subscription ($share/<group>/...)."""
    ingest_batch_size: int = Field(5000, ge=1, le=100_000)
    """Points per store write."""
    ingest_batch_age_s: float = Field(1.0, gt=0, le=60)
    """A batch is written at the latest this long after its first reading arrived."""
    ingest_metrics_port: int = Field(9108, ge=0, le=65535)
    """Port of the standalone ingest's Prometheus /metrics endpoint (0: off). Inside `smartpark up`, see the API."""
    ingest_stats_interval_s: float = Field(10.0, gt=0)
    """How often the ingest writes its own figures to the `platform` measurement."""
    spool_max_bytes: int = Field(1 << 30, ge=1 << 20)
    """Disk the ingest may use for batches the store cannot take; when full, it stops acking (the broker holds)."""

    # --- alerts (alerts/: the engine, `smartpark alerts`, and inside `smartpark up`)
    alerts_client_id: str = "smartpark-alerts"
    """MQTT client id of the alert engine's own subscription: fixed, so its persistent session survives restarts."""
    alerts_eval_interval_s: float = Field(10.0, gt=0, le=3600)
    """How often window, no-data, quota and greening rules are evaluated against the store."""
    alerts_no_data_s: float = Field(900.0, gt=0)
    """No reading from a device for this long fires a no-data rule (a rule may set its own `after_s`)."""
    alerts_webhook_timeout_s: float = Field(10.0, gt=0, le=120)
    """Timeout of one webhook attempt (connect, send, answer)."""
    alerts_webhook_max_attempts: int = Field(10, ge=1, le=100)
    """Attempts per webhook delivery before it is marked failed."""
    alerts_webhook_backoff_s: float = Field(5.0, gt=0)
    """Delay before the first retry; doubles per attempt (with jitter) up to the maximum below."""
    alerts_webhook_backoff_max_s: float = Field(3600.0, gt=0)
    """Longest delay between two attempts (a Retry-After above it is capped to it)."""
    alerts_webhook_allow_private: bool = False
    """Allow webhook URLs resolving to private, loopback, link-local or CGNAT addresses (SSRF guard off for them)."""

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str) -> str:
        if v:
            MqttTarget(v)
        return v

    @field_validator("influx_url")
    @classmethod
    def _influx_url(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(f"SMARTPARK_INFLUX_URL must be an http(s) URL, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _production(self) -> Settings:
        if self.env != "production":
            return self
        if not self.mqtt_url or not self.influx_url:
            raise ValueError("SMARTPARK_ENV=production needs SMARTPARK_MQTT_URL and SMARTPARK_INFLUX_URL")
        target = MqttTarget(self.mqtt_url)
        if (target.password or "") in PLACEHOLDER_SECRETS:
            raise ValueError("SMARTPARK_MQTT_URL carries a placeholder password; set a real one")
        if self.influx_token and _placeholder_token(self.influx_token):
            raise ValueError("SMARTPARK_INFLUX_TOKEN is a placeholder; set a real token in production")
        if not self.influx_token and self.influx_password in PLACEHOLDER_SECRETS:
            raise ValueError("set SMARTPARK_INFLUX_TOKEN or a real SMARTPARK_INFLUX_PASSWORD in production")
        if self.api_session_secret in PLACEHOLDER_SECRETS or len(self.api_session_secret) < 32:
            raise ValueError("set SMARTPARK_API_SESSION_SECRET to a real secret of 32+ characters in production")
        return self

    @cached_property
    def mqtt(self) -> MqttTarget | None:
        return MqttTarget(self.mqtt_url) if self.mqtt_url else None

    @property
    def metadata_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'meta.sqlite').resolve()}"

    @property
    def retention_ms(self) -> int:
        return self.retention_days * 86_400_000


def _placeholder_token(token: str) -> bool:
    """A placeholder token, or a v1 ``user:password`` token whose password is one."""
    token = token.strip()
    return token.lower() in PLACEHOLDER_SECRETS or token.partition(":")[2].lower() in PLACEHOLDER_SECRETS - {""}


def load_settings(**overrides: object) -> Settings:
    """Build and validate the settings; a bad value becomes a ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [f"  {_env_name(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from exc


def _env_name(loc: tuple[object, ...]) -> str:
    return f"SMARTPARK_{str(loc[0]).upper()}" if loc else "settings"


def env_example() -> str:
    """The text of `.env.example`: every setting with its documentation and default (kept in sync by a test)."""
    out = ["# smartpark settings: environment variables (or this file renamed to .env).",
           "# Generated from core/settings.py by `python -m smartpark.core.settings`; defaults shown.", ""]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        default = "" if default is None else json.dumps(default) if isinstance(default, dict) else default
        out += [f"# {field.description}", f"SMARTPARK_{name.upper()}={default}", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(env_example(), end="")
