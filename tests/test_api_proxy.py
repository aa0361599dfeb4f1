"""`smartpark api` behind a TLS reverse proxy and on plain HTTP: the session cookie's Secure flag follows the
scheme the client used, believed from X-Forwarded-Proto only when the proxy's address is trusted
(SMARTPARK_API_FORWARDED_ALLOW_IPS). Before, production set Secure on plain HTTP too: the login never worked."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from factories import wait_for
from servers import free_port


@contextmanager
def api(tmp_path: Path, **env: str) -> Iterator[httpx.Client]:
    port = free_port()
    settings = {"SMARTPARK_ENV": "production", "SMARTPARK_DATA_DIR": str(tmp_path),
                "SMARTPARK_MQTT_URL": "mqtt://ingest:Xk3-long-secret@127.0.0.1:1", "SMARTPARK_API_PORT": str(port),
                "SMARTPARK_INFLUX_URL": f"http://127.0.0.1:{free_port()}", "SMARTPARK_INFLUX_USERNAME": "api",
                "SMARTPARK_INFLUX_PASSWORD": "Xk3-long-secret", "SMARTPARK_API_SESSION_SECRET": "s" * 40,
                "SMARTPARK_API_WARM_KPIS": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "smartpark", "api"], env=os.environ | settings | env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            def up() -> bool:
                assert proc.poll() is None, "smartpark api exited"
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, timeout=30)
            yield client
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _cookie(client: httpx.Client, **headers: str) -> str:
    origin = {"Origin": str(client.base_url).rstrip("/")}  # as a browser posts the login form (CSRF check)
    resp = client.post("/login", data={"api_key": "sp_not_a_key"}, headers=origin | headers)  # refused: sets it too
    assert resp.status_code == 303
    return resp.headers["set-cookie"].lower()


@pytest.mark.parametrize(("trusted", "secure_behind_proxy"), [("127.0.0.1", True), ("10.9.9.0/24", False)])
def test_the_cookie_is_secure_over_https_only(tmp_path: Path, trusted: str, secure_behind_proxy: bool) -> None:
    with api(tmp_path, SMARTPARK_API_FORWARDED_ALLOW_IPS=trusted) as client:
        assert "secure" not in _cookie(client)  # plain HTTP: a Secure cookie would never come back
        assert ("; secure" in _cookie(client, **{"X-Forwarded-Proto": "https"})) is secure_behind_proxy


def test_always_secure_when_configured(tmp_path: Path) -> None:
    with api(tmp_path, SMARTPARK_API_SECURE_COOKIE="always") as client:
        assert "; secure" in _cookie(client)
