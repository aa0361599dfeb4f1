"""The metadata database's migrations (core/migrations) on SQLite and a real PostgreSQL.

One history, applied by `Registry.init` / `smartpark db upgrade`: a new database gets every table whatever
was imported, a database from before migrations (tables made by ``create_all``, with data) is adopted in
place, the data survive an upgrade from the first revision, and the models agree with the head (so a model
change cannot land without its migration).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from smartpark.core.errors import RegistryError
from smartpark.core.migrations import head_revision, schema_revision, upgrade_schema
from smartpark.core.registry import Registry, parse_park_file
from smartpark.schema import full_metadata, schema_diff

from factories import PARK_YAML
from servers import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
REGISTRY_TABLES = {"parks", "sites", "devices", "api_keys"}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_a_new_database_gets_every_table_and_agrees_with_the_models(db_url: str) -> None:
    """The registry alone (no alert or API module imported by the caller) creates every service's tables."""
    registry = Registry(db_url)
    registry.init()
    try:
        assert schema_revision(registry.engine) == head_revision()
        assert _tables(registry.engine) == set(full_metadata().tables)
        assert {"alert_episodes", "api_page_sessions"} <= _tables(registry.engine)
        assert schema_diff(registry.engine) == [], "models changed without a migration: smartpark db revision"
        registry.init()  # at the head: nothing to do, no error
    finally:
        registry.close()


def test_the_head_read_from_file_names_is_alembics_head() -> None:
    """A service's start compares the database with the highest numbered revision file, without Alembic."""
    from alembic.script import ScriptDirectory

    from smartpark.core.migrations import alembic_config

    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_a_service_start_at_the_head_does_not_load_alembic(tmp_path: Path) -> None:
    """Alembic, Mako and Pygments are ~10 MiB of every service's memory: loaded only when there is work."""
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    Registry(url).init()
    probe = ("import sys; from smartpark.core.registry import Registry; r = Registry(sys.argv[1]); r.init(); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako', 'pygments')))")
    done = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_check_catches_a_model_without_its_migration(engine: Engine) -> None:
    """The agreement check is no rubber stamp: a table the migrations lack shows up."""
    upgrade_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alert_seen"))
    diff = schema_diff(engine)
    assert [d[0] for d in diff] == ["add_table"]
    assert diff[0][1].name == "alert_seen"


def _seed(registry: Registry) -> str:
    registry.load_park(parse_park_file(PARK_YAML))
    return registry.create_api_key("admin", [])


# Rows in the shape of the first revision's tables, written with SQL: the models may have moved on since.
FIRST_REVISION_ROWS = [
    "INSERT INTO parks (id, name, region, timezone) VALUES ('p', 'Park', 'north', 'UTC')",
    "INSERT INTO sites (id, park_id, name, enterprise, industry, area_m2) VALUES ('s1', 'p', 'S', 'E', 'steel', 10.0)",
    "INSERT INTO devices (id, site_id, kind, source_type, mqtt_password_hash) "
    "VALUES ('d1', 's1', 'cems', 'sinter', '$7$hash'), ('d2', 's1', 'energy_meter', NULL, NULL)",
    "INSERT INTO api_keys (id, key_hash, role, sites, created_at, revoked) "
    "VALUES ('k1', 'h', 'site', '[\"s1\"]', '2026-01-01 00:00:00+00:00', false)",
]
ALERT_ROWS = [
    "INSERT INTO alert_rules (id, kind, enabled, spec, created_ms, updated_ms) "
    "VALUES ('r1', 'threshold', true, '{\"id\": \"r1\"}', 1, 2)",
]


def _first_revision_data_survives(registry: Registry) -> None:
    assert [(d.id, d.site_id, d.source_type) for d in registry.devices()] == [("d1", "s1", "sinter"),
                                                                             ("d2", "s1", None)]
    assert registry.password_hashes() == {"d1": ("s1", "$7$hash")}
    key = registry.api_key("k1")
    assert key is not None
    assert key.sites == ["s1"]


def test_upgrade_from_the_first_revision_keeps_the_data(engine: Engine, db_url: str) -> None:
    upgrade_schema(engine, "0001")
    with engine.begin() as conn:
        for statement in FIRST_REVISION_ROWS + ALERT_ROWS:
            conn.execute(text(statement))
    registry = Registry(db_url)
    registry.init()  # upgrade to the head
    try:
        assert schema_revision(engine) == head_revision()
        _first_revision_data_survives(registry)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT updated_ms FROM alert_rules WHERE id = 'r1'")).scalar_one() == 2
        assert schema_diff(engine) == []
        _seed(registry)  # and the current code writes to it
    finally:
        registry.close()


def test_a_database_from_before_migrations_is_adopted_in_place(engine: Engine, db_url: str) -> None:
    """smartpark 0.1.0 made the registry's tables with create_all (alerts' only where the engine ran), with no
    alembic_version: the first revision's tables without its bookkeeping, and without the alert tables."""
    upgrade_schema(engine, "0001")
    with engine.begin() as conn:
        for table in ("alembic_version", "alert_delivery_attempts", "alert_deliveries", "alert_webhooks",
                      "alert_seen", "alert_minutes", "alert_episodes", "alert_states", "alert_rules",
                      "api_page_sessions"):
            conn.execute(text(f"DROP TABLE {table}"))
        for statement in FIRST_REVISION_ROWS:
            conn.execute(text(statement))
    assert schema_revision(engine) is None
    assert _tables(engine) == REGISTRY_TABLES
    registry = Registry(db_url)
    registry.init()
    try:
        assert schema_revision(engine) == head_revision()
        _first_revision_data_survives(registry)
        assert _tables(engine) == set(full_metadata().tables)
        assert schema_diff(engine) == []
    finally:
        registry.close()


def test_downgrade_to_nothing_and_up_again(engine: Engine) -> None:
    from alembic import command

    from smartpark.core.migrations import alembic_config

    upgrade_schema(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert _tables(engine) == set()
    upgrade_schema(engine)
    assert schema_diff(engine) == []


def test_a_revision_from_a_newer_smartpark_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    eng = create_engine(url)
    upgrade_schema(eng)
    with eng.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(RegistryError, match=r"9999.*newest schema is " + head_revision()):
        upgrade_schema(eng)
    eng.dispose()


def test_db_upgrade_command_and_status(tmp_path: Path) -> None:
    env = {"SMARTPARK_DATA_DIR": str(tmp_path), "PATH": ""}
    cmd = [sys.executable, "-m", "smartpark", "db", "upgrade"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"at revision {head_revision()}" in done.stderr
    eng = create_engine(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    assert schema_revision(eng) == head_revision()
    eng.dispose()


def test_the_wheel_carries_the_migrations(tmp_path: Path) -> None:
    """A new subpackage and its non-Python files must be in pyproject's lists, or an install has no schema."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("smartpark-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (ROOT / "core/migrations/versions").glob("*.py")}
    assert shipped
    for name in shipped:
        assert f"smartpark/core/migrations/versions/{name}" in names
    assert {"smartpark/core/migrations/env.py", "smartpark/core/migrations/script.py.mako"} <= names




@pytest.mark.postgres
def test_services_starting_together_migrate_once(postgres: PostgresServer) -> None:
    """Every service upgrades at start: on PostgreSQL concurrent upgrades wait for each other's lock."""
    url = postgres.create_database(f"m_{uuid.uuid4().hex[:12]}")
    engines = [create_engine(url) for _ in range(4)]
    errors: list[BaseException] = []

    def upgrade(eng: Engine) -> None:
        try:
            upgrade_schema(eng)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [t for t in threads if t.is_alive()]
    assert errors == []
    assert schema_revision(engines[0]) == head_revision()
    assert schema_diff(engines[0]) == []
    for eng in engines:
        eng.dispose()
