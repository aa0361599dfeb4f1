"""The MQTT transport's values: the endpoint from the settings, its pickling, the reconnect backoff."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from smartpark.core.errors import ConfigError
from smartpark.core.mqtt import Endpoint, TlsFiles, is_loopback
from smartpark.core.mqtt.connect import Backoff
from smartpark.core.settings import Settings


def test_endpoint_from_settings_carries_tls_only_for_mqtts(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used here")
    plain = Endpoint.from_settings(Settings(_env_file=None, mqtt_url="mqtt://u:p%40ss@h:1884", mqtt_ca_file=ca))  # type: ignore[call-arg]
    assert plain is not None
    assert (plain.host, plain.port, plain.username, plain.password, plain.tls) == ("h", 1884, "u", "p@ss", None)
    secure = Endpoint.from_settings(Settings(_env_file=None, mqtt_url="mqtts://u:p@h", mqtt_ca_file=ca))  # type: ignore[call-arg]
    assert secure is not None
    assert (secure.port, secure.tls) == (8883, TlsFiles(ca))
    assert secure.url == "mqtts://h:8883"
    assert "password" not in repr(secure)
    assert Endpoint.from_settings(Settings(_env_file=None)) is None  # type: ignore[call-arg]


def test_endpoint_pickles_for_worker_processes() -> None:
    endpoint = Endpoint("h", 8883, "dev", "pw", TlsFiles(Path("/ca.pem")))
    assert pickle.loads(pickle.dumps(endpoint)) == endpoint  # noqa: S301 (our own bytes)
    assert endpoint.login("other", "pw2") == Endpoint("h", 8883, "other", "pw2", TlsFiles(Path("/ca.pem")))


def test_a_bad_ca_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"garbage\.pem"):
        TlsFiles(bad).context()


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                                ("localhost", True), ("10.0.0.1", False), ("mosquitto", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_backoff_doubles_with_jitter_up_to_its_maximum() -> None:
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.next() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next() <= 1.0
