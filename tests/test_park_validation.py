"""Park files are checked for meaning before anything is stored (file, line and key named), and no KPI endpoint
answers 500 for any registry state a park file or the API can create (issue 12, acceptance 3)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.errors import ParkFileError
from smartpark.core.points import Point
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore

from factories import ServedApp

BASE = """\
park:
  id: edge
  name: Edge park
  region: northeast
  timezone: Asia/Shanghai
sites:
  - id: works
    name: Works
    enterprise: Works Co.
    industry: steel
    area_m2: 1000
    energy_quota_tce_day: 5
    greening_min_pct: 10
    greening_max_pct: 20
    devices:
      - {id: stack, kind: cems, source_type: sinter}
      - {id: main, kind: energy_meter, role: main}
      - {id: line, kind: energy_meter, role: sub, parent: main}
      - {id: lawn, kind: greening}
  - id: other
    name: Other
    enterprise: Other Co.
    industry: logistics
    area_m2: 1000
    devices:
      - {id: other-main, kind: energy_meter}
"""


def test_the_base_park_is_valid() -> None:
    park = parse_park_file(BASE, "p.yaml")
    assert [(d.id, d.role, d.parent) for d in park.sites[0].devices if d.kind == "energy_meter"] == [
        ("main", "main", None), ("line", "sub", "main")]


@pytest.mark.parametrize(("old", "new", "line", "key", "needle"), [
    ("timezone: Asia/Shanghai", "timezone: Mars/Olympus", 5, "timezone", "unknown time zone"),
    ("region: northeast", "region: mars", 4, "region", "not in the reference data"),
    ("greening_min_pct: 10", "greening_min_pct: 30", 13, "greening_min_pct", "above greening_max_pct"),
    ("source_type: sinter}", "source_type: volcano}", 16, "source_type", "'volcano' is unknown"),
    ("kind: cems, source_type: sinter}", "kind: cems}", 16, "source_type", "needs a source_type"),
    ("energy_quota_tce_day: 5", "energy_quota_tce_day: 0", 12, "energy_quota_tce_day", "Expected `float` >"),
    ("energy_quota_tce_day: 5", "energy_quota_tce_day: -5", 12, "energy_quota_tce_day", "Expected `float` >"),
    ("parent: main}", "parent: nowhere}", 18, "parent", "not a device of the same site"),
    ("parent: main}", "parent: other-main}", 18, "parent", "not a device of the same site"),
    ("parent: main}", "parent: lawn}", 18, "parent", "is a greening, not an energy meter"),
    ("role: sub, parent: main}", "role: sub}", 18, "parent", "needs a parent"),
    ("role: sub, parent: main}", "role: main, parent: main}", 18, "parent", "cannot have a parent"),
    ("role: sub, parent: main}", "role: boss}", 18, "role", "Invalid enum value 'boss'"),
    ("{id: main, kind: energy_meter, role: main}", "{id: main, kind: energy_meter, role: sub, parent: line}", 17,
     "parent", "form a cycle"),
    ("{id: line, kind: energy_meter, role: sub, parent: main}", "{id: line, kind: energy_meter, parent: line}", 18,
     "parent", "form a cycle"),
    ("source_type: sinter}", "source_type: sinter, role: main}", 16, "role", "only energy meters"),
    ("role: main}", "role: main, rated_kw: 0}", 17, "rated_kw", "Expected `float` >"),
])
def test_invalid_park_files_name_file_line_and_key(old: str, new: str, line: int, key: str, needle: str) -> None:
    assert old in BASE
    with pytest.raises(ParkFileError, match=needle) as info:
        parse_park_file(BASE.replace(old, new, 1), "p.yaml")
    assert (info.value.path, info.value.line, info.value.key) == ("p.yaml", line, key)
    assert str(info.value).startswith(f"p.yaml:{line}: ")


def test_an_invalid_file_stores_nothing(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    with pytest.raises(ParkFileError):
        registry.load_park(parse_park_file(BASE.replace("Asia/Shanghai", "Mars/Olympus"), "p.yaml"))
    assert (registry.park(), registry.sites()) == (None, [])
    registry.close()


# ------------------------------------------------------------------------------------------- the KPI sweep

# The strangest park a file can still describe: a zone with half-hour offsets and daylight saving, a site
# without devices, a site of sub-meters beneath sub-meters, a generation meter, a meter bound so tightly that
# every step is implausible, greening bands at the edges, yearly and daily quotas.
EDGE_PARK = """
park: {id: edge, name: Edge, region: national, timezone: America/St_Johns}
sites:
  - {id: empty, name: Empty, enterprise: E, industry: unknown-industry, area_m2: 0.001}
  - id: deep
    name: Deep
    enterprise: D
    industry: steel
    area_m2: 1e9
    energy_quota_tce_year: 1e-9
    greening_min_pct: 0
    greening_max_pct: 0
    devices:
      - {id: d-main, kind: energy_meter, role: main, rated_kw: 0.001}
      - {id: d-sub, kind: energy_meter, role: sub, parent: d-main}
      - {id: d-subsub, kind: energy_meter, role: sub, parent: d-sub}
      - {id: d-solar, kind: energy_meter, role: generation}
      - {id: d-stack, kind: cems, source_type: hot_blast_stove}
      - {id: d-gw, kind: gateway}
  - id: greens
    name: Greens
    enterprise: G
    industry: logistics
    area_m2: 10
    energy_quota_tce_day: 1e9
    greening_min_pct: 100
    greening_max_pct: 100
    devices:
      - {id: g-lawn, kind: greening}
      - {id: g-orphan, kind: energy_meter, role: sub, parent: g-main}
      - {id: g-main, kind: energy_meter}
"""

TZ = ZoneInfo("America/St_Johns")
T0 = int(datetime(2026, 3, 7, tzinfo=TZ).timestamp() * 1000)  # daylight saving starts on 2026-03-08


def edge_points() -> list[Point]:
    pts = [Point("energy", "deep", "d-main", T0 + i * 60_000, {"energy_kwh": 1e6 - i * 7.0, "coal_t": 5.0})
           for i in range(0, 3000, 7)]  # always decreasing: every step a reset, each one implausible
    pts += [Point("energy", "deep", "d-sub", T0, {"energy_kwh": 3.0})]  # one reading: no step at all
    pts += [Point("energy", "deep", "d-solar", T0 + i * 3_600_000, {"energy_kwh": 10.0 * i, "power_kw": -5.0})
            for i in range(48)]
    pts += [Point("energy", "deep", "ghost", T0 + i * 60_000, {"energy_kwh": float(i)})  # not in the registry
            for i in range(5)]
    pts += [Point("energy", "greens", "g-orphan", T0 + i * 900_000, {"energy_kwh": 2.0 * i}) for i in range(200)]
    pts += [Point("emissions", "deep", "d-stack", T0 + i * 60_000, {"nox_mg_m3": 1e4, "o2_pct": 21.0})
            for i in range(120)]
    pts += [Point("greening", "greens", "g-lawn", T0 + i * 3_600_000, {"green_area_m2": 1e8}) for i in range(60)]
    return pts


@pytest.fixture
def edge_api(store: TimeSeriesStore, tmp_path: Path) -> Iterator[tuple[httpx.Client, Registry]]:
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(EDGE_PARK, "edge.yaml"))
    store.write(edge_points())
    app = create_app(Settings(_env_file=None, data_dir=tmp_path), registry=registry, store=store,  # type: ignore[call-arg]
                     catalog=default_catalog())
    served = ServedApp(app)
    served.client.headers["Authorization"] = f"Bearer {registry.create_api_key('admin', [])}"
    yield served.client, registry
    served.close()
    registry.close()


def _api_edits(client: httpx.Client) -> None:
    """What the API lets an admin do that a park file would refuse or never say."""
    def ok(resp: httpx.Response) -> None:
        assert resp.status_code < 300, resp.text

    ok(client.post("/v1/sites/deep/devices", json={"id": "api-stack", "kind": "cems", "source_type": "volcano"}))
    ok(client.post("/v1/sites/deep/devices", json={"id": "api-stack-2", "kind": "cems"}))
    ok(client.delete("/v1/devices/g-main"))  # leaves g-orphan beneath a meter that is gone
    ok(client.patch("/v1/sites/greens", json={"energy_quota_tce_year": 1e12}))
    ok(client.post("/v1/sites", json={"id": "fresh", "name": "F", "enterprise": "F", "industry": "x", "area_m2": 1}))
    # refused with a reason instead of stored
    assert client.patch("/v1/sites/greens", json={"greening_min_pct": 50, "greening_max_pct": 40}).status_code == 422
    assert client.post("/v1/sites/deep/devices", json={"id": "x", "kind": "energy_meter", "role": "sub"}
                       ).status_code == 422
    assert client.patch("/v1/devices/d-main", json={"parent_id": "d-subsub", "role": "sub"}).status_code == 422
    assert client.patch("/v1/devices/d-stack", json={"role": "main"}).status_code == 422


PERIODS = [{}, {"start": "2026-03-07", "end": "2026-03-10"}, {"start": "2026-03-08", "end": "2026-03-09"},
           {"start": "2025-03-01", "end": "2026-03-31"}, {"start": "1999-01-01", "end": "1999-01-02"}]


def test_no_kpi_endpoint_answers_500_over_an_edge_case_park(edge_api: tuple[httpx.Client, Registry]) -> None:
    client, registry = edge_api
    _api_edits(client)
    sites = [s.id for s in registry.sites()]
    paths = ["/v1/kpis", "/v1/data-quality"] + [f"/v1/sites/{s}/kpis/{k}" for s in sites
                                                for k in ("energy", "emissions", "greening")]
    for path in paths:
        for params in PERIODS:
            resp = client.get(path, params={**params, "hours": "true"} if "emissions" in path else params)
            assert resp.status_code == 200, (path, params, resp.text)
    for params in ({"start": "2026-03-09", "end": "2026-03-08"}, {"start": "2020-01-01", "end": "2026-01-01"},
                   {"start": "not-a-day"}):
        assert client.get("/v1/kpis", params=params).status_code == 422
    deep = client.get("/v1/sites/deep/kpis/energy", params=PERIODS[1]).json()
    assert deep["carriers"][0]["amount"] == 0.0  # every step of the tightly bound main meter was excluded
    assert {e["kind"] for e in deep["counter_events"] if e["device"] == "d-main"} == {"implausible"}
    assert deep["generation_kwh"] == 470.0  # d-solar: 47 hourly steps of 10, never added to consumption
