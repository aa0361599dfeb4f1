"""The overview page in a real headless Chromium: log in with a key through the page's form, see the demo
park's sites, a stale device in the warning colour and an active alert; a screenshot lands in tests/artifacts/."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest
from fastapi.responses import HTMLResponse
from sqlalchemy import update

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.registry import Registry, read_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.simulators.models import ParkModel

from factories import ServedApp, model_points, now_ms
from servers import need

ARTIFACTS = Path(__file__).parent / "artifacts"
SILENT = "steel-works-meter-29"  # never reports: must show as stale
HOUR = 3_600_000
AUTOLOGIN = """<!doctype html><form id="f" method="post" action="/login">
<input name="api_key" value="{key}"></form><script>document.getElementById('f').submit()</script>"""


@pytest.fixture
def page(tmp_path: Path) -> Iterator[tuple[ServedApp, Registry]]:
    park_file = resources.files("smartpark.core").joinpath("data/parks/demo.yaml")
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    park = read_park_file(Path(str(park_file)))
    registry.load_park(park)
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    now = now_ms()
    model = ParkModel(park, seed=7, start_ms=now - 24 * HOUR)
    for k in range(24, -1, -1):
        store.write(model_points(model, now - k * HOUR, default_catalog(), frozenset({SILENT})))
    add_alert(registry)
    app = create_app(Settings(_env_file=None, data_dir=tmp_path), registry=registry, store=store,  # type: ignore[call-arg]
                     catalog=default_catalog())
    key = registry.create_api_key("admin", [])
    # same origin as the page, so the login cookie (SameSite=strict) is kept: a test-only helper route
    app.add_api_route("/_test/autologin", lambda: HTMLResponse(AUTOLOGIN.format(key=key)), include_in_schema=False)
    served = ServedApp(app)
    yield served, registry
    served.close()
    store.close()
    registry.close()


def add_alert(registry: Registry) -> None:
    from smartpark.alerts.models import Episode

    with registry.session() as s:
        s.add(Episode(id="ep-1", rule_id="nox-sinter", subject="sinter-1-cems", open_key="nox|sinter-1-cems",
                      site="steel-works", device="sinter-1-cems", metric="nox_mg_m3", severity="critical",
                      state="firing", started_ms=now_ms() - 600_000, value=63.0, limit=50.0, unit="mg/m3",
                      message="hourly NOx above the limit"))


def chromium(profile: Path, *args: str) -> str:
    binary = need("/usr/bin/chromium")
    proc = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
                          capture_output=True, timeout=90, check=True)
    return proc.stdout.decode()


def test_overview_in_headless_chromium(page: tuple[ServedApp, Registry], tmp_path: Path) -> None:
    served, registry = page
    profile = tmp_path / "chromium"
    login_page = chromium(profile, "--dump-dom", f"{served.base_url}/")
    assert 'name="api_key"' in login_page
    assert "steel-works" not in login_page  # nothing without a key
    dom = chromium(profile, "--dump-dom", f"{served.base_url}/_test/autologin")
    for site in registry.sites():
        assert f'id="site-{site.id}"' in dom, site.id
        assert site.name.replace("&", "&amp;") in dom
    assert 'class="alert" data-site="steel-works"' in dom
    assert "hourly NOx above the limit" in dom
    assert f'<span class="stale" title="no reading in 7 days">{SILENT}</span>' in dom
    assert dom.count('<svg class="spark"') == len(registry.sites())
    assert 'http-equiv="refresh"' in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "overview.png"
    shot.unlink(missing_ok=True)
    chromium(profile, f"--screenshot={shot}", "--window-size=1280,900", f"{served.base_url}/")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_login_refuses_a_bad_key(page: tuple[ServedApp, Registry]) -> None:
    served, _ = page
    with httpx.Client(base_url=served.base_url, follow_redirects=True) as client:
        resp = client.post("/login", content="api_key=sp_bad_key", headers=form(client))
        assert "That key is not valid" in resp.text
        assert "site-steel-works" not in resp.text


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def form(client: httpx.Client, origin: str | None = None) -> dict[str, str]:
    """A form post's headers as a browser sends them from the page (Origin: the page's own, unless given)."""
    return {**FORM, "Origin": origin or str(client.base_url).rstrip("/")}


def cookie_session(client: httpx.Client) -> dict[str, object]:
    """The session cookie's content (Starlette: base64 JSON, then timestamp and signature: signed, not secret)."""
    data = client.cookies["smartpark_session"].split(".")[0]
    return json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))


def log_in(client: httpx.Client, key: str) -> None:
    assert client.post("/login", content=f"api_key={key}", headers=form(client)).status_code == 303
    assert "site-steel-works" in client.get("/").text


def test_page_login_refuses_a_form_posted_from_another_site(page: tuple[ServedApp, Registry]) -> None:
    """Issue 13, login CSRF: another site's page could post the attacker's key to /login and log the victim's
    browser in as the attacker (who then sees what the victim looks at). The form must come from this host."""
    served, registry = page
    key = registry.create_api_key("admin", [])
    with httpx.Client(base_url=served.base_url) as client:
        for headers in ({**FORM, "Origin": "https://evil.example"}, {**FORM, "Origin": "null"},
                        {**FORM, "Referer": "https://evil.example/page"}, FORM):
            resp = client.post("/login", content=f"api_key={key}", headers=headers)
            assert resp.status_code == 403, headers
            assert "sid" not in (cookie_session(client) if "smartpark_session" in client.cookies else {})
        assert "site-steel-works" not in client.get("/").text
        referer = {**FORM, "Referer": f"{served.base_url}/"}  # a browser that sends no Origin: the Referer will do
        assert client.post("/login", content=f"api_key={key}", headers=referer).status_code == 303
        assert "site-steel-works" in client.get("/").text
    with httpx.Client(base_url=served.base_url) as proxied:  # behind a proxy that rewrites Host
        via_proxy = {**FORM, "Origin": "https://park.example.com", "X-Forwarded-Host": "park.example.com"}
        assert proxied.post("/login", content=f"api_key={key}", headers=via_proxy).status_code == 303


def test_page_cookie_holds_a_session_token_not_the_key_and_logout_revokes_its_copies(
        page: tuple[ServedApp, Registry]) -> None:
    served, registry = page
    key = registry.create_api_key("admin", [])
    with httpx.Client(base_url=served.base_url) as client, httpx.Client(base_url=served.base_url) as thief:
        log_in(client, key)
        content = cookie_session(client)
        assert key not in json.dumps(content)
        assert key.split("_")[2] not in client.cookies["smartpark_session"]
        assert set(content) == {"sid"}
        bearer = {"Authorization": f"Bearer {content['sid']}"}
        assert served.client.get("/v1/sites", headers=bearer).status_code == 401  # not an API key
        thief.cookies.set("smartpark_session", client.cookies["smartpark_session"])
        assert "site-steel-works" in thief.get("/").text  # a copy works while the session lives...
        assert client.post("/logout").status_code == 303
        assert "site-steel-works" not in client.get("/").text
        copied = thief.get("/").text
        assert "site-steel-works" not in copied  # ...and not after the logout
        assert 'name="api_key"' in copied


def test_page_refuses_expired_sessions_and_those_of_revoked_keys(page: tuple[ServedApp, Registry]) -> None:
    from smartpark.api.sessions import PageSession

    served, registry = page
    key = registry.create_api_key("admin", [])
    with httpx.Client(base_url=served.base_url) as expired, httpx.Client(base_url=served.base_url) as revoked:
        log_in(expired, key)
        log_in(revoked, key)
        with registry.session() as s:
            s.execute(update(PageSession).where(PageSession.token_hash == hashlib.sha256(
                str(cookie_session(expired)["sid"]).encode()).hexdigest()).values(expires_ms=now_ms() - 1))
        assert "site-steel-works" not in expired.get("/").text
        assert "site-steel-works" in revoked.get("/").text
        assert registry.revoke_api_key(key.split("_")[1])
        assert "site-steel-works" not in revoked.get("/").text


def test_page_login_refuses_a_body_over_4_kib_before_reading_it_all(page: tuple[ServedApp, Registry]) -> None:
    served, registry = page
    key = registry.create_api_key("admin", [])
    big = f"api_key={key}&pad=".encode() + b"x" * 5000
    with httpx.Client(base_url=served.base_url) as client:
        resp = client.post("/login", content=big, headers=form(client))
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "http_413"
        streamed = client.post("/login", content=iter([big[:3000], big[3000:]]), headers=form(client))  # chunked
        assert streamed.status_code == 413
        assert "smartpark_session" not in client.cookies
        assert "site-steel-works" not in client.get("/").text


def test_active_alerts_are_scoped_before_the_limit(tmp_path: Path) -> None:
    """Hundreds of firing episodes elsewhere in the park must not crowd a site key's own out of the page."""
    from smartpark.alerts.access import AlertAccess
    from smartpark.alerts.models import Episode
    from smartpark.core.registry import Registry

    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    alerts = AlertAccess(registry.engine, Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    with registry.session() as s:
        for i in range(250):
            s.add(Episode(id=f"other-{i}", rule_id="r", subject=f"x{i}", site="other", severity="high",
                          state="firing", started_ms=2_000_000 + i))
        s.add(Episode(id="mine", rule_id="r", subject="m", site="mine", severity="high", state="firing",
                      started_ms=1_000_000))
    assert [a.site for a in alerts.active({"mine"})] == ["mine"]
    assert len(alerts.active({"other", "mine"})) == 200
    registry.close()
