"""The production stack, proven as far as it can be without a Docker engine.

docker-compose.yml is validated against the compose-spec schema (check-jsonschema's vendored copy), and
everything it names is checked to exist: depends_on targets, named volumes, bind-mounted files, the build
context and its Dockerfile. Images are pinned, every service has a healthcheck, secrets come from .env and
fail fast when missing, and deploy/.env.example lists exactly the variables the file uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")
SECRET_KEY = re.compile(r"PASSWORD|TOKEN|SECRET")


def _check_jsonschema() -> str:
    path = Path(sys.executable).with_name("check-jsonschema")
    found = str(path) if path.exists() else shutil.which("check-jsonschema")
    assert found, "check-jsonschema is missing: pip install -e '.[test]'"
    return found


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_compose_file_matches_the_compose_spec() -> None:
    result = _validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_catches_mistakes(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a misspelt key and a bad depends_on condition fail."""
    for mutate in (lambda c: c["services"]["api"].update(helthcheck={}),
                   lambda c: c["services"]["api"]["depends_on"]["influxdb"].update(condition="service_ready")):
        broken = yaml.safe_load(COMPOSE_FILE.read_text())
        mutate(broken)
        path = tmp_path / "docker-compose.yml"
        path.write_text(yaml.safe_dump(broken))
        assert _validate(path).returncode != 0


def test_depends_on_targets_exist_with_conditions() -> None:
    for name, service in SERVICES.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in SERVICES, (name, target)
            wanted = "service_completed_successfully" if target == "init" else "service_healthy"
            assert spec["condition"] == wanted, (name, target)
    assert "init" not in SERVICES["init"].get("depends_on", {})
    for name in ("ingest", "api", "alerts", "simulator", "mosquitto"):
        assert SERVICES[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out.append((source, target))
    return out


def test_volumes_and_bind_mounts_exist() -> None:
    declared = set(COMPOSE["volumes"])
    used = set()
    for name, service in SERVICES.items():
        for source, _ in _mounts(service):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), (name, source)
            else:
                assert source in declared, (name, source)
                used.add(source)
    assert used == declared  # no orphan volumes either


def test_build_context_env_files_and_dockerfile_exist() -> None:
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for env_file in service.get("env_file", []):
            assert (ROOT / env_file).is_file(), (name, env_file)


def test_every_image_is_pinned_and_every_service_healthchecked() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, service in SERVICES.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: {image} has no tag"
        assert tag != "latest"
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?(-[a-z0-9.-]+)?", tag), f"{name}: {image} is not a version tag"
        if "build" in service:
            assert image == f"smartpark:{version}", name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert len(test) > 1, name
    assert SERVICES["influxdb"]["image"].startswith("influxdb:1.11.")
    assert SERVICES["mosquitto"]["image"].startswith("eclipse-mosquitto:2.")
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana-oss:11.")


def _variables() -> list[tuple[str, str | None, str]]:
    return [(m.group(1), m.group(2), m.group(3) or "") for m in VARIABLE.finditer(COMPOSE_FILE.read_text())]


def test_secrets_are_required_with_no_defaults() -> None:
    """Every password reaches a container only through a `${VAR:?message}` that stops `up` when unset."""
    required = {name for name, op, _ in _variables() if op == ":?"}
    assert {"INFLUXDB_ADMIN_PASSWORD", "INFLUXDB_INGEST_PASSWORD", "INFLUXDB_ALERTS_PASSWORD", "INFLUXDB_API_PASSWORD",
            "INFLUXDB_GRAFANA_PASSWORD", "MQTT_INGEST_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
            "SMARTPARK_API_SESSION_SECRET"} <= required
    for name, op, default in _variables():
        if SECRET_KEY.search(name):
            assert op == ":?", f"{name} must be required"
            assert default, f"{name} needs a message"
    for service in SERVICES.values():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert VARIABLE.search(str(value)), f"{key} is not taken from .env"


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ${VAR}, ${VAR:-default} and ${VAR:?error} (what `up` does first)."""
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name, "")
        if op == ":?" and not value:
            raise ValueError(f"required variable {name} is missing a value: {arg}")
        return value if value or op != ":-" else arg
    return VARIABLE.sub(sub, text.replace("$$", "\0")).replace("\0", "$")


def _env_example() -> dict[str, str]:
    rows = [r.partition("=") for r in ENV_EXAMPLE.read_text().splitlines() if r and not r.startswith("#")]
    return {key: value for key, _, value in rows}


def test_env_example_lists_exactly_the_variables_used() -> None:
    assert set(_env_example()) == {name for name, _, _ in _variables()}


def test_missing_secret_fails_fast_and_filled_example_resolves() -> None:
    env = _env_example()
    filled = _filled()
    empty = [k for k, v in env.items() if not v and SECRET_KEY.search(k)]
    assert empty  # the example ships no secrets
    for name in empty:
        with pytest.raises(ValueError, match=f"required variable {name} "):
            interpolate(COMPOSE_FILE.read_text(), filled | {name: ""})
    resolved = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), filled))
    url = resolved["services"]["ingest"]["environment"]["SMARTPARK_MQTT_URL"]
    assert url == "mqtt://smartpark-ingest:s3cret-mqtt_ingest_password@mosquitto:1883"
    assert resolved["services"]["grafana"]["environment"]["GF_SMARTPARK_INFLUX_PASSWORD"] == \
        "s3cret-influxdb_grafana_password"


def test_mosquitto_runs_the_repo_config_with_exported_auth() -> None:
    """The tested config (tests/test_mosquitto_config.py) is the one mounted; it includes the directory init
    exports into (`smartpark broker export DIR --broker-dir` where the broker mounts DIR)."""
    mosquitto = dict(_mounts(SERVICES["mosquitto"]))
    assert mosquitto["./deploy/mosquitto/mosquitto.conf"] == "/mosquitto/config/mosquitto.conf"
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    included = re.search(r"^include_dir (\S+)", conf, re.M).group(1)  # type: ignore[union-attr]
    auth_volume = next(s for s, t in mosquitto.items() if t == included)
    export_dir = dict(_mounts(SERVICES["init"]))[auth_volume]
    command = " ".join(SERVICES["init"]["command"])
    assert f"broker export {export_dir}" in command
    assert export_dir == included or f"--broker-dir {included}" in command
    persistence = re.search(r"^persistence_location (\S+)", conf, re.M).group(1)  # type: ignore[union-attr]
    assert persistence.rstrip("/") in mosquitto.values()


def test_ingest_scales_with_a_shared_subscription() -> None:
    ingest = SERVICES["ingest"]
    assert "container_name" not in ingest
    assert "ports" not in ingest
    assert ingest["environment"]["SMARTPARK_INGEST_SHARED"]
    assert "SMARTPARK_INGEST_CLIENT_ID=smartpark-ingest-$$(hostname)" in COMPOSE_FILE.read_text()
    assert SERVICES["simulator"]["profiles"] == ["simulator"]


def test_dockerfile_is_multistage_pinned_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base)
    assert len(re.findall(r"^FROM \$\{PYTHON_IMAGE\} AS \w+", text, re.M)) == 2
    assert re.search(r"^USER smartpark$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["smartpark"\]$', text, re.M)
    copied = set(re.findall(r"^COPY (?!--from)(\S+) ", text, re.M))
    for source in copied:
        assert (ROOT / source).exists(), source
    # smartpark/ and every service folder it links in (smartpark/ingest -> ../ingest)
    package_dirs = {"smartpark"} | {p.resolve().name for p in (ROOT / "smartpark").iterdir() if p.is_symlink()}
    assert len(package_dirs) > 5
    assert package_dirs <= copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not package_dirs & set(ignored)



def _filled() -> dict[str, str]:
    """deploy/.env.example with every secret filled in (the optional empty values stay empty)."""
    return {k: v or (f"s3cret-{k.lower()}" if SECRET_KEY.search(k) else "") for k, v in _env_example().items()}


def _resolved() -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), _filled()))["services"]


def test_only_what_faces_the_network_is_published() -> None:
    """HTTPS (Caddy) and MQTT over TLS on every interface; the API and Grafana on loopback; nothing else."""
    public, loopback = {}, {}
    for name, service in _resolved().items():
        for port in service.get("ports", []):
            host, _, container = str(port).rpartition(":")
            (loopback if host.startswith("127.0.0.1:") else public).setdefault(name, set()).add(int(container))
    assert public == {"caddy": {443, 80}, "mosquitto": {8883}}
    assert loopback == {"api": {8000}, "grafana": {3000}}


def test_each_service_gets_only_its_own_influx_user() -> None:
    """The admin goes to init alone; the API reads as its own user (refused writes: test_compose_run)."""
    services = _resolved()
    users = {name: (s.get("environment") or {}).get("SMARTPARK_INFLUX_USERNAME")
             for name, s in services.items() if "build" in s}
    assert users == {"init": None, "ingest": "smartpark-ingest", "api": "smartpark-api", "alerts": "smartpark-alerts",
                     "simulator": "smartpark-ingest"}
    for name, service in services.items():
        env = service.get("environment") or {}
        admin = {k for k, v in env.items() if v == "s3cret-influxdb_admin_password"}
        assert admin == ({"SMARTPARK_INFLUX_ADMIN_PASSWORD"} if name == "init" else
                         {"INFLUXDB_ADMIN_PASSWORD"} if name == "influxdb" else set()), name
        if name != "init":
            assert not any(k.startswith(("SMARTPARK_INFLUX_INGEST", "SMARTPARK_INFLUX_API")) for k in env), name
    assert "SMARTPARK_API_SESSION_SECRET" in services["api"]["environment"]
    assert [n for n, s in services.items() if "SMARTPARK_API_SESSION_SECRET" in (s.get("environment") or {})] == ["api"]
    assert services["grafana"]["environment"]["GF_SMARTPARK_INFLUX_USER"] == "smartpark-grafana"


def test_the_tls_proxy_fronts_the_api_and_grafana() -> None:
    services = _resolved()
    caddy = services["caddy"]
    assert caddy["networks"] == ["edge"]
    assert dict(_mounts(SERVICES["caddy"]))["./deploy/caddy/Caddyfile"] == "/etc/caddy/Caddyfile"
    caddyfile = (ROOT / "deploy/caddy/Caddyfile").read_text()
    assert "reverse_proxy api:8000" in caddyfile
    assert "reverse_proxy grafana:3000" in caddyfile
    assert "tls {$SMARTPARK_TLS}" in caddyfile
    subnet = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), _filled()))["networks"]["edge"]["ipam"]["config"][0][
        "subnet"]
    assert services["api"]["environment"]["SMARTPARK_API_FORWARDED_ALLOW_IPS"] == subnet
    assert {"default", "edge"} == set(services["api"]["networks"]) == set(services["grafana"]["networks"])
    assert services["grafana"]["environment"]["GF_SERVER_ROOT_URL"] == "https://localhost/grafana/"
