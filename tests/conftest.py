"""Shared fixtures. Real servers (InfluxDB, Mosquitto) start once per session; helpers are in servers.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.store.base import TimeSeriesStore
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.core.store.influx import InfluxStore, quote_ident

from servers import InfluxServer, MosquittoServer, PostgresServer, start_influxd, start_mosquitto, start_postgres

# fixtures that start a real server, and the marker a test using them gets (so -m 'not influx' starts no influxd)
SERVER_FIXTURES = {"influxd": "influx", "influx_store": "influx", "own_influxd": "influx", "mosquitto": "mosquitto"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by the servers its fixtures start, parametrized backends included."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store") == "influx":
            names.add("influx_store")
        for marker in {m for f, m in SERVER_FIXTURES.items() if f in names}:
            item.add_marker(getattr(pytest.mark, marker))


MOSQUITTO_CONFIG = """
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 1000
"""


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """A throwaway influxd (Debian's 1.6) on free ports; ``.url`` is its HTTP API."""
    server = start_influxd(tmp_path_factory.mktemp("influxd"))
    yield server
    server.stop()


@pytest.fixture
def influx_store(influxd: InfluxServer) -> Iterator[InfluxStore]:
    """An initialised InfluxStore on a database of its own, dropped afterwards."""
    store = InfluxStore(influxd.url, f"t_{uuid.uuid4().hex}", default_catalog())
    try:
        store.init()
        yield store
    finally:
        store.close()
        with InfluxStore(influxd.url, store.database, default_catalog()) as admin:
            admin.query(f"DROP DATABASE {quote_ident(store.database)}", with_db=False)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A throwaway anonymous mosquitto on a free port of 127.0.0.1 (``.host``, ``.port``)."""
    server = start_mosquitto(MOSQUITTO_CONFIG, tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 cluster on a free port (``.create_database(name)`` gives a URL)."""
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty metadata database: SQLite in tmp_path, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meta.sqlite'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"m_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def embedded_store(tmp_path: Path) -> Iterator[EmbeddedStore]:
    """An initialised embedded (SQLite) store in tmp_path, where the backend is not what a test is about."""
    s = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    s.init()
    yield s
    s.close()


@pytest.fixture(params=["embedded", "influx"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TimeSeriesStore]:
    """Each time-series backend in turn, so store behaviour is written once and run against both."""
    if request.param == "influx":
        yield request.getfixturevalue("influx_store")
        return
    s = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    s.init()
    s.init()  # idempotent
    yield s
    s.close()
