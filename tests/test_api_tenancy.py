"""Tenancy matrix over every route of the app (enumerated, so a new endpoint cannot escape it), key management,
registry edits and device provisioning through the API, series as CSV."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.registry.secrets import verify_password
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore

from factories import PARK_YAML, ServedApp, now_ms

OWN, OTHER = "steel", "park-green"
IDS = {"site": {OWN: OWN, OTHER: OTHER}, "device": {OWN: "steel-meter", OTHER: "green-1"},
       "episode_id": {OWN: "ep-steel", OTHER: "ep-green"}, "month": {OWN: "2025-12", OTHER: "2025-12"}}
ADMIN_ONLY = ("/v1/keys", "/v1/alerts/rules", "/v1/alerts/webhooks", "/v1/audit", "/v1/screening")  # park-wide: 403
PUBLIC = {"/healthz", "/readyz", "/metrics"}  # health: no key
PAGE = {"/", "/login", "/logout", "/sites/{site_id}"}  # own login (test_overview_page.py, test_office_pages.py)
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/sites"): {"id": "new-site", "name": "N", "enterprise": "E", "industry": "steel", "area_m2": 10},
    ("PATCH", "/v1/sites/{site}"): {"name": "Renamed"},
    ("POST", "/v1/sites/{site}/devices"): {"id": "new-device", "kind": "cems", "source_type": "sinter"},
    ("PATCH", "/v1/devices/{device}"): {"source_type": "sinter"},
    ("POST", "/v1/keys"): {"role": "site", "sites": [OWN]},
}
# routes without a site or device id: what a site key gets
UNSCOPED = {("GET", "/v1/sites"): 200, ("POST", "/v1/sites"): 403, ("GET", "/v1/kpis"): 200,
            ("GET", "/v1/kpis/daily"): 200}
# a `site` query parameter instead of a path id
QUERY_SCOPED = {"/v1/series": {"metric": "energy_kwh"}, "/v1/alerts/episodes": {}, "/v1/data-quality": {},
                "/v1/reports/{month}": {}}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[FastAPI, httpx.Client, Registry]]:
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    store.write([Point("energy", s, d, now_ms() - 60_000, {"power_kw": 1.0, "energy_kwh": 5.0})
                 for s, d in (("steel", "steel-meter"), ("park-green", "green-1"))])
    add_episodes(registry)
    app = create_app(Settings(_env_file=None, data_dir=tmp_path), registry=registry, store=store,  # type: ignore[call-arg]
                     catalog=default_catalog())
    served = ServedApp(app)
    yield app, served.client, registry
    served.close()
    store.close()
    registry.close()


def add_episodes(registry: Registry) -> None:
    """One firing episode per site, written where the alert engine writes them."""
    from smartpark.alerts.models import Episode

    with registry.session() as s:
        for site, ep in IDS["episode_id"].items():
            s.add(Episode(id=ep, rule_id="r", subject=site, open_key=f"r|{site}", site=site, severity="warning",
                          state="firing", started_ms=now_ms()))


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, included routers flattened (FastAPI's own docs routes aside)."""
    out = sorted((m, rc.path_format) for rc in iter_route_contexts(app.routes)
                 if isinstance(rc.original_route, APIRoute) for m in rc.methods or ())
    assert len(out) >= 20, out  # the enumeration itself must not come back empty
    return out


def call(client: httpx.Client, method: str, path: str, who: str, key: str | None) -> httpx.Response:
    params = dict.fromkeys(re.findall(r"{(\w+)}", path), "")
    for name in params:
        params[name] = IDS[name][who] if name in IDS else "x"
    query = {**QUERY_SCOPED[path], "site": IDS["site"][who]} if path in QUERY_SCOPED else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.request(method, path.format(**params), params=query, headers=headers,
                          json=BODIES.get((method, path)))


def test_every_route_is_classified(env: tuple[FastAPI, httpx.Client, Registry]) -> None:
    app, _, _ = env
    for method, path in routes(app):
        ids = set(re.findall(r"{(\w+)}", path))
        known = (path in PUBLIC | PAGE | set(QUERY_SCOPED) or (method, path) in UNSCOPED
                 or path.startswith(ADMIN_ONLY) or (ids and ids <= set(IDS)))
        assert known, f"{method} {path}: add it to the tenancy matrix (which site does it belong to?)"


def test_unauthenticated_is_401_except_health(env: tuple[FastAPI, httpx.Client, Registry]) -> None:
    app, client, _ = env
    for method, path in routes(app):
        if path in PAGE:
            continue
        resp = call(client, method, path, OWN, None)
        if path in PUBLIC:
            assert resp.status_code in (200, 503), path
        else:
            assert resp.status_code == 401, f"{method} {path}: {resp.status_code}"
            assert resp.json()["error"]["code"] == "unauthorized"


def test_site_key_gets_404_for_other_sites_and_lists_only_its_own(env: tuple[FastAPI, httpx.Client, Registry]
                                                                   ) -> None:
    app, client, registry = env
    key = registry.create_api_key("site", [OWN])
    checked = 0
    for method, path in routes(app):
        if path in PUBLIC | PAGE:
            continue
        if (method, path) in UNSCOPED or path.startswith(ADMIN_ONLY):
            expected = UNSCOPED.get((method, path), 403)
            assert call(client, method, path, OWN, key).status_code == expected, f"{method} {path}"
            continue
        other = call(client, method, path, OTHER, key)
        assert other.status_code == 404, f"{method} {path}: {other.status_code} {other.text}"
        assert other.json()["error"]["code"] == "not_found"
        own = call(client, method, path, OWN, key)
        assert own.status_code in ((200,) if method == "GET" else (403,)), f"{method} {path}: {own.text}"
        checked += 1
    assert checked >= 14
    episodes = client.get("/v1/alerts/episodes", headers={"Authorization": f"Bearer {key}"}).json()["items"]
    assert [e["site"] for e in episodes] == [OWN]
    auth = {"Authorization": f"Bearer {key}"}
    assert [s["id"] for s in client.get("/v1/sites", headers=auth).json()["items"]] == [OWN]
    assert [s["site"] for s in client.get("/v1/kpis", headers=auth).json()["sites"]] == [OWN]
    assert client.get("/v1/sites/does-not-exist", headers=auth).status_code == 404


def test_admin_manages_keys_sites_and_devices(env: tuple[FastAPI, httpx.Client, Registry]) -> None:
    _, client, registry = env
    client.headers["Authorization"] = f"Bearer {registry.create_api_key('admin', [])}"
    created = client.post("/v1/keys", json={"role": "site", "sites": [OTHER]})
    assert created.status_code == 201
    key = created.json()["key"]
    listed = client.get("/v1/keys").json()
    assert created.json()["id"] in [k["id"] for k in listed["items"]]
    assert all("key" not in k for k in listed["items"])  # the secret is shown once only
    as_site = {"Authorization": f"Bearer {key}"}
    assert client.get(f"/v1/sites/{OTHER}", headers=as_site).status_code == 200
    assert client.delete(f"/v1/keys/{created.json()['id']}").status_code == 204
    assert client.get(f"/v1/sites/{OTHER}", headers=as_site).status_code == 401
    assert client.post("/v1/keys", json={"role": "site", "sites": []}).status_code == 422

    site = client.post("/v1/sites", json=BODIES["POST", "/v1/sites"])
    assert site.status_code == 201
    assert client.post("/v1/sites", json=BODIES["POST", "/v1/sites"]).status_code == 409
    assert client.patch("/v1/sites/new-site", json={"area_m2": 20}).json()["area_m2"] == 20
    device = client.post("/v1/sites/new-site/devices", json={"id": "new-meter", "kind": "energy_meter"}).json()
    assert device["topic"] == "smartpark/v1/new-site/new-meter/telemetry"
    assert verify_password(device["mqtt_password"], registry.password_hashes()["new-meter"][1])
    rotated = client.post("/v1/devices/new-meter/credentials").json()["mqtt_password"]
    assert rotated != device["mqtt_password"]
    assert client.get("/v1/devices/new-meter").json()["site_id"] == "new-site"
    assert "mqtt_password" not in client.get("/v1/devices/new-meter").json()
    assert client.delete("/v1/devices/new-meter").status_code == 204
    assert client.get("/v1/devices/new-meter").status_code == 404
    assert client.delete("/v1/sites/new-site").status_code == 204
    assert client.get("/v1/sites/new-site").status_code == 404


def test_series_as_csv(env: tuple[FastAPI, httpx.Client, Registry]) -> None:
    _, client, registry = env
    client.headers["Authorization"] = f"Bearer {registry.create_api_key('site', [OWN])}"
    params = {"site": OWN, "metric": "power_kw", "every": "1h"}
    by_param = client.get("/v1/series", params={**params, "format": "csv"})
    by_accept = client.get("/v1/series", params=params, headers={"Accept": "text/csv"})
    assert by_param.headers["content-type"].startswith("text/csv")
    assert by_param.text == by_accept.text
    header, row = by_param.text.splitlines()
    assert header == "site,device,metric,unit,agg,time,value"
    assert row.startswith("steel,steel-meter,power_kw,kW,mean,")
    assert row.endswith(",1.0")
    gauge_delta = client.get("/v1/series", params={**params, "agg": "delta"})
    assert gauge_delta.status_code == 422
    assert "needs a counter" in gauge_delta.json()["error"]["message"]
    latest = client.get(f"/v1/sites/{OWN}/latest").json()
    assert (latest[0]["stale"], latest[0]["metrics"]["power_kw"]["stale"]) == (False, False)
