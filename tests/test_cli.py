"""The command line as a user runs it: `smartpark up` end to end, and the registry commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from smartpark.core.registry import read_park_file
from smartpark.platform import demo_park_path

from factories import PARK_YAML, forget_session, wait_for
from servers import MosquittoServer, free_port


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
    assert "Traceback" not in output, output


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


def test_keys_list_and_revoke(tmp_path: Path) -> None:
    """Issue 13: keys could be created from the command line but neither listed nor revoked."""
    park = tmp_path / "park.yaml"
    park.write_text(PARK_YAML)
    assert run(tmp_path, "park", "load", str(park)).returncode == 0
    site_key = run(tmp_path, "keys", "create", "--role", "site", "--site", "steel", "--site", "park-green").stdout
    admin_key = run(tmp_path, "keys", "create", "--role", "admin").stdout.strip()
    site_id, admin_id = site_key.split("_")[1], admin_key.split("_")[1]
    listed = run(tmp_path, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows[site_id][1:3] == ["site", "steel,park-green"]
    assert rows[site_id][-1] == rows[admin_id][-1] == "active"
    assert site_key.split("_", 2)[2].strip() not in listed.stdout  # never a secret (which may hold "_" itself)
    revoked = run(tmp_path, "keys", "revoke", site_id)
    assert revoked.returncode == 0, revoked.stderr
    assert run(tmp_path, "keys", "revoke", admin_key).returncode == 0  # the key itself names its id too
    states = {line.split()[0]: line.split()[-1] for line in run(tmp_path, "keys", "list").stdout.splitlines()[1:]}
    assert states == {site_id: "revoked", admin_id: "revoked"}
    unknown = run(tmp_path, "keys", "revoke", "[nope]")
    assert unknown.returncode == 1
    assert "no API key with id '[nope]'" in unknown.stderr


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


# ------------------------------------------------------------------------------------------------ operations
def _modes(data_dir: Path) -> dict[str, str]:
    """Every path under the data dir (and itself) whose mode lets anyone but the owner in."""
    paths = [data_dir, *data_dir.rglob("*")]
    return {str(p.relative_to(data_dir.parent)): oct(p.stat().st_mode & 0o777) for p in paths
            if p.stat().st_mode & 0o077}


class UpProcess:
    """`smartpark up` in a data dir, its output in a log file."""

    def __init__(self, tmp_path: Path, *args: str, ignore_sigint: bool = False) -> None:
        self.log = tmp_path / f"up-{free_port()}.log"
        self.api_port = free_port()
        env = _env(tmp_path, SMARTPARK_API_PORT=str(self.api_port), SMARTPARK_MQTT_EMBEDDED_PORT=str(free_port()),
                   SMARTPARK_HJ212_PORT=str(free_port()))  # not 9212: another smartpark on the machine may hold it
        # A shell starts a background job (`smartpark up &`) with SIGINT ignored; the child inherits that.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore_sigint else None
        try:
            with self.log.open("w") as log:
                self.proc = subprocess.Popen([sys.executable, "-m", "smartpark", "up", *args], cwd=tmp_path,
                                             env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        wait_for(lambda: text in self.output() or self.proc.poll() is not None, timeout=timeout)
        assert text in self.output(), self.output()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def running_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, UpProcess]]:
    tmp_path = tmp_path_factory.mktemp("up")
    up = UpProcess(tmp_path, "--no-simulate")
    try:
        up.wait_for_output("smartpark is up")
        yield tmp_path, up
    finally:
        up.stop()


def test_db_init_creates_private_files(tmp_path: Path) -> None:
    result = run(tmp_path, "db", "init")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "meta.sqlite").exists()
    assert _modes(tmp_path / "data") == {}  # was: data 0o755, meta.sqlite and timeseries.sqlite 0o644


def test_up_creates_private_files_and_admin_key(running_up: tuple[Path, UpProcess]) -> None:
    tmp_path, _ = running_up
    data = tmp_path / "data"
    assert {"admin.key", "meta.sqlite", "timeseries.sqlite", "dead-letters.sqlite"} <= {p.name for p in data.iterdir()}
    assert _modes(data) == {}  # was: the data dir 0o755, its databases 0o644


def test_a_second_up_on_the_same_data_dir_exits_with_a_clear_message(running_up: tuple[Path, UpProcess]) -> None:
    tmp_path, first = running_up
    second = run(tmp_path, "up", "--no-simulate", SMARTPARK_API_PORT=str(free_port()),
                 SMARTPARK_MQTT_EMBEDDED_PORT=str(free_port()))
    assert second.returncode == 1
    assert f"data dir {tmp_path / 'data'} is in use by another `smartpark up` (pid {first.proc.pid})" in \
        second.stderr.replace("\n", "")
    assert "Traceback" not in second.stderr
    assert first.proc.poll() is None  # the first one is untouched


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["terminal", "background-job"])
def test_ctrl_c_during_start_up_stops_promptly(tmp_path: Path, ignore_sigint: bool) -> None:
    up = UpProcess(tmp_path, ignore_sigint=ignore_sigint)
    try:
        up.wait_for_output(" devices")  # the park is loaded: broker, ingest, alerts, API, simulator still to start
        up.proc.send_signal(signal.SIGINT)
        code = up.proc.wait(timeout=30)  # before: ignored (background job), or died without stopping its parts
    finally:
        up.stop()
    output = up.output()
    assert code == 0, output
    assert "stopped." in output
    assert "smartpark is up" not in output
    assert "Traceback" not in output


def test_errors_are_plain_text_not_markup(tmp_path: Path) -> None:
    result = run(tmp_path, "park", "load", "[/x].yaml")  # was: rich's MarkupError, a traceback
    assert result.returncode == 1
    assert "[/x].yaml" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [("db", "init"), ("broker", "export", "{file}/mosquitto")], ids=["data-dir", "export"])
def test_a_bad_path_is_a_clear_error_not_a_traceback(tmp_path: Path, args: tuple[str, ...]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    result = run(tmp_path, *(a.format(file=a_file) for a in args), SMARTPARK_DATA_DIR=str(a_file / "data"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert str(a_file) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.mosquitto
def test_standalone_ingest_metrics_listen_on_loopback(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    port = free_port()
    env = _env(tmp_path, SMARTPARK_MQTT_URL=f"mqtt://{mosquitto.host}:{mosquitto.port}",
               SMARTPARK_INGEST_METRICS_PORT=str(port), SMARTPARK_INGEST_CLIENT_ID=f"smartpark-ingest-{port}")
    log = tmp_path / "ingest.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "smartpark", "ingest"], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "ingest subscribed" in log.read_text() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, log.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
        assert _listening(port) == ["127.0.0.1"]  # was 0.0.0.0: every interface
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        forget_session(mosquitto.host, mosquitto.port, f"smartpark-ingest-{port}")


def _listening(port: int) -> list[str]:
    """Addresses with a TCP socket listening on ``port`` (Linux /proc/net/tcp: hex address, state 0A)."""
    found = []
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_a_park_is_checked_against_the_parks_own_screening_file(tmp_path: Path) -> None:
    """SMARTPARK_SCREENING_FILE is the park's: a process only it knows is accepted in the park file (the check
    used the shipped file whatever the setting, and refused it)."""
    from factories import park_yaml

    own = tmp_path / "screening.yaml"
    shipped = (Path(__file__).resolve().parent.parent / "core" / "data" / "screening.yaml").read_text()
    own.write_text(shipped.replace("processes:\n", "processes:\n  pelletising:\n    name: pelletising\n"
                                   "    sector: steel\n    confidence: U\n    source: the park's own study\n", 1))
    park = tmp_path / "park.yaml"
    pellets = "id: pellet-line, kind: energy_meter, parent: steel-main, process: pelletising"
    park.write_text(park_yaml("own-park", ["id: steel-main, kind: energy_meter", pellets]))
    refused = run(tmp_path, "park", "load", str(park))
    assert refused.returncode != 0  # the shipped data does not know it
    assert "pelletising" in refused.stderr
    loaded = run(tmp_path, "park", "load", str(park), SMARTPARK_SCREENING_FILE=str(own))
    assert loaded.returncode == 0, loaded.stderr
