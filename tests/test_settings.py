"""Settings: one validated object; `.env.example` documents every setting with its default."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartpark.core.errors import ConfigError
from smartpark.core.settings import Settings, env_example, load_settings

ROOT = Path(__file__).resolve().parent.parent


def _setenv(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Sets SMARTPARK_<NAME> for each keyword: the production cases build their environment up step by step."""
    for name, value in values.items():
        monkeypatch.setenv(f"SMARTPARK_{name.upper()}", value)


def _refused(message: str) -> None:
    """Loading the settings from the environment as it stands is a ConfigError matching ``message``."""
    with pytest.raises(ConfigError, match=message):
        load_settings(_env_file=None)


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
    _refused(message)


def test_production_refuses_placeholders_and_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    _setenv(monkeypatch, env="production")
    _refused("needs SMARTPARK_MQTT_URL")
    _setenv(monkeypatch, mqtt_url="mqtt://ingest:changeme@mosquitto:1883", influx_url="http://influxdb:8086")
    _refused("placeholder password")
    _setenv(monkeypatch, mqtt_url="mqtts://ingest:Xk3-long-secret@mosquitto:8883")
    _refused("SMARTPARK_INFLUX_TOKEN")
    _setenv(monkeypatch, influx_token="a-real-token")
    assert load_settings(_env_file=None).env == "production"  # a service without the API needs no session secret
    with pytest.raises(ConfigError, match="SMARTPARK_API_SESSION_SECRET"):
        load_settings(_env_file=None).check_session_secret()
    _setenv(monkeypatch, api_session_secret="changeme")
    with pytest.raises(ConfigError, match="SMARTPARK_API_SESSION_SECRET"):
        load_settings(_env_file=None).check_session_secret()
    _setenv(monkeypatch, api_session_secret="k" * 40)
    load_settings(_env_file=None).check_session_secret()
    _setenv(monkeypatch, mqtt_url="mqtt://ingest:Xk3-long-secret@mosquitto:1883")
    _refused("plain-text mqtt:// to mosquitto")
    _setenv(monkeypatch, mqtt_allow_plaintext="true")
    assert load_settings(_env_file=None).env == "production"


def test_the_api_refuses_a_missing_session_secret_in_production(tmp_path: Path) -> None:
    from smartpark.api.app import create_app
    from smartpark.core.catalog import default_catalog
    from smartpark.core.registry import Registry
    from smartpark.core.store.embedded import EmbeddedStore

    settings = Settings(_env_file=None, env="production", mqtt_url="mqtts://i:Xk3-long-secret@m:8883",  # type: ignore[call-arg]
                        influx_url="http://i:8086", influx_password="Xk3-long-secret", data_dir=tmp_path)
    registry, store = Registry(settings.metadata_url), EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    with pytest.raises(ConfigError, match="SMARTPARK_API_SESSION_SECRET"):
        create_app(settings, registry=registry, store=store, catalog=default_catalog())
    registry.close()
    store.close()


def test_production_refuses_a_placeholder_service_password(monkeypatch: pytest.MonkeyPatch) -> None:
    _setenv(monkeypatch, env="production", mqtt_url="mqtts://ingest:Xk3-long-secret@mosquitto:8883",
            influx_url="http://influxdb:8086", influx_admin_username="admin", influx_admin_password="Xk3-long-secret")
    assert load_settings(_env_file=None).influx_users() == {}  # db init with the admin alone
    _setenv(monkeypatch, influx_api_username="smartpark-api")
    _refused("SMARTPARK_INFLUX_API_PASSWORD")
    _setenv(monkeypatch, influx_api_password="Changeme")
    _refused("SMARTPARK_INFLUX_API_PASSWORD")
    _setenv(monkeypatch, influx_api_password="Xk3-other-secret")
    assert load_settings(_env_file=None).influx_users() == {"api": ("smartpark-api", "Xk3-other-secret")}


@pytest.mark.parametrize(("url", "allowed"), [
    ("mqtt://ingest:Xk3-long-secret@broker.example:1883", False),
    ("mqtt://ingest:Xk3-long-secret@10.0.0.5:1883", False),
    ("mqtt://ingest:Xk3-long-secret@127.0.0.1:1883", True),
    ("mqtt://ingest:Xk3-long-secret@localhost:1883", True),
    ("mqtt://ingest:Xk3-long-secret@[::1]:1883", True),
    ("mqtts://ingest:Xk3-long-secret@broker.example:8883", True),
])
def test_production_refuses_plain_text_mqtt_beyond_loopback(monkeypatch: pytest.MonkeyPatch, url: str,
                                                            allowed: bool) -> None:
    """The password of an mqtt:// URL crosses the network readable: production needs mqtts:// or a stated opt-in."""
    _setenv(monkeypatch, env="production", mqtt_url=url, influx_url="http://influxdb:8086",
            influx_token="a-real-token", api_session_secret="k" * 40)
    if allowed:
        assert load_settings(_env_file=None).mqtt_url == url
    else:
        _refused(r"plain-text mqtt://.*SMARTPARK_MQTT_ALLOW_PLAINTEXT")
        _setenv(monkeypatch, mqtt_allow_plaintext="true")
        assert load_settings(_env_file=None).mqtt_url == url


def test_tls_files_are_checked_before_any_io(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMARTPARK_MQTT_CA_FILE", str(tmp_path / "missing.pem"))
    _refused(r"SMARTPARK_MQTT_CA_FILE: .*missing.pem is not a file")
    monkeypatch.delenv("SMARTPARK_MQTT_CA_FILE")
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    monkeypatch.setenv("SMARTPARK_MQTT_CERT_FILE", str(cert))
    _refused("SMARTPARK_MQTT_CERT_FILE and SMARTPARK_MQTT_KEY_FILE go together")


@pytest.mark.parametrize("token", ["changeme", "CHANGEME", "password", "secret", " admin ", "admin:changeme"])
def test_production_refuses_a_placeholder_influx_token(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    _setenv(monkeypatch, env="production", mqtt_url="mqtt://ingest:Xk3-long-secret@mosquitto:1883",
            influx_url="http://influxdb:8086", api_session_secret="k" * 40, mqtt_allow_plaintext="true",
            influx_token=token)
    _refused("SMARTPARK_INFLUX_TOKEN is a placeholder")
    _setenv(monkeypatch, influx_token="smartpark:Xk3-long-secret")
    assert load_settings(_env_file=None).influx_token == "smartpark:Xk3-long-secret"


def test_env_example_is_a_valid_dotenv_file(caplog: pytest.LogCaptureFixture) -> None:
    """python-dotenv (which pydantic-settings uses for `.env`) reads every line: no warning, every setting."""
    from dotenv import dotenv_values

    with caplog.at_level("WARNING", logger="dotenv"):
        values = dotenv_values(ROOT / ".env.example")
    assert [r.getMessage() for r in caplog.records] == []
    assert set(values) == {f"SMARTPARK_{name.upper()}" for name in Settings.model_fields}


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
