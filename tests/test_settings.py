"""Settings: one validated object; `.env.example` documents every setting with its default."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartpark.core.errors import ConfigError
from smartpark.core.settings import Settings, env_example, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_is_current() -> None:
    assert (ROOT / ".env.example").read_text() == env_example(), "run: python -m smartpark.core.settings > .env.example"


def test_every_setting_is_documented() -> None:
    assert all(f.description for f in Settings.model_fields.values())


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMARTPARK_MQTT_URL", "mqtt://dev%40ice:p%3Ass@broker.example:1884")
    monkeypatch.setenv("SMARTPARK_DATA_DIR", str(tmp_path))
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.mqtt is not None
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.username, s.mqtt.password) == ("broker.example", 1884, "dev@ice", "p:ss")
    assert s.metadata_url == f"sqlite:///{tmp_path.resolve() / 'meta.sqlite'}"


@pytest.mark.parametrize(("var", "value", "message"), [
    ("SMARTPARK_MQTT_URL", "http://broker", "SMARTPARK_MQTT_URL must look like"),
    ("SMARTPARK_INFLUX_URL", "influx:8086", r"must be an http\(s\) URL"),
    ("SMARTPARK_API_PORT", "70000", "SMARTPARK_API_PORT: Input should be less than or equal to 65535"),
    ("SMARTPARK_INGEST_BATCH_SIZE", "0", "SMARTPARK_INGEST_BATCH_SIZE: Input should be greater"),
    ("SMARTPARK_INGEST_CLIENT_ID", "ingest-2", "SMARTPARK_INGEST_CLIENT_ID: must begin with 'smartpark-'"),
    ("SMARTPARK_ALERTS_CLIENT_ID", "steel-meter", "SMARTPARK_ALERTS_CLIENT_ID: must begin with 'smartpark-'"),
    ("SMARTPARK_INGEST_CLIENT_ID", "smartpark-", "SMARTPARK_INGEST_CLIENT_ID: must begin with 'smartpark-'"),
])
def test_bad_values_are_config_errors(monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message):
        load_settings(_env_file=None)


def test_production_refuses_placeholders_and_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPARK_ENV", "production")
    with pytest.raises(ConfigError, match="needs SMARTPARK_MQTT_URL"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SMARTPARK_MQTT_URL", "mqtt://ingest:changeme@mosquitto:1883")
    monkeypatch.setenv("SMARTPARK_INFLUX_URL", "http://influxdb:8086")
    with pytest.raises(ConfigError, match="placeholder password"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SMARTPARK_MQTT_URL", "mqtt://ingest:Xk3-long-secret@mosquitto:1883")
    with pytest.raises(ConfigError, match="SMARTPARK_INFLUX_TOKEN"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SMARTPARK_INFLUX_TOKEN", "a-real-token")
    with pytest.raises(ConfigError, match="SMARTPARK_API_SESSION_SECRET"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SMARTPARK_API_SESSION_SECRET", "changeme")
    with pytest.raises(ConfigError, match="SMARTPARK_API_SESSION_SECRET"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SMARTPARK_API_SESSION_SECRET", "k" * 40)
    assert load_settings(_env_file=None).env == "production"


@pytest.mark.parametrize("token", ["changeme", "CHANGEME", "password", "secret", " admin ", "admin:changeme"])
def test_production_refuses_a_placeholder_influx_token(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    monkeypatch.setenv("SMARTPARK_ENV", "production")
    monkeypatch.setenv("SMARTPARK_MQTT_URL", "mqtt://ingest:Xk3-long-secret@mosquitto:1883")
    monkeypatch.setenv("SMARTPARK_INFLUX_URL", "http://influxdb:8086")
    monkeypatch.setenv("SMARTPARK_API_SESSION_SECRET", "k" * 40)
    monkeypatch.setenv("SMARTPARK_INFLUX_TOKEN", token)
    with pytest.raises(ConfigError, match="SMARTPARK_INFLUX_TOKEN is a placeholder"):
        load_settings(_env_file=None)
    monkeypatch.setenv("SMARTPARK_INFLUX_TOKEN", "smartpark:Xk3-long-secret")
    assert load_settings(_env_file=None).influx_token == "smartpark:Xk3-long-secret"


@pytest.mark.parametrize("url", ["http://dev@ice:s3cret@broker:1883", "ftp://user:pa@ss-w0rd@influx:8086"])
def test_a_refused_url_is_shown_without_any_of_its_credentials(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """User info may hold a raw '@' (the URL parsers split at the last one): none of it may reach a message."""
    var = "SMARTPARK_MQTT_URL" if url.startswith("http:") else "SMARTPARK_INFLUX_URL"
    monkeypatch.setenv(var, url)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    assert "s3cret" not in str(refused.value)
    assert "ss-w0rd" not in str(refused.value)
    assert "***@" in str(refused.value)
