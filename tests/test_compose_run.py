"""docker-compose.yml run without Docker: every smartpark service's command, with exactly the environment
compose gives it, against a real Mosquitto and InfluxDB, until its own healthcheck passes.

What a container would see is rebuilt from the files themselves: deploy/.env.example filled with generated
secrets, interpolated as compose does (tests/test_compose.py:interpolate), merged over the image's ENV
(Dockerfile), entrypoint + command. One documented override maps the container world onto this machine, and
nothing else is changed:
- compose network names -> the local servers: ``mosquitto:1883`` -> the test's Mosquitto (running
  deploy/mosquitto/mosquitto.conf with the files `init` exported), ``http://influxdb:8086`` -> the test's
  influxd (auth on, the admin created from INFLUXDB_ADMIN_* as the image does on its first start), and the
  proxy's edge network (SMARTPARK_EDGE_SUBNET, a user setting) -> loopback, where the test plays Caddy;
- volumes -> directories under tmp_path (``/var/lib/smartpark`` is per container, as the image's VOLUME);
- a container's own ports (those its healthcheck probes) -> free local ports; ``0.0.0.0`` -> ``127.0.0.1``;
  PID 1 (the process-alive probe) -> the service's process; ``/opt/smartpark/bin`` -> this venv.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_compose import COMPOSE_FILE, ENV_EXAMPLE, ROOT, SECRET_KEY, interpolate

from servers import InfluxServer, MosquittoServer, free_port, need, start_influxd, start_mosquitto

pytestmark = [pytest.mark.influx, pytest.mark.mosquitto]
WAIT_S = 90.0


def filled_env(workdir: Path) -> dict[str, str]:
    """deploy/.env.example filled as the README's production steps fill it (their secrets one-liner)."""
    steps = re.search(r"### Steps\n+```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)  # type: ignore[union-attr]
    fill = next(line for line in steps.splitlines() if "secrets.token_urlsafe" in line)
    workdir.mkdir()
    (workdir / ".env").write_text(ENV_EXAMPLE.read_text())
    subprocess.run(["bash", "-c", fill], cwd=workdir, check=True, timeout=30)
    rows = [r.partition("=") for r in (workdir / ".env").read_text().splitlines() if r and not r.startswith("#")]
    env = {k: v for k, _, v in rows}
    assert all(v for k, v in env.items() if SECRET_KEY.search(k)), "the README's step left a secret empty"
    env["SMARTPARK_EDGE_SUBNET"] = "127.0.0.0/8"  # the proxy's network is the loopback here
    return env


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's runtime stage (what every smartpark container starts with)."""
    text = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1]
    block = re.search(r"^ENV (.*?)(?<!\\)$", text, re.M | re.S).group(1)  # type: ignore[union-attr]
    pairs = re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " "))
    return {k: v.replace("$PATH", os.environ["PATH"]) for k, v in pairs}


@dataclass
class Container:
    name: str
    spec: dict[str, Any]
    env: dict[str, str]
    argv: list[str]
    health: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_probe: str = ""

    @property
    def log(self) -> str:
        return (self.workdir / "container.log").read_text(errors="replace")

    def start(self) -> None:
        with (self.workdir / "container.log").open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.workdir, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def healthy(self) -> bool:
        assert self.proc is not None
        health = [a.replace("os.kill(1, 0)", f"os.kill({self.proc.pid}, 0)") for a in self.health]
        done = subprocess.run(health, env=self.env, cwd=self.workdir, capture_output=True, timeout=30, check=False)
        self.last_probe = f"{health} -> {done.returncode}: {done.stdout.decode()}{done.stderr.decode()}"[-1500:]
        return done.returncode == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@dataclass
class Stack:
    tmp: Path
    dotenv: dict[str, str]
    services: dict[str, Any]
    influx: InfluxServer
    network: dict[str, str] = field(default_factory=dict)
    containers: list[Container] = field(default_factory=list)
    mosquitto: MosquittoServer | None = None

    def volume(self, container_path: str, service: str) -> str:
        local = self.tmp / ("data-" + service if container_path == "/var/lib/smartpark" else
                            container_path.strip("/").replace("/", "_"))
        local.mkdir(exist_ok=True)
        return str(local)

    def localize(self, text: str, service: str, ports: dict[int, int]) -> str:
        for container, local in sorted(self.network.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(container, local)
        for path in ("/var/lib/smartpark-meta", "/srv/mosquitto-auth", "/var/lib/smartpark"):
            text = text.replace(path, self.volume(path, service))
        for inside, outside in ports.items():
            text = re.sub(rf"(127\.0\.0\.1:|-p ){inside}\b", rf"\g<1>{outside}", text)
        return text.replace("/opt/smartpark/bin", str(Path(sys.executable).parent))

    def container(self, name: str, command: list[str] | None = None) -> Container:
        spec = self.services[name]
        health = spec["healthcheck"]["test"]
        probed = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", " ".join(health))]
        ports = {p: free_port() for p in probed}
        env = image_env() | {k: str(v) for k, v in (spec.get("environment") or {}).items()}
        env = {k: str(ports.get(int(v), v)) if v.isdigit() else v.replace("0.0.0.0", "127.0.0.1")  # noqa: S104
               for k, v in env.items()}
        env = {k: self.localize(v, name, ports) for k, v in env.items()}
        entry = spec.get("entrypoint") or ["smartpark"]
        argv = [self.localize(a, name, ports) for a in entry + (command or spec.get("command") or [])]
        probe = health[1:] if health[0] == "CMD" else ["sh", "-c", health[1]]
        c = Container(name, spec, env, argv, [self.localize(a, name, ports) for a in probe],
                      Path(self.volume("/var/lib/smartpark", name)))
        self.containers.append(c)
        return c

    def run_once(self, name: str, command: list[str] | None = None, *, extra: list[str] | None = None) -> str:
        """`docker compose run --rm NAME [command]`: runs to completion; returns its output."""
        c = self.container(name, command)
        argv = c.argv + (extra or [])
        done = subprocess.run(argv, env=c.env, cwd=c.workdir, capture_output=True, text=True, timeout=180,
                              check=False)
        assert done.returncode == 0, f"{name} {argv[-1]!r} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr


def wait_healthy(c: Container, *, also: Any = None, restart: bool = False) -> None:
    """Until the healthcheck passes (and ``also()``); with ``restart`` an exited service is started again,
    as compose's `restart: unless-stopped` does."""
    assert c.proc is not None
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if c.proc.poll() is not None:
            assert restart, f"{c.name} exited with {c.proc.returncode}:\n{c.log[-3000:]}"
            c.restarts += 1
            c.start()
        elif c.healthy() and (also is None or also()):
            return
        time.sleep(0.5)
    raise AssertionError(f"{c.name} not healthy in {WAIT_S:.0f} s:\n{c.log[-3000:]}\nprobe: {c.last_probe}")


def local_mosquitto_config(stack: Stack) -> str:
    """deploy/mosquitto/mosquitto.conf on the volumes' local directories (start_mosquitto adds the listener)."""
    text = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    # the devices' TLS listener needs the deployment's certificate (TLS: tests/test_mqtt_tls.py)
    text = re.sub(r"(?m)^(listener|log_dest|certfile|keyfile) .*$", "", text)
    auth = stack.volume("/srv/mosquitto-auth", "mosquitto")  # the mosquitto-auth volume, as init wrote it
    data = stack.tmp / "mosquitto-data"
    data.mkdir(exist_ok=True)
    local_fragment(stack)
    return text.replace("/mosquitto/smartpark", str(auth)).replace("/mosquitto/data/", f"{data}/")


def local_fragment(stack: Stack) -> None:
    """Compose mounts the export volume at /mosquitto/smartpark, where init's export points its fragment's
    paths: here the volume is a local directory."""
    auth = stack.volume("/srv/mosquitto-auth", "mosquitto")
    fragment = Path(auth) / "smartpark.conf"
    fragment.write_text(fragment.read_text().replace("/mosquitto/smartpark/", f"{auth}/"))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    need("mosquitto_sub")  # mosquitto's own healthcheck (Debian: mosquitto-clients)
    dotenv = filled_env(tmp_path / "project")
    services = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), dotenv))["services"]
    admin = (dotenv["INFLUXDB_ADMIN_USER"], dotenv["INFLUXDB_ADMIN_PASSWORD"])
    influx = start_influxd(tmp_path / "influxd", admin=admin)  # the image's first start: auth on, this admin
    s = Stack(tmp_path, dotenv, services, influx, network={"http://influxdb:8086": influx.url})
    try:
        yield s
    finally:
        for c in reversed(s.containers):
            c.stop()
        if s.mosquitto is not None:
            s.mosquitto.stop()
        influx.stop()


def _influx(stack: Stack, path: str, auth: tuple[str, str], **data: str) -> httpx.Response:
    if path == "/write":
        return httpx.post(f"{stack.influx.url}/write", params=data, content=b"energy,site=x,device=y power_kw=1",
                          auth=auth, timeout=10)
    return httpx.post(f"{stack.influx.url}/query", data=data, auth=auth, timeout=10)


def test_the_compose_stack_starts_healthy_with_least_privilege(stack: Stack) -> None:
    env, db = stack.dotenv, stack.dotenv["SMARTPARK_INFLUX_DB"]
    # 1. init: db init (migrations, InfluxDB database, the services' users) and broker export; exits 0
    init = stack.container("init")
    init.start()
    assert init.proc is not None
    assert init.proc.wait(timeout=180) == 0, init.log
    assert "smartpark-api (READ)" in init.log
    assert env["INFLUXDB_ADMIN_PASSWORD"] not in init.log

    # 2. mosquitto on the exported passwd/acl; its own healthcheck logs in as the ingest
    stack.mosquitto = start_mosquitto(local_mosquitto_config(stack), stack.tmp / "mosquitto")
    stack.network["mosquitto:1883"] = f"127.0.0.1:{stack.mosquitto.port}"
    probe = stack.services["mosquitto"]["healthcheck"]["test"][1]
    probe = re.sub(r"-p 1883\b", f"-p {stack.mosquitto.port}", probe)
    probe_env = os.environ | stack.services["mosquitto"]["environment"]
    assert subprocess.run(["sh", "-c", probe], env=probe_env, timeout=30, check=False).returncode == 0

    # 3. the long-running services, each until its healthcheck passes
    # (a process-alive probe passes at once: the alert engine must also have said it subscribed)
    running = {name: stack.container(name) for name in ("ingest", "api", "alerts")}
    for c in running.values():
        c.start()
    wait_healthy(running["ingest"])
    wait_healthy(running["api"])
    wait_healthy(running["alerts"], also=lambda: "alert engine subscribed to" in running["alerts"].log)

    # 4. README: an admin key, then the demo simulator; after `broker export` + a mosquitto reload its devices
    # connect (it keeps their passwords across its restarts), and readings flow through to the API
    key = stack.run_once("api", ["keys", "create", "--role", "admin"], extra=[]).strip().splitlines()[-1]
    sim = stack.container("simulator")
    sim.start()
    creds = sim.workdir / "simulator-credentials.json"
    deadline = time.monotonic() + WAIT_S
    while not (creds.exists() and creds.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    stack.run_once("init", ["smartpark broker export /srv/mosquitto-auth --broker-dir /mosquitto/smartpark"])
    local_fragment(stack)
    stack.mosquitto.proc.send_signal(signal.SIGHUP)
    api_port = running["api"].env["SMARTPARK_API_PORT"]
    base_url = f"http://127.0.0.1:{api_port}"

    def readings_arrive() -> bool:
        latest = httpx.get(f"{base_url}/v1/sites/steel-works/latest", headers={"Authorization": f"Bearer {key}"})
        return latest.status_code == 200 and "power_kw" in latest.text

    wait_healthy(sim, also=readings_arrive, restart=True)

    # 5. least privilege: every service runs as its own user, the API's and Grafana's cannot write
    def login(service: str) -> tuple[str, str]:
        e = stack.services[service]["environment"]
        if service == "grafana":
            return e["GF_SMARTPARK_INFLUX_USER"], e["GF_SMARTPARK_INFLUX_PASSWORD"]
        return e["SMARTPARK_INFLUX_USERNAME"], e["SMARTPARK_INFLUX_PASSWORD"]

    assert _influx(stack, "/write", login("api"), db=db).status_code == 403
    assert _influx(stack, "/write", login("grafana"), db=db).status_code == 403
    assert _influx(stack, "/write", login("ingest"), db=db).status_code == 204
    # the ingest reads back too: stored values to audit rewrites, raw windows to repair rollups
    assert _influx(stack, "/query", login("ingest"), db=db, q='SELECT * FROM "energy" LIMIT 1').status_code == 200
    read = _influx(stack, "/query", login("grafana"), db=db, q='SELECT count("power_kw") FROM "energy"')
    assert read.status_code == 200
    assert "series" in read.text
    users = _influx(stack, "/query", (env["INFLUXDB_ADMIN_USER"], env["INFLUXDB_ADMIN_PASSWORD"]), q="SHOW USERS")
    assert {(u, admin) for u, admin in users.json()["results"][0]["series"][0]["values"]} == {
        ("admin", True), ("smartpark-ingest", False), ("smartpark-alerts", False), ("smartpark-api", False),
        ("smartpark-grafana", False)}

    # 6. the overview login works over plain HTTP (cookie not Secure) and behind the TLS proxy (Secure)
    origin = {"Origin": base_url}  # as a browser posts the login form (the CSRF check)
    with httpx.Client(base_url=base_url, timeout=10, headers=origin) as plain:
        resp = plain.post("/login", data={"api_key": key})
        assert resp.status_code == 303
        assert "secure" not in resp.headers["set-cookie"].lower()
        assert 'name="api_key"' not in plain.get("/").text  # logged in: the page, not the login form
    with httpx.Client(base_url=base_url, timeout=10, headers={"X-Forwarded-Proto": "https", **origin}) as proxied:
        resp = proxied.post("/login", data={"api_key": key})
        assert "; secure" in resp.headers["set-cookie"].lower()

    # 7. no secret of .env in any service's output
    for c in stack.containers:
        if c.proc is not None:
            leaked = [k for k, v in env.items() if SECRET_KEY.search(k) and v in c.log]
            assert leaked == [], f"{c.name} logged {leaked}"
