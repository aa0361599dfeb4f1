"""The API's one read interface to the alert tables (alerts/access.py), on SQLite and a real PostgreSQL.

The tables exist once the app has started, whatever the database held; a database that fails under a running
app gives a 503 from the alerts routes and an "alerts unavailable" notice on the pages (the rest of the page
still shown, the failure counted), never an empty list that reads as "no active alerts".
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, text

from smartpark.alerts.access import AlertAccess
from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.reference import load_reference
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore

from factories import PARK_YAML, ServedApp, now_ms

API = Path(__file__).resolve().parent.parent / "api"
UNAVAILABLE = "smartpark_api_alerts_unavailable_total"


def serve(registry: Registry, store: EmbeddedStore, tmp_path: Path) -> ServedApp:
    return ServedApp(create_app(Settings(_env_file=None, data_dir=tmp_path), registry=registry,  # type: ignore[call-arg]
                                store=store, catalog=default_catalog()))


@contextmanager
def park_app(url: str, store: EmbeddedStore, tmp_path: Path, episodes: dict[str, str]
             ) -> Iterator[tuple[Registry, ServedApp]]:
    """The test park (sites steel and park-green) with one firing episode per ``episodes`` site, served."""
    registry = Registry(url)
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    for site, episode_id in episodes.items():
        add_episode(registry, site, episode_id)
    served = serve(registry, store, tmp_path)
    try:
        yield registry, served
    finally:
        served.close()
        registry.close()


def add_episode(registry: Registry, site: str, episode_id: str) -> None:
    from smartpark.alerts.models import Episode

    with registry.session() as s:
        s.add(Episode(id=episode_id, rule_id="r", subject=site, open_key=f"r|{site}", site=site,
                      severity="critical", state="firing", started_ms=now_ms(), message=f"alarm at {site}"))


@contextmanager
def started_access(tmp_path: Path) -> Iterator[tuple[Registry, AlertAccess]]:
    """A fresh registry database and the API's alert interface started on it (its tables brought to the head)."""
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    access = AlertAccess(registry.engine, settings)
    access.start(load_reference(settings.reference_file))
    try:
        yield registry, access
    finally:
        registry.close()


def log_in(client: httpx.Client, key: str) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": str(client.base_url).rstrip("/")}
    assert client.post("/login", content=f"api_key={key}", headers=headers).status_code == 303


def unavailable_count() -> float:
    return REGISTRY.get_sample_value(UNAVAILABLE) or 0.0


def test_the_app_makes_the_tables_at_start_up(db_url: str, embedded_store: EmbeddedStore, tmp_path: Path) -> None:
    """A database nothing has set up: after start-up the alert routes answer (the old API met a missing table at
    its first alerts request: a 500) and the default rules are there."""
    registry = Registry(db_url)  # no init: the app's start-up must bring the schema
    served = serve(registry, embedded_store, tmp_path)
    try:
        key = registry.create_api_key("admin", [])
        auth = {"Authorization": f"Bearer {key}"}
        episodes = served.client.get("/v1/alerts/episodes", headers=auth)
        assert episodes.status_code == 200, episodes.text
        assert episodes.json()["total"] == 0
        rules = served.client.get("/v1/alerts/rules", headers=auth).json()
        assert any(r["kind"] == "threshold" for r in rules)
    finally:
        served.close()
        registry.close()


def test_a_broken_alert_table_is_a_503_and_a_notice_not_an_empty_list(db_url: str, embedded_store: EmbeddedStore,
                                                                      tmp_path: Path) -> None:
    with park_app(db_url, embedded_store, tmp_path, {"steel": "ep-steel"}) as (registry, served):
        key = registry.create_api_key("admin", [])
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=served.base_url) as browser:
            log_in(browser, key)
            page = browser.get("/").text
            assert "alarm at steel" in page
            assert 'data-alerts="unavailable"' not in page
            with registry.engine.begin() as conn:
                conn.execute(text("DROP TABLE alert_episodes"))
            before = unavailable_count()
            page = browser.get("/").text
            assert 'data-alerts="unavailable"' in page
            assert "No active alerts." not in page
            assert "0</strong> active alerts" not in page
            assert 'id="site-steel"' in page
            assert 'id="site-park-green"' in page
            site = browser.get("/sites/steel")
            assert site.status_code == 200
            assert 'data-alerts="unavailable"' in site.text
            assert "No active alerts." not in site.text
        resp = served.client.get("/v1/alerts/episodes", headers=auth)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "alerts_unavailable"
        assert resp.headers["Retry-After"] == "5"
        assert served.client.get("/v1/alerts/episodes/ep-steel", headers=auth).status_code == 503
        assert served.client.get("/v1/alerts/webhooks", headers=auth).status_code == 200  # other tables: fine
        assert unavailable_count() == before + 4


def test_a_site_key_still_sees_only_its_sites_alerts(tmp_path: Path, embedded_store: EmbeddedStore) -> None:
    url = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    with park_app(url, embedded_store, tmp_path, {"steel": "ep-steel", "park-green": "ep-green"}) as (registry, served):
        key = registry.create_api_key("site", ["steel"])
        with httpx.Client(base_url=served.base_url) as browser:
            log_in(browser, key)
            page = browser.get("/").text
            assert "alarm at steel" in page
            assert "alarm at park-green" not in page
        listed = served.client.get("/v1/alerts/episodes", headers={"Authorization": f"Bearer {key}"}).json()
        assert [e["id"] for e in listed["items"]] == ["ep-steel"]


def test_records_are_plain_frozen_data(tmp_path: Path) -> None:
    with started_access(tmp_path) as (registry, access):
        add_episode(registry, "steel", "ep-steel")
        [record] = access.active({"steel"})
        assert (record.id, record.site, record.state, record.message) == ("ep-steel", "steel", "firing",
                                                                          "alarm at steel")
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.state = "resolved"  # type: ignore[misc]
        assert access.active(set()) == []


def test_the_pages_active_alerts_cost_one_query(tmp_path: Path) -> None:
    """Every page view (and its auto-refresh) reads the active alerts: one SELECT, no count of them beside it."""
    statements: list[str] = []
    with started_access(tmp_path) as (registry, access):
        add_episode(registry, "steel", "ep-steel")
        listen = lambda conn, cursor, sql, *rest: statements.append(sql)  # noqa: E731
        event.listen(registry.engine, "before_cursor_execute", listen)
        try:
            assert [r.id for r in access.active({"steel", "park-green"})] == ["ep-steel"]
        finally:
            event.remove(registry.engine, "before_cursor_execute", listen)
    assert len(statements) == 1, statements


def test_the_api_reads_alerts_only_through_the_access_interface() -> None:
    """No ORM rows, no repository, no SQL on the alert tables in the API: alerts/access.py is the one way in."""
    allowed = {"smartpark.alerts.access", "smartpark.alerts.errors"}
    for path in API.rglob("*.py"):
        source = path.read_text()
        assert "alert_episodes" not in source, path
        assert "alert_webhooks" not in source, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("smartpark.alerts"):
                assert node.module in allowed, f"{path.name} imports {node.module}"


def test_subscription_edits_go_through_the_interface(tmp_path: Path) -> None:
    """The admin's edits: a refused URL or secret is a typed error, re-enabling clears the 410's reason."""
    from smartpark.alerts.errors import BadSecret, UnsafeDestination
    from smartpark.alerts.repo import AlertRepo

    with started_access(tmp_path) as (registry, access):
        with pytest.raises(BadSecret):
            access.create_subscription("https://93.184.215.14/hook", secret="whsec_short", sites=[], severities=[],
                                       rules=[], description="")
        sub, secret = access.create_subscription("https://93.184.215.14/hook", secret=None, sites=["steel"],
                                                 severities=[], rules=[], description="dispatch")
        assert secret.startswith("whsec_")
        assert (sub.sites, sub.enabled) == (("steel",), True)
        AlertRepo(registry.engine).update_subscription(sub.id, enabled=False, disabled_reason="410 Gone")
        with pytest.raises(UnsafeDestination):
            access.update_subscription(sub.id, url="http://169.254.169.254/latest")
        again = access.update_subscription(sub.id, enabled=True)
        assert again is not None
        assert (again.enabled, again.disabled_reason, again.url) == (True, "", "https://93.184.215.14/hook")
        assert access.update_subscription("wh_nope", enabled=True) is None


def test_the_api_and_the_engine_seeding_a_new_database_together_both_start(tmp_path: Path) -> None:
    """Both seed the default rules at start-up (compose starts them together): the one that commits second
    found the rows taken (IntegrityError) and its start-up failed, 19 times in 20."""
    import threading

    from smartpark.alerts.repo import AlertRepo
    from smartpark.alerts.rules import default_rules
    from smartpark.core.reference import default_reference

    rules = list(default_rules(default_reference()))
    for trial in range(8):
        url = f"sqlite:///{tmp_path / f'meta-{trial}.sqlite'}"
        Registry(url).init()
        registries = [Registry(url) for _ in range(2)]
        gate = threading.Barrier(2)
        errors: list[Exception] = []

        def start(registry: Registry, gate: threading.Barrier, errors: list[Exception]) -> None:
            repo = AlertRepo(registry.engine)
            gate.wait()
            try:
                repo.init(rules)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(r, gate, errors)) for r in registries]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(r.id for r in AlertRepo(registries[0].engine).rules()) == sorted(r.id for r in rules)
        for r in registries:
            r.close()
