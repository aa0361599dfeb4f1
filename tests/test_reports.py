"""The monthly report (issue 15, acceptance 2): for a site and the park, in HTML and PDF; the PDF's text
(pdftotext) carries the same compliance rate, exceeding-hour count, energy total and coverage as the KPI
endpoints for the month; a site key cannot fetch another site's report (404) nor the park's (403)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from smartpark.api.app import create_app
from smartpark.api.screening import month_span
from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore

from factories import METERED_GREEN, METERED_STEEL, ServedApp, park_registry, park_store, park_yaml
from servers import need

TZ = ZoneInfo("Asia/Shanghai")
HOUR, MIN = 3_600_000, 60_000
ARTIFACTS = Path(__file__).parent / "artifacts"
PARK = park_yaml("report-park", METERED_STEEL, METERED_GREEN, quotas={"steel": 10})


def last_month() -> str:
    return (datetime.now(TZ).date().replace(day=1) - timedelta(days=1)).strftime("%Y-%m")


def month_points(month: str) -> list[Point]:
    """Hourly counters over the month (steel: 12 tce a day against a quota of 10), four stack hours on day 3
    (two exceeding NOx 50), green area all month."""
    start, end = month_span(month)
    t0 = int(datetime(start.year, start.month, start.day, tzinfo=TZ).timestamp() * 1000)
    hours = (end - start).days * 24
    pts = [Point("energy", "steel", "steel-main", t0 + i * HOUR, {"coal_t": 0.7 * (i + 1)}) for i in range(-1, hours)]
    pts += [Point("energy", "steel", "sinter-line", t0 + i * HOUR, {"coal_t": 0.1 * (i + 1), "output_t": 1.0 * (i + 1)})
            for i in range(-1, hours)]
    pts += [Point("energy", "park-green", "green-meter", t0 + i * HOUR, {"energy_kwh": 50.0 * (i + 1)})
            for i in range(-1, hours)]
    day3 = t0 + 2 * 24 * HOUR
    for h, nox in ((8, 40.0), (9, 70.0), (10, 65.0), (11, 30.0)):
        pts += [Point("emissions", "steel", "sinter-cems", day3 + h * HOUR + m * MIN,
                      {"nox_mg_m3": nox, "o2_pct": 16.0}) for m in range(60)]
    pts += [Point("greening", "park-green", "green-1", t0 + d * 24 * HOUR, {"green_area_m2": 8000.0})
            for d in range(hours // 24)]
    return pts


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Registry, str]]:
    tmp = tmp_path_factory.mktemp("report")
    registry, store = park_store(tmp, PARK, month_points(last_month()))
    app = ServedApp(create_app(Settings(_env_file=None, data_dir=tmp), registry=registry, store=store,  # type: ignore[call-arg]
                               catalog=default_catalog()))
    yield app.client, registry, registry.create_api_key("admin", [])
    app.close()
    store.close()
    registry.close()


def pdf_text(pdf: bytes, tmp_path: Path, name: str) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / name).write_bytes(pdf)
    path = tmp_path / name
    path.write_bytes(pdf)
    return subprocess.run([need("pdftotext"), str(path), "-"], capture_output=True, check=True,
                          timeout=60).stdout.decode()


def api_figures(client: httpx.Client, key: str, site: str | None, month: str) -> dict[str, str]:
    """The KPI endpoints' figures for the month, formatted as the report prints them."""
    start, end = month_span(month)
    span, auth = {"start": str(start), "end": str(end)}, {"Authorization": f"Bearer {key}"}
    if site is None:
        park = client.get("/v1/kpis", params=span, headers=auth).json()
        hours = 0
        for s in park["sites"]:
            em = client.get(f"/v1/sites/{s['site']}/kpis/emissions", params=span, headers=auth).json()
            hours += sum(x["hours_exceeding"] for st in em["stacks"] for x in st["pollutants"])
        return {"energy": f"{park['energy']['total_tce']:.3f} tce",
                "compliance": f"{park['emissions_compliance_pct']:.2f} %",
                "hours": f"Exceeding hours {hours} of", "coverage": f"{park['greening_coverage_pct']:.2f} %"}
    energy = client.get(f"/v1/sites/{site}/kpis/energy", params=span, headers=auth).json()
    em = client.get(f"/v1/sites/{site}/kpis/emissions", params=span, headers=auth).json()
    green = client.get(f"/v1/sites/{site}/kpis/greening", params=span, headers=auth).json()
    hours = sum(x["hours_exceeding"] for st in em["stacks"] for x in st["pollutants"])
    return {"energy": f"{energy['total_tce']:.3f} tce", "quota": f"{energy['quota_use_pct']:.1f} % OVER QUOTA",
            "compliance": f"{em['compliance_pct']:.2f} %", "hours": f"Exceeding hours {hours} of",
            "coverage": "no data" if green["coverage_pct"] is None else f"{green['coverage_pct']:.2f} %"}


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("site", ["steel", None])
def test_report_pdf_and_html_carry_the_api_figures(served: tuple[httpx.Client, Registry, str], tmp_path: Path,
                                                   site: str | None) -> None:
    client, _, admin = served
    month = last_month()
    want = api_figures(client, admin, site, month)
    params = {"format": "pdf"} | ({"site": site} if site else {})
    resp = client.get(f"/v1/reports/{month}", params=params, headers={"Authorization": f"Bearer {admin}"},
                      timeout=180)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/pdf"
    assert resp.content.startswith(b"%PDF")
    text = squash(pdf_text(resp.content, tmp_path, f"report-{month}-{site or 'park'}.pdf"))
    html = client.get(f"/v1/reports/{month}", params={"format": "html"} | ({"site": site} if site else {}),
                      headers={"Authorization": f"Bearer {admin}"})
    assert html.headers["content-type"].startswith("text/html")
    (ARTIFACTS / f"report-{month}-{site or 'park'}.html").write_text(html.text, encoding="utf-8")
    page = squash(re.sub(r"<[^>]+>", " ", html.text))  # the page's text
    for label, figure in want.items():
        assert figure in text, (label, figure, text[:1500])
        assert figure in page, (label, figure)
    assert "Exceeding hours 2 of" in text  # hours 09 and 10 of day 3, in either scope
    assert "NON-COMPLIANT" in text  # 2 of 4 valid hours: 50 % against 95 %
    assert "<svg" in html.text
    if site == "steel":
        assert "daily quota" in html.text  # the energy chart's limit line (the park has no quota: a site has none)
        assert "sinter-line at 71.4 kgce/t is worse than the baseline" in text  # the screening section


def test_a_site_key_gets_its_own_report_only(served: tuple[httpx.Client, Registry, str]) -> None:
    client, registry, _ = served
    key = {"Authorization": f"Bearer {registry.create_api_key('site', ['park-green'])}"}
    month = last_month()
    own = client.get(f"/v1/reports/{month}", params={"site": "park-green"}, headers=key)
    assert own.status_code == 200
    assert "Green" in own.text
    assert "Steel works" not in own.text
    assert client.get(f"/v1/reports/{month}", params={"site": "steel"}, headers=key).status_code == 404
    assert client.get(f"/v1/reports/{month}", params={"site": "steel", "format": "pdf"}, headers=key
                      ).status_code == 404
    assert client.get(f"/v1/reports/{month}", headers=key).status_code == 403  # the park's: admin only
    assert client.get("/v1/reports/2026-3", params={"site": "park-green"}, headers=key).status_code == 422


def test_report_command_writes_the_same_figures(served: tuple[httpx.Client, Registry, str], tmp_path: Path) -> None:
    client, _, admin = served
    data = tmp_path / "data"
    data.mkdir()
    park_registry(data, PARK).close()
    store = EmbeddedStore(data / "timeseries.sqlite", default_catalog())
    store.init()
    month = last_month()
    store.write(month_points(month))
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")} | {"SMARTPARK_DATA_DIR": str(data)}
    out = tmp_path / "steel.pdf"
    proc = subprocess.run([sys.executable, "-m", "smartpark", "report", "--month", month, "--site", "steel",
                           "--format", "pdf", "--output", str(out)], env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    text = squash(pdf_text(out.read_bytes(), tmp_path, "cli-steel.pdf"))
    for label, figure in api_figures(client, admin, "steel", month).items():
        assert figure in text, (label, figure)
    bad = subprocess.run([sys.executable, "-m", "smartpark", "report", "--month", "2026-3", "--output", str(out)],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0
    assert "YYYY-MM" in bad.stderr
