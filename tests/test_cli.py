"""The command line as a user runs it: `smartpark up` end to end, and the registry commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from smartpark.core.registry import read_park_file
from smartpark.platform import demo_park_path

from factories import PARK_YAML, wait_for
from servers import free_port


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")}
    return {**env, "SMARTPARK_DATA_DIR": str(tmp_path / "data"), **extra}


def run(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smartpark", *args], cwd=tmp_path, env=_env(tmp_path, **extra),
                          capture_output=True, text=True, timeout=120, check=False)


def test_up_serves_latest_values_of_every_demo_site_and_stops_cleanly(tmp_path: Path) -> None:
    api_port = free_port()
    env = _env(tmp_path, SMARTPARK_API_PORT=str(api_port), SMARTPARK_MQTT_EMBEDDED_PORT=str(free_port()),
               SMARTPARK_HJ212_PORT=str(free_port()))
    started = time.monotonic()
    with (tmp_path / "up.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "smartpark", "up", "--interval", "2"], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        key_file = tmp_path / "data" / "admin.key"
        wait_for(lambda: key_file.exists() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
        sites = [s.id for s in read_park_file(demo_park_path()).sites]
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=headers, timeout=10) as api:
            assert api.get("/v1/sites").json()["total"] == len(sites)

            def all_sites_have_values() -> bool:
                return all(api.get(f"/v1/sites/{s}/latest").json() for s in sites)

            wait_for(all_sites_have_values, timeout=60 - (time.monotonic() - started), every=1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (tmp_path / "up.log").read_text()
    assert "smartpark is up" in output
    assert "stopped." in output
    assert "Traceback" not in output


def test_db_init_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        result = run(tmp_path, "db", "init")
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "meta.sqlite").exists()
    assert (tmp_path / "data" / "timeseries.sqlite").exists()


def test_db_init_on_influx(tmp_path: Path, influxd: object) -> None:
    url = influxd.url  # type: ignore[attr-defined]
    for _ in range(2):
        result = run(tmp_path, "db", "init", SMARTPARK_INFLUX_URL=url, SMARTPARK_INFLUX_DB="cli_init")
        assert result.returncode == 0, result.stderr
    dbs = httpx.get(f"{url}/query", params={"q": "SHOW DATABASES"}).json()
    assert ["cli_init"] in dbs["results"][0]["series"][0]["values"]


def test_park_load_and_keys(tmp_path: Path) -> None:
    park = tmp_path / "park.yaml"
    park.write_text(PARK_YAML)
    result = run(tmp_path, "park", "load", str(park))
    assert result.returncode == 0, result.stderr
    assert "2 sites, 3 devices" in result.stderr
    key = run(tmp_path, "keys", "create", "--role", "site", "--site", "steel")
    assert key.returncode == 0, key.stderr
    assert key.stdout.startswith("sp_")
    assert key.stdout.count("\n") == 1  # the key alone, so scripts can capture it
    bad = run(tmp_path, "keys", "create", "--role", "site", "--site", "atlantis")
    assert bad.returncode == 1
    assert "unknown site(s): atlantis" in bad.stderr


def test_park_load_names_line_and_key(tmp_path: Path) -> None:
    park = tmp_path / "park.yaml"
    park.write_text(PARK_YAML.replace("industry: steel", "industry: steel\n    colour: grey"))
    result = run(tmp_path, "park", "load", str(park))
    assert result.returncode == 1
    assert f"{park}:8:" in result.stderr.replace("\n", "")
    assert "colour" in result.stderr


def test_bad_configuration_is_reported_before_any_io(tmp_path: Path) -> None:
    result = run(tmp_path, "db", "init", SMARTPARK_INFLUX_URL="localhost:8086")
    assert result.returncode == 1
    assert "SMARTPARK_INFLUX_URL" in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", ["up", "ingest", "api", "alerts", "simulate", "db", "park", "keys"])
def test_every_command_has_help(tmp_path: Path, command: str) -> None:
    result = run(tmp_path, command, "--help")
    assert result.returncode == 0
    assert "Usage" in result.stdout
