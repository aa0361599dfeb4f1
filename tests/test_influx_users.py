"""Least privilege on a real InfluxDB 1.x with authentication on: `smartpark db init` (as the admin) creates
one user per service with only what that service needs, and each service's user can do exactly that."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smartpark.core.settings import Settings
from smartpark.platform import INFLUX_PRIVILEGES, init_databases

from servers import InfluxServer, start_influxd

pytestmark = pytest.mark.influx


@pytest.fixture(scope="module")
def secured_influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    server = start_influxd(tmp_path_factory.mktemp("influxd-auth"), admin=("admin", secrets.token_urlsafe(16)))
    yield server
    server.stop()


def _settings(server: InfluxServer, tmp_path: Path, db: str, passwords: dict[str, str]) -> Settings:
    assert server.admin is not None
    users = {f"influx_{name}_username": f"sp-{name}-{db}" for name in passwords}
    users |= {f"influx_{name}_password": pw for name, pw in passwords.items()}
    return Settings(_env_file=None, influx_url=server.url, influx_db=db, data_dir=tmp_path,  # type: ignore[call-arg]
                    influx_admin_username=server.admin[0], influx_admin_password=server.admin[1], **users)


def _write(server: InfluxServer, db: str, auth: tuple[str, str]) -> int:
    return httpx.post(f"{server.url}/write", params={"db": db}, content=b"energy,site=s,device=d power_kw=1",
                      auth=auth).status_code


def _read(server: InfluxServer, db: str, auth: tuple[str, str]) -> str:
    resp = httpx.post(f"{server.url}/query", data={"db": db, "q": 'SELECT * FROM "energy"'}, auth=auth)
    return resp.text if resp.status_code == 200 else f"HTTP {resp.status_code}"


def test_db_init_creates_one_user_per_service_with_only_its_rights(secured_influxd: InfluxServer,
                                                                   tmp_path: Path) -> None:
    db = f"t_{secrets.token_hex(4)}"
    passwords = {name: secrets.token_urlsafe(12) for name in INFLUX_PRIVILEGES}
    settings = _settings(secured_influxd, tmp_path, db, passwords)
    done = init_databases(settings)
    assert len(done) == 4
    login = {name: (f"sp-{name}-{db}", pw) for name, pw in passwords.items()}
    assert _write(secured_influxd, db, login["ingest"]) == 204
    assert _write(secured_influxd, db, login["alerts"]) == 204
    assert _write(secured_influxd, db, login["api"]) == 403  # the internet-facing API cannot write
    assert _write(secured_influxd, db, login["grafana"]) == 403
    for reader in ("api", "grafana", "alerts", "ingest"):  # the ingest audits rewrites and repairs rollups
        assert "power_kw" in _read(secured_influxd, db, login[reader]), reader
    assert _write(secured_influxd, db, ("nobody", "x")) == 401


def test_init_again_rotates_passwords_and_removes_admin_rights(secured_influxd: InfluxServer, tmp_path: Path) -> None:
    db = f"t_{secrets.token_hex(4)}"
    assert secured_influxd.admin is not None
    admin = secured_influxd.admin
    user = f"sp-api-{db}"
    # an operator made the API's user an admin by hand: init puts it back to READ
    httpx.post(f"{secured_influxd.url}/query", auth=admin,
               data={"q": f"CREATE USER \"{user}\" WITH PASSWORD 'old-one' WITH ALL PRIVILEGES"}).raise_for_status()
    new = secrets.token_urlsafe(12)
    init_databases(_settings(secured_influxd, tmp_path, db, {"api": new}))
    assert _write(secured_influxd, db, (user, "old-one")) == 401
    assert _write(secured_influxd, db, (user, new)) == 403
    rows = httpx.post(f"{secured_influxd.url}/query", auth=admin, data={"q": "SHOW USERS"}).json()
    assert [user, False] in rows["results"][0]["series"][0]["values"]


def test_a_failing_user_statement_never_echoes_the_password(secured_influxd: InfluxServer, tmp_path: Path) -> None:
    from smartpark.core.catalog import default_catalog
    from smartpark.core.errors import StoreRejected
    from smartpark.core.store.influx import InfluxStore

    assert secured_influxd.admin is not None
    password = "p4ss-" + secrets.token_hex(6)
    u, p = secured_influxd.admin
    with InfluxStore(secured_influxd.url, "no_such_db_" + secrets.token_hex(3), default_catalog(), username=u,
                     password=p) as store, pytest.raises(StoreRejected) as caught:
        store.ensure_user("x-" + secrets.token_hex(3), password, "READ")  # GRANT on a missing database fails
    assert password not in str(caught.value)
