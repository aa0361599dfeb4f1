"""The API's foundation: key auth, site scope (404 for what a key may not see), latest, series, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore

from factories import PARK_YAML, ServedApp, now_ms


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[httpx.Client, Registry, EmbeddedStore]]:
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    app = create_app(Settings(_env_file=None, data_dir=tmp_path), registry=registry, store=store,  # type: ignore[call-arg]
                     catalog=default_catalog())
    served = ServedApp(app)
    yield served.client, registry, store
    served.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


SITE_PATHS = ["/v1/sites/{}", "/v1/sites/{}/devices", "/v1/sites/{}/latest", "/v1/series?site={}&metric=power_kw"]


def test_health_needs_no_key_everything_else_does(env: tuple[httpx.Client, Registry, EmbeddedStore]) -> None:
    client, _, _ = env
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"store": "ok", "metadata": "ok"}
    for path in ["/v1/sites", *[p.format("steel") for p in SITE_PATHS]]:
        resp = client.get(path)
        assert resp.status_code == 401, path
        assert resp.json()["error"]["code"] == "unauthorized"
        assert client.get(path, headers=auth("sp_nope_nope")).status_code == 401


def test_site_key_sees_only_its_site(env: tuple[httpx.Client, Registry, EmbeddedStore]) -> None:
    client, registry, _ = env
    key = registry.create_api_key("site", ["steel"])
    sites = client.get("/v1/sites", headers=auth(key)).json()
    assert [s["id"] for s in sites["items"]] == ["steel"]
    assert sites["total"] == 1
    for path in SITE_PATHS:
        assert client.get(path.format("steel"), headers=auth(key)).status_code == 200, path
        for other in ("park-green", "does-not-exist"):
            resp = client.get(path.format(other), headers=auth(key))
            assert resp.status_code == 404, path
            assert resp.json()["error"] == {"code": "not_found", "message": f"site {other!r} not found",
                                            "details": None}


def test_admin_sees_the_park_with_pagination(env: tuple[httpx.Client, Registry, EmbeddedStore]) -> None:
    client, registry, _ = env
    key = registry.create_api_key("admin", [])
    page = client.get("/v1/sites?limit=1&offset=1", headers=auth(key)).json()
    assert page["total"] == 2
    assert [s["id"] for s in page["items"]] == ["steel"]
    devices = client.get("/v1/sites/steel/devices", headers=auth(key)).json()["items"]
    assert {d["id"]: d["source_type"] for d in devices} == {"sinter-cems": "sinter", "steel-meter": None}


def test_latest_and_series(env: tuple[httpx.Client, Registry, EmbeddedStore]) -> None:
    client, registry, store = env
    key = registry.create_api_key("site", ["steel"])
    t0 = (now_ms() - 600_000) // 60_000 * 60_000
    store.write([Point("emissions", "steel", "sinter-cems", t0 + i * 10_000,
                       {"nox_mg_m3": float(i), **({"nox_mg_m3_flag": "C"} if i == 11 else {})})
                 for i in range(12)])
    latest = client.get("/v1/sites/steel/latest", headers=auth(key)).json()
    (dev,) = latest
    nox = dev["metrics"]["nox_mg_m3"]
    assert (dev["device"], nox["value"], nox["flag"], nox["unit"]) == ("sinter-cems", 11.0, "C", "mg/m3")
    assert 0 < nox["age_s"] < 700
    resp = client.get("/v1/series", headers=auth(key), params={
        "site": "steel", "metric": "nox_mg_m3", "every": "1m", "agg": "max",
        "start": _iso(t0), "end": _iso(t0 + 120_000)})
    (series,) = resp.json()
    assert [p[1] for p in series["points"]] == [5.0, 11.0]
    assert series["points"][0][0].startswith(_iso(t0)[:16])


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


@pytest.mark.parametrize(("params", "needle"), [
    ({"every": "1s", "start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}, "windows requested"),
    ({"every": "5 minutes"}, "every='5 minutes'"),
    ({"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "end must be after start"),
    ({"start": "2026-01-01T00:00:00"}, "with an offset"),
    ({"agg": "median"}, "request parameters are invalid"),
])
def test_series_errors_are_422(env: tuple[httpx.Client, Registry, EmbeddedStore], params: dict[str, str],
                               needle: str) -> None:
    client, registry, _ = env
    key = registry.create_api_key("admin", [])
    resp = client.get("/v1/series", headers=auth(key), params={"site": "steel", "metric": "power_kw", **params})
    assert resp.status_code == 422
    assert needle in resp.json()["error"]["message"]


def test_unknown_metric_is_404(env: tuple[httpx.Client, Registry, EmbeddedStore]) -> None:
    client, registry, _ = env
    key = registry.create_api_key("admin", [])
    resp = client.get("/v1/series", headers=auth(key), params={"site": "steel", "metric": "x'; DROP"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
