"""InfluxDB over https: verified against SMARTPARK_INFLUX_CA_FILE (or the system CAs), never unverified."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.clock import now_ms
from smartpark.core.errors import StoreUnavailable
from smartpark.core.points import Point
from smartpark.core.settings import Settings
from smartpark.core.store import open_store
from smartpark.core.store.influx import InfluxStore

from servers import InfluxServer, TestPki, start_influxd

pytestmark = pytest.mark.influx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    pytest.importorskip("trustme")
    return TestPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https_influxd(pki: TestPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = start_influxd(tmp_path_factory.mktemp("influxd-https"), https=(pki.server_cert, pki.server_key,
                                                                          pki.ca_file))
    yield server
    server.stop()


def test_https_influxdb_with_the_ca_setting(https_influxd: InfluxServer, pki: TestPki) -> None:
    assert https_influxd.url.startswith("https://")
    settings = Settings(_env_file=None, influx_url=https_influxd.url, influx_ca_file=pki.ca_file)  # type: ignore[call-arg]
    store = open_store(settings, default_catalog())
    try:
        store.ping()
        assert store.server_version()  # type: ignore[attr-defined]
        store.init()
        ts = now_ms()
        store.write([Point("energy", "s", "d", ts, {"power_kw": 2.5})])  # the write path's own connections
        assert [(v.ts_ms, v.value) for v in store.latest("s")] == [(ts, 2.5)]
    finally:
        store.close()


def test_https_influxdb_is_verified(https_influxd: InfluxServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Without the park's CA (system CAs) or with another CA, the certificate is refused: no unverified fallback."""
    other_ca = TestPki(tmp_path_factory.mktemp("other-pki")).ca_file
    for ca_file in (None, other_ca):
        with InfluxStore(https_influxd.url, "smartpark", default_catalog(), ca_file=ca_file) as store, \
                pytest.raises(StoreUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            store.ping()
        with InfluxStore(https_influxd.url, "smartpark", default_catalog(), ca_file=ca_file) as store, \
                pytest.raises(StoreUnavailable, match=r"/write: TLS verification failed.*CERTIFICATE_VERIFY_FAILED"):
            store.write([Point("energy", "s", "d", 1, {"power_kw": 2.5})])
