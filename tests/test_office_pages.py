"""The reworked overview and a site page in headless Chromium (issue 15, acceptance 1), on a month with
known exceedances: the exceeding site shows as non-compliant with the rate the API gives, the over-quota site
its percentage, a device whose clock runs 95 s ahead shows fresh. Screenshots land in tests/artifacts/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi.responses import HTMLResponse
from test_overview_page import ARTIFACTS, AUTOLOGIN, FORM, chromium

from smartpark.api.app import create_app
from smartpark.api.overview import stale_devices
from smartpark.core.catalog import default_catalog
from smartpark.core.points import Point
from smartpark.core.registry import Registry
from smartpark.core.settings import Settings
from smartpark.core.store.base import LatestValue

from factories import METERED_GREEN, METERED_STEEL, ServedApp, now_ms, park_store, park_yaml

TZ = ZoneInfo("Asia/Shanghai")
HOUR, MIN = 3_600_000, 60_000
AHEAD = "green-meter"  # its clock runs 95 s ahead
PARK = park_yaml("office-park", METERED_STEEL, METERED_GREEN, quotas={"steel": 5, "park-green": 100})


def month_so_far() -> list[Point]:
    """Since the month began: hourly counters (steel about 12 tce a day on a quota of 5), four stack hours
    (two over the NOx limit of 50), readings of every device in the last minute, the green meter 95 s ahead."""
    now = now_ms()
    today = datetime.now(TZ).date()
    first = today.replace(day=1)
    t0 = int(datetime(first.year, first.month, first.day, tzinfo=TZ).timestamp() * 1000)
    hours = (now - t0) // HOUR + 1
    pts = [Point("energy", "steel", "steel-main", t0 + i * HOUR, {"coal_t": 0.7 * (i + 1)}) for i in range(-1, hours)]
    pts += [Point("energy", "steel", "sinter-line", t0 + i * HOUR, {"coal_t": 0.1 * (i + 1)}) for i in range(-1, hours)]
    pts += [Point("energy", "park-green", AHEAD, t0 + i * HOUR, {"energy_kwh": 50.0 * (i + 1)})
            for i in range(-1, hours - 1)]
    pts.append(Point("energy", "park-green", AHEAD, now + 95_000, {"energy_kwh": 50.0 * hours, "power_kw": 50.0}))
    pts += [Point("energy", "steel", d, now - 20_000, {"power_kw": 500.0}) for d in ("steel-main", "sinter-line")]
    base = max(t0, now - now % HOUR - 5 * HOUR)
    for h, nox in enumerate((40.0, 70.0, 65.0, 30.0)):
        pts += [Point("emissions", "steel", "sinter-cems", base + h * HOUR + m * MIN,
                      {"nox_mg_m3": nox, "o2_pct": 16.0}) for m in range(60)]
    pts.append(Point("emissions", "steel", "sinter-cems", now - 10_000, {"nox_mg_m3": 30.0, "o2_pct": 16.0}))
    pts += [Point("greening", "park-green", "green-1", now - 30_000, {"green_area_m2": 8000.0})]
    return pts


@pytest.fixture
def office(tmp_path: Path) -> Iterator[tuple[ServedApp, str, Registry]]:
    registry, store = park_store(tmp_path, PARK, month_so_far())
    app = create_app(Settings(_env_file=None, data_dir=tmp_path), registry=registry, store=store,  # type: ignore[call-arg]
                     catalog=default_catalog())
    key = registry.create_api_key("admin", [])
    app.add_api_route("/_test/autologin", lambda: HTMLResponse(AUTOLOGIN.format(key=key)), include_in_schema=False)
    served = ServedApp(app)
    yield served, key, registry
    served.close()
    store.close()
    registry.close()


def kpi_block(dom: str, kpi: str, site: str | None = None) -> str:
    """The element of one KPI (of one site's card when ``site`` is given), tags removed, whitespace squashed."""
    if site:
        dom = dom[dom.index(f'id="site-{site}"'):]
    match = re.search(rf'<div class="kpi ([a-z ]*)" data-kpi="{kpi}"[^>]*>(.*?)</div>', dom, re.S)
    assert match, kpi
    return match.group(1) + " | " + " ".join(re.sub(r"<[^>]+>", " ", match.group(2)).split())


def test_overview_and_site_page_in_chromium(office: tuple[ServedApp, str, Registry], tmp_path: Path) -> None:
    served, key, _ = office
    auth = {"Authorization": f"Bearer {key}"}
    em = served.client.get("/v1/sites/steel/kpis/emissions", headers=auth).json()
    energy = served.client.get("/v1/sites/steel/kpis/energy", headers=auth).json()
    assert em["compliance_pct"] == pytest.approx(50.0)
    assert energy["quota_use_pct"] > 100
    profile = tmp_path / "chromium"
    dom = chromium(profile, "--dump-dom", f"{served.base_url}/_test/autologin")

    compliance = kpi_block(dom, "compliance", "steel")
    assert compliance.startswith("bad |")
    assert f"{em['compliance_pct']:.2f} %" in compliance
    assert "NON-COMPLIANT" in compliance
    assert "2 exceeding hours" in compliance
    month = kpi_block(dom, "energy-month", "steel")
    assert month.startswith("bad |")
    assert f"{energy['quota_use_pct']:.1f} % of the quota to date OVER QUOTA" in month
    assert f"{energy['total_tce']:.2f} tce" in month
    green_energy = kpi_block(dom, "energy-month", "park-green")
    assert green_energy.startswith("ok |")
    green = dom[dom.index('id="site-park-green"'):]
    assert "all devices fresh" in green  # the meter 95 s ahead is fresh...
    assert f'class="stale" title="no reading in 7 days">{AHEAD}' not in dom  # ...not "no reading in 7 days"
    assert 'class="chart"' in dom  # axes, units...
    assert "daily quota" in dom  # ...and the quota line

    site_dom = chromium(profile, "--dump-dom", f"{served.base_url}/sites/steel")
    assert f"{em['compliance_pct']:.2f} %" in kpi_block(site_dom, "compliance")
    assert "limit 50 mg/m3" in site_dom  # the hourly means' chart draws the limit
    assert "sinter-line" in site_dom  # energy per meter: the sub-meter...
    assert "steel-main" in site_dom  # ...and the main

    ARTIFACTS.mkdir(exist_ok=True)
    for name, url in (("office-overview.png", "/"), ("office-site-steel.png", "/sites/steel")):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        chromium(profile, f"--screenshot={shot}", "--window-size=1280,1400", f"{served.base_url}{url}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def log_in(client: httpx.Client, key: str, site: str) -> None:
    origin = {"Origin": str(client.base_url).rstrip("/")}  # as a browser posts the form (the CSRF check)
    assert client.post("/login", content=f"api_key={key}", headers=FORM | origin).status_code == 303
    assert f"site-{site}" in client.get("/").text


def test_a_clock_ahead_is_fresh_and_silence_is_stale() -> None:
    now = now_ms()
    latest = [LatestValue("s", "ahead", "energy", "power_kw", now + 95_000, 1.0, None),
              LatestValue("s", "old", "energy", "power_kw", now - 600_000, 1.0, None)]
    assert stale_devices(["ahead", "old", "never"], latest, now, 300) == [("never", -1.0), ("old", 600.0)]


def test_site_page_is_scoped(office: tuple[ServedApp, str, Registry]) -> None:
    served, _, registry = office
    with httpx.Client(base_url=served.base_url) as client:
        assert client.get("/sites/steel").status_code == 303  # no session: to the login
        log_in(client, registry.create_api_key("site", ["park-green"]), site="park-green")
        assert client.get("/sites/park-green").status_code == 200
        assert client.get("/sites/steel").status_code == 404
        assert "site-steel" not in client.get("/").text
