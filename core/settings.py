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
from smartpark.core.ids import SERVICE_PREFIX, is_service_id
from smartpark.core.redact import redact

__all__ = ["MqttTarget", "Settings", "env_example", "load_settings"]

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "password", "secret", "admin"})


class MqttTarget:
    """Host, port and credentials parsed from ``SMARTPARK_MQTT_URL``."""

    __slots__ = ("host", "password", "port", "tls", "username")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"SMARTPARK_MQTT_URL must look like mqtt://user:pass@host:1883, got {redact(url)!r}")
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
    """Broker as mqtt://user:pass@host:1883, or mqtts://user:pass@host:8883 for TLS (certificate and host name
    always verified; a failed handshake is an error, never a plain-text retry). Empty: `smartpark up` runs the
    embedded broker."""
    mqtt_ca_file: Path | None = None
    """CA certificates (PEM) that sign the broker's certificate, for mqtts://. Empty: the system CAs."""
    mqtt_cert_file: Path | None = None
    """Client certificate (PEM, may hold the chain) for mutual TLS with mqtts://; needs SMARTPARK_MQTT_KEY_FILE."""
    mqtt_key_file: Path | None = None
    """Private key (PEM) of SMARTPARK_MQTT_CERT_FILE; keep it readable by the service user only."""
    mqtt_allow_plaintext: bool = False
    """Allow mqtt:// (plain text: the password crosses the network readable) to a host other than loopback under
    SMARTPARK_ENV=production, e.g. on a private container network. Off: production needs mqtts:// there."""
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
    influx_admin_username: str = ""
    """InfluxDB 1.x admin for `smartpark db init` only (database, retention policies, CQs, the users below).
    Empty: db init uses SMARTPARK_INFLUX_USERNAME/_PASSWORD. Give it to no long-running service."""
    influx_admin_password: str = ""
    """Password of SMARTPARK_INFLUX_ADMIN_USERNAME."""
    influx_ingest_username: str = ""
    """The ingest's InfluxDB 1.x user (WRITE on the database), created or updated by `smartpark db init`."""
    influx_ingest_password: str = ""
    """Its password (db init sets it; the ingest itself logs in with SMARTPARK_INFLUX_USERNAME/_PASSWORD)."""
    influx_alerts_username: str = ""
    """The alert engine's InfluxDB user (ALL on the database: reads readings, writes the `alerts` annotations)."""
    influx_alerts_password: str = ""
    """Its password."""
    influx_api_username: str = ""
    """The API's InfluxDB user (READ only: the internet-facing service cannot write or drop anything)."""
    influx_api_password: str = ""
    """Its password."""
    influx_grafana_username: str = ""
    """Grafana's InfluxDB user (READ only)."""
    influx_grafana_password: str = ""
    """Its password."""
    influx_ca_file: Path | None = None
    """CA certificates (PEM) that sign InfluxDB's certificate, for an https:// SMARTPARK_INFLUX_URL. Empty: the
    system CAs. (A park with one private CA sets this and SMARTPARK_MQTT_CA_FILE to the same file.)"""
    influx_timeout_s: float = Field(10.0, gt=0)
    """Timeout of one InfluxDB HTTP call."""
    influx_gzip: bool = False
    """Send writes gzip'd (level 1: a tenth of the bytes). Off: on the same host or LAN compressing costs the ingest
    and InfluxDB more CPU than the bytes are worth (bench_ingest, batch payloads: ~277k readings/s plain, ~250k
    gzip'd); turn it on when InfluxDB is across a slow or metered link."""
    retention_days: int = Field(3650, ge=1)
    """The raw retention policy; no reading older than this is accepted either."""
    store_forward_days: float = Field(7.0, gt=0, le=3650)
    """Store-and-forward window: a reading older than this when it arrives (device time) is rejected with
    `ts_out_of_window`. A gateway's outage buffer must fit in it (5G outages of hours to a long weekend); it
    bounds how far back a device can write. Older history goes straight to the store (`simulate --mode backfill`)."""

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
    """Signs the overview page's session cookie (it holds a random session token; the API key never leaves the
    server, api/sessions.py). Empty in development: a random one per process (logins end with a restart); the
    API in production needs a real secret of at least 32 characters."""
    api_secure_cookie: Literal["auto", "always"] = "auto"
    """`auto`: the session cookie is `Secure` when the request came over HTTPS (directly, or per a trusted
    proxy's X-Forwarded-Proto), so login works over plain HTTP too; `always`: `Secure` on every response."""
    api_forwarded_allow_ips: str = "127.0.0.1"
    """Addresses or networks (comma-separated, e.g. 172.30.0.0/16) of reverse proxies whose X-Forwarded-Proto
    and X-Forwarded-For the API believes; `*` trusts every client (only when nothing else can reach the port)."""
    api_stale_after_s: float = Field(300.0, gt=0)
    """A device whose latest reading is older than this is shown as stale (age in /latest, the overview page)."""
    kpi_min_valid_minutes: int = Field(45, ge=1, le=60)
    """An hourly emission mean is valid with at least this many valid minutes (domain.md: 45, unconfirmed)."""
    counter_max_gap_s: int = Field(21_600, ge=60, le=31 * 86_400)
    """A counter step spanning more than this (a meter silent that long) is counted in no period and listed as a
    gap; it is also how far before a period the previous reading is looked for (the cost of a delta query)."""
    counter_max_per_h: dict[str, float] = Field(default_factory=lambda: {
        "energy_kwh": 1_000_000.0, "gas_nm3": 1_000_000.0, "steam_t": 10_000.0, "coal_t": 10_000.0,
        "water_m3": 1_000_000.0, "output_t": 100_000.0, "irrigation_m3": 100_000.0})
    """Plausibility bound per counter metric, in its unit per hour (energy_kwh: kW), for meters without a
    rated_kw: a step implying more is not counted and is listed as implausible. JSON object in the environment."""
    api_hour_cache_s: float = Field(900.0, ge=0)
    """How long the API keeps a computed emission hour (core/store/hour_cache.py; revalidated on every request by
    the store's cheap per-hour counts, so late readings are never hidden); 0 keeps none and warms none."""
    api_warm_kpis: bool = True
    """Compute the emission compliance hours of the last 31 days of every site with stacks in the background
    and keep them fresh (in the hour cache, SMARTPARK_API_HOUR_CACHE_S), so the month's compliance answers in
    ~0.3 s, not ~5 s, from the first request."""
    api_max_body_bytes: int = Field(1 << 20, ge=4096, le=1 << 30)
    """Largest request body, refused with 413 before authentication (by Content-Length, or as it streams)."""
    api_key_rate_per_s: float = Field(50.0, gt=0)
    """Requests per second one API key may make on average; above it, 429 with Retry-After."""
    api_key_burst: int = Field(200, ge=1)
    """Requests one API key may make at once above its rate (the token bucket's size)."""
    api_key_concurrency: int = Field(2, ge=1, le=64)
    """Series, CSV and KPI requests one API key may have running at once; more get 429 with Retry-After."""
    api_heavy_concurrency: int = Field(4, ge=1, le=256)
    """Series, CSV and KPI requests of all keys together running at once (the store's share for them);
    more get 429 with Retry-After, so cheap calls (latest, sites) of other tenants keep their answer times."""
    api_max_query_cost: int = Field(50_000_000, ge=1000)
    """Largest series or KPI request, in device-windows: devices x (range / window), a minute being the window
    of `agg=delta` and of the KPIs (the store differences or averages minutes first). 400 days of one device's
    minutes cost 576,000. Above it, 422 naming what to narrow."""
    api_max_series_points: int = Field(200_000, ge=1000)
    """Most points one series request (JSON or CSV) may return: devices x windows. Above it, 422 naming what to
    narrow (a longer `every`, one device, or group_by=site)."""

    # --- ingest
    ingest_client_id: str = "smartpark-ingest"
    """MQTT client id of the ingest, fixed (its session survives restarts), one per instance, `smartpark-...`."""
    ingest_mqtt_client: Literal["session", "paho"] = "session"
    """MQTT 5 client of the ingest: `session` (thin layer on the mqtt5 codec, the fast one) or `paho`.
    MQTT 3.1.1 (the embedded broker, SMARTPARK_MQTT_V5=false) always uses paho."""
    ingest_shared: str = ""
    """Empty: a plain subscription. `1` or a group name: an MQTT 5 shared subscription ($share/<group>/...)."""
    ingest_max_packet_bytes: int = Field(128 * 1024, ge=4096, le=256 * 1024 * 1024)
    """MQTT 5 Maximum Packet Size the ingest announces in CONNECT: the broker never sends it a bigger packet (it
    drops it). Twice the contract's 64 KiB, so a moderately oversized message still arrives and is counted and
    dead-lettered as too_large; Mosquitto's message_size_limit refuses bigger ones at the publisher."""
    ingest_batch_size: int = Field(5000, ge=1, le=100_000)
    """Points per store write."""
    ingest_batch_age_s: float = Field(1.0, gt=0, le=60)
    """A batch is written at the latest this long after its first reading arrived."""
    ingest_batch_quiet_s: float = Field(0.05, ge=0, le=60)
    """A batch is also written once no message came for this long: the end of a burst is stored at once
    instead of after SMARTPARK_INGEST_BATCH_AGE_S. A stream of more than ~20 messages a second park-wide never
    pauses that long and still fills its batches; a sparse one writes more, smaller batches (at most 1 / this
    many a second). 0: size and age only."""
    ingest_metrics_port: int = Field(9108, ge=0, le=65535)
    """Port of the standalone ingest's Prometheus /metrics endpoint (0: off). Inside `smartpark up`, see the API."""
    rollup_repair_interval_s: float = Field(60.0, ge=0)
    """How often the ingest recomputes the InfluxDB rollup windows (`rp_1m`, `rp_1h`) that received late points
    (0: never). One cheap query when nothing is late."""
    ingest_metrics_host: str = "127.0.0.1"
    """Address the standalone ingest's /metrics listens on: loopback unless set (e.g. 0.0.0.0 for a Prometheus on
    another host; the endpoint has no authentication)."""
    ingest_stats_interval_s: float = Field(10.0, gt=0)
    """How often the ingest writes its own figures to the `platform` measurement."""
    spool_max_bytes: int = Field(1 << 30, ge=1 << 20)
    """Disk the ingest may use for batches the store cannot take; when full, it stops acking (the broker holds)."""
    dead_letters_max_bytes: int = Field(256 << 20, ge=1 << 20)
    """Size cap of `dead-letters.sqlite`: past it the oldest rejected messages are dropped (and counted)."""
    dead_letters_max_age_days: float = Field(30.0, gt=0)
    """Rejected messages older than this are dropped from `dead-letters.sqlite` (and counted)."""

    # --- alerts (alerts/: the engine, `smartpark alerts`, and inside `smartpark up`)
    alerts_client_id: str = "smartpark-alerts"
    """MQTT client id of the alert engine's own subscription, fixed (its session survives restarts), `smartpark-...`."""
    alerts_eval_interval_s: float = Field(10.0, gt=0, le=3600)
    """How often window, no-data, quota and greening rules are evaluated against the store."""
    alerts_no_data_s: float = Field(900.0, gt=0)
    """No message from a device for this long (by the engine's clock, so a device replaying its past is not
    silent) fires a no-data rule (a rule may set its own `after_s`)."""
    alerts_max_episodes_per_hour: int = Field(6, ge=1, le=10_000)
    """Episodes one rule may open on one device (or site) per clock hour; more are suppressed and counted (log,
    rule state, and the next episode's message), so a flapping sensor or a back-dated batch cannot flood receivers."""
    alerts_webhook_timeout_s: float = Field(10.0, gt=0, le=120)
    """Deadline of one webhook attempt in total (connect, send, answer), however slowly the receiver answers."""
    alerts_webhook_max_response_bytes: int = Field(16384, ge=0, le=1 << 20)
    """Bytes of a receiver's answer read at most (the status decides; the rest is not read)."""
    alerts_webhook_max_attempts: int = Field(10, ge=1, le=100)
    """Attempts per webhook delivery before it is marked failed."""
    alerts_webhook_backoff_s: float = Field(5.0, gt=0)
    """Delay before the first retry; doubles per attempt (with jitter) up to the maximum below."""
    alerts_webhook_backoff_max_s: float = Field(3600.0, gt=0)
    """Longest delay between two attempts (a Retry-After above it is capped to it)."""
    alerts_webhook_allow_private: bool = False
    """Allow webhook URLs resolving to private, loopback, link-local or CGNAT addresses (SSRF guard off for them)."""

    # --- HJ 212 gateway (hj212/: `smartpark hj212`, and inside `smartpark up`)
    hj212_enabled: bool = True
    """Run the HJ 212 gateway inside `smartpark up` (stack monitors' data acquisition units over TCP)."""
    hj212_host: str = "127.0.0.1"
    """Address the HJ 212 gateway listens on (0.0.0.0 for data acquisition units on the plant network)."""
    hj212_port: int = Field(9212, ge=0, le=65535)
    """TCP port of the HJ 212 gateway (0: any free port, for tests)."""
    hj212_max_connections: int = Field(10_000, ge=1)
    """Connections beyond this are closed at once and counted (`too_many_connections`)."""
    hj212_idle_timeout_s: float = Field(600.0, gt=0)
    """A connection that sends nothing for this long is closed (half-open links, dead units); units send
    minute data, so 10 minutes of silence is a dead link."""
    hj212_max_segment: int = Field(4096, ge=64, le=9999)
    """Longest data segment taken (the length field allows 9999; the common limit is 1024 [U]): bounds each
    connection's buffer. Longer frames are refused (`too_large`)."""
    hj212_split_timeout_s: float = Field(60.0, gt=0)
    """Parts of a split packet (Flag D, PNUM/PNO) that are not all in after this long are dead-lettered."""
    hj212_forward: str = ""
    """Relay every accepted raw packet to these upstream platforms (the authority's), `host:port,host:port`;
    store-and-forward: packets wait in the data dir while an upstream is down. Empty: no relay."""
    hj212_flush_quiet_s: float = Field(0.02, ge=0, le=60)
    """`smartpark hj212`: its writer writes a batch once no packet came for this long (units waiting for an
    answer send nothing more until answered), else after SMARTPARK_INGEST_BATCH_AGE_S. 0: batch age only.
    Inside `smartpark up` the gateway shares the ingest's writer, its batch age and SMARTPARK_INGEST_BATCH_QUIET_S."""
    hj212_codes_file: Path | None = None
    """An HJ 212 code table (code -> catalog metric) to use instead of the built-in one."""
    hj212_metrics_port: int = Field(9109, ge=0, le=65535)
    """Port of the standalone gateway's Prometheus /metrics endpoint (0: off). Inside `smartpark up`, see the API."""

    @field_validator("hj212_forward")
    @classmethod
    def _hj212_forward(cls, v: str) -> str:
        for target in filter(None, (t.strip() for t in v.split(","))):
            host, sep, port = target.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"SMARTPARK_HJ212_FORWARD needs host:port items, got {target!r}")
        return v

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, v: str) -> str:
        if v:
            MqttTarget(v)
        return v

    @field_validator("ingest_client_id", "alerts_client_id")
    @classmethod
    def _service_client_id(cls, v: str) -> str:
        if not is_service_id(v):
            raise ValueError(f"must begin with {SERVICE_PREFIX!r} followed by lower-case letters, digits, - or _ "
                             f"(64 characters at most; device ids cannot take that prefix), got {v!r}")
        return v

    @field_validator("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", "influx_ca_file", mode="before")
    @classmethod
    def _optional_path(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file", "influx_ca_file")
    @classmethod
    def _readable_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"{v} is not a file")
        return v

    @model_validator(mode="after")
    def _mqtt_tls(self) -> Settings:
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("SMARTPARK_MQTT_CERT_FILE and SMARTPARK_MQTT_KEY_FILE go together (mutual TLS)")
        return self

    @field_validator("influx_url")
    @classmethod
    def _influx_url(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(f"SMARTPARK_INFLUX_URL must be an http(s) URL, got {redact(v)!r}")
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
        if not self.influx_token and (self.influx_password or self.influx_admin_password) in PLACEHOLDER_SECRETS:
            raise ValueError("set SMARTPARK_INFLUX_TOKEN or a real SMARTPARK_INFLUX_PASSWORD in production")
        for name, (user, password) in self.influx_users().items():
            if user and password.lower() in PLACEHOLDER_SECRETS:
                raise ValueError(f"set a real SMARTPARK_INFLUX_{name.upper()}_PASSWORD in production")
        if not target.tls and not self.mqtt_allow_plaintext and not _loopback(target.host):
            raise ValueError(f"SMARTPARK_MQTT_URL is plain-text mqtt:// to {target.host}: use mqtts:// (TLS), or set "
                             "SMARTPARK_MQTT_ALLOW_PLAINTEXT=true for a private network")
        return self

    def influx_users(self) -> dict[str, tuple[str, str]]:
        """The per-service InfluxDB users `db init` manages: service -> (user, password); unset ones left out."""
        users = {"ingest": (self.influx_ingest_username, self.influx_ingest_password),
                 "alerts": (self.influx_alerts_username, self.influx_alerts_password),
                 "api": (self.influx_api_username, self.influx_api_password),
                 "grafana": (self.influx_grafana_username, self.influx_grafana_password)}
        return {name: pair for name, pair in users.items() if pair[0]}

    def check_session_secret(self) -> None:
        """The API's own check (only the API holds the secret): a real one in production."""
        if self.env == "production" and (self.api_session_secret in PLACEHOLDER_SECRETS
                                         or len(self.api_session_secret) < 32):
            raise ConfigError("set SMARTPARK_API_SESSION_SECRET to a real secret of 32+ characters in production")

    @cached_property
    def mqtt(self) -> MqttTarget | None:
        return MqttTarget(self.mqtt_url) if self.mqtt_url else None

    @property
    def metadata_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'meta.sqlite').resolve()}"

    @property
    def retention_ms(self) -> int:
        return self.retention_days * 86_400_000

    @property
    def window_ms(self) -> int:
        """How old a reading may be when it arrives: the store-and-forward window, within the retention."""
        return min(round(self.store_forward_days * 86_400_000), self.retention_ms)


def _loopback(host: str) -> bool:
    from smartpark.core.mqtt.endpoint import is_loopback

    return is_loopback(host)


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
        doc = [f"# {line.strip()}" for line in (field.description or "").splitlines()]  # one `#` a line: dotenv
        out += [*doc, f"SMARTPARK_{name.upper()}={default}", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(env_example(), end="")
