"""Two-high screening (issue 15, acceptance 3) on a park built for it: a site over the energy threshold, a
sintering line worse than its baseline, a restricted product line and a clean site, each flagged or not with
its reason; the park file's process and product are validated (file, line, key)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from smartpark.api.app import create_app
from smartpark.api.screening import month_span
from smartpark.core.catalog import default_catalog
from smartpark.core.errors import ParkFileError
from smartpark.core.points import Point
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings

from factories import ServedApp, park_store

TZ = ZoneInfo("Asia/Shanghai")
HOUR = 3_600_000
PARK = """
park: {id: two-high, name: Two-high park, region: northeast}
sites:
  - {id: big-steel, name: Big steel, enterprise: Big Steel Co., industry: steel, area_m2: 100000,
     devices: [{id: big-main, kind: energy_meter}]}
  - id: sinter-co
    name: Sinter works
    enterprise: Sinter Co.
    industry: steel
    area_m2: 50000
    devices:
      - {id: sinter-main, kind: energy_meter}
      - {id: sinter-line, kind: energy_meter, parent: sinter-main, process: sintering, product: sinter}
  - id: lime-co
    name: Lime kilns
    enterprise: Lime Co.
    industry: lime
    area_m2: 20000
    devices:
      - {id: lime-main, kind: energy_meter, product: quicklime}
  - id: clean-co
    name: Clean works
    enterprise: Clean Co.
    industry: steel
    area_m2: 20000
    devices:
      - {id: clean-main, kind: energy_meter}
      - {id: clean-line, kind: energy_meter, parent: clean-main, process: sintering}
"""
RATES: dict[tuple[str, str], dict[str, float]] = {  # per hour
    ("big-steel", "big-main"): {"coal_t": 12.5},  # 300 t coal a day: 78,214 tce a year
    ("sinter-co", "sinter-main"): {"coal_t": 1.0},
    ("sinter-co", "sinter-line"): {"coal_t": 0.1, "output_t": 1.0},  # 71.4 kgce/t: baseline 55
    ("lime-co", "lime-main"): {"coal_t": 0.5},
    ("clean-co", "clean-main"): {"energy_kwh": 100.0},
    ("clean-co", "clean-line"): {"coal_t": 0.05, "output_t": 1.0},  # 35.7 kgce/t: benchmark 45
}


def last_month() -> str:
    first = datetime.now(TZ).date().replace(day=1)
    return (first - timedelta(days=1)).strftime("%Y-%m")


def points(month: str) -> list[Point]:
    start, end = month_span(month)
    t0 = int(datetime(start.year, start.month, start.day, tzinfo=TZ).timestamp() * 1000)
    hours = (end - start).days * 24
    return [Point("energy", site, dev, t0 + i * HOUR, {m: rate * (i + 1) for m, rate in rates.items()})
            for (site, dev), rates in RATES.items() for i in range(-1, hours)]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[httpx.Client, Registry]]:
    registry, store = park_store(tmp_path, PARK, points(last_month()))
    served = ServedApp(create_app(Settings(_env_file=None, data_dir=tmp_path), registry=registry,  # type: ignore[call-arg]
                                  store=store, catalog=default_catalog()))
    served.client.headers["Authorization"] = f"Bearer {registry.create_api_key('admin', [])}"
    yield served.client, registry
    served.close()
    store.close()
    registry.close()


def test_each_enterprise_flagged_or_not_with_its_reason(api: tuple[httpx.Client, Registry]) -> None:
    client, _ = api
    month = last_month()
    resp = client.get("/v1/screening", params={"month": month})
    assert resp.status_code == 200, resp.text
    by = {e["site"]: e for e in resp.json()["enterprises"]}

    big = by["big-steel"]
    assert big["flagged"]
    assert big["annualised_tce"] == pytest.approx(300 * 0.7143 * 365, rel=1e-3)
    assert any(r.startswith("energy: annualised 78,2") and "reaches the threshold of 50,000" in r
               for r in big["reasons"])
    start, end = month_span(month)
    kpi = client.get("/v1/sites/big-steel/kpis/energy", params={"start": str(start), "end": str(end)}).json()
    assert big["energy_tce"] == pytest.approx(kpi["total_tce"], rel=1e-12)  # the energy KPI's figure

    sinter = by["sinter-co"]
    assert sinter["flagged"]
    line = sinter["lines"][0]
    assert (line["device"], line["level"]) == ("sinter-line", "worse_than_baseline")
    assert line["intensity_kgce_t"] == pytest.approx(71.43, rel=1e-3)
    assert (line["benchmark_kgce_t"], line["baseline_kgce_t"]) == (45, 55)
    assert any("sinter-line at 71.4 kgce/t is worse than the baseline" in r for r in sinter["reasons"])
    assert any("below the threshold" in r for r in sinter["reasons"])

    lime = by["lime-co"]
    assert lime["flagged"]
    assert lime["restricted"][0]["product"] == "quicklime"
    assert any(r.startswith("restricted product: lime-main makes quicklime") for r in lime["reasons"])
    assert lime["sector"] == "building_materials"

    clean = by["clean-co"]
    assert not clean["flagged"]
    assert clean["lines"][0]["level"] == "better_than_benchmark"
    assert any("below the threshold" in r for r in clean["reasons"])
    assert any("clean-line at 35.7 kgce/t meets the benchmark" in r for r in clean["reasons"])
    assert "restricted products: none declared" in clean["reasons"]


def test_screening_is_admin_only_and_checks_the_month(api: tuple[httpx.Client, Registry]) -> None:
    client, registry = api
    key = registry.create_api_key("site", ["big-steel"])
    assert client.get("/v1/screening", params={"month": last_month()},
                      headers={"Authorization": f"Bearer {key}"}).status_code == 403
    assert client.get("/v1/screening", params={"month": "2026-13"}).status_code == 422
    future = (date.today().replace(day=1) + timedelta(days=62)).strftime("%Y-%m")
    assert client.get("/v1/screening", params={"month": future}).status_code == 422


@pytest.mark.parametrize(("change", "key", "line"), [
    ({"process: sintering, product: sinter": "process: sinterng, product: sinter"}, "process", 13),
    ({"product: quicklime": "product: quicklim"}, "product", 20),
    ({"{id: lime-main, kind: energy_meter, product: quicklime}": "{id: lime-cems, kind: cems, source_type: other, "
                                                                 "process: sintering}"}, "process", 20),
])
def test_park_file_process_and_product_are_validated(change: dict[str, str], key: str, line: int) -> None:
    text = PARK
    for old, new in change.items():
        assert old in text
        text = text.replace(old, new)
    with pytest.raises(ParkFileError) as err:
        parse_park_file(text, "two-high.yaml")
    info: Any = err.value
    assert (info.key, info.line, info.path) == (key, line, "two-high.yaml")
