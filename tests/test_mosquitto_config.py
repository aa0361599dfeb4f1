"""The repo's production Mosquitto config with `smartpark broker export` on a real Mosquitto: logins, the
export command, registry changes reaching a running broker, and the simulator against it with auth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from smartpark.mosquitto import ADMIN_USER, apply_dynsec, write_export

from factories import PARK_YAML, park_registry, wait_for
from identity_brokers import ALERTS_USER, INGEST_USER, Target, make_target, mosquitto_target, settle

pytestmark = pytest.mark.mosquitto
LIVE_S = float(os.environ.get("SMARTPARK_TEST_LIVE_S", "6"))  # acceptance 3 ran it once with 60


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    made = make_target("mosquitto", tmp_path)
    yield made
    made.close()


def test_anonymous_and_wrong_password_are_refused(target: Target) -> None:
    for user, password, client_id in [("sinter-cems", "wrong", "sinter-cems"), ("nobody", "x", "nobody"),
                                      (INGEST_USER, "wrong", f"{INGEST_USER}-1")]:
        assert target.probe(user, password, client_id).connect().is_failure, user
    import paho.mqtt.client as mqtt

    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv5)
    result: list[object] = []
    anonymous.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc)
    anonymous.connect(target.host, target.port)
    anonymous.loop_start()
    wait_for(lambda: result)
    anonymous.loop_stop()
    assert result[0].is_failure  # type: ignore[attr-defined]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smartpark", *args], env=env, capture_output=True, text=True,
                          check=False, timeout=300)


def _env(tmp_path: Path, url: str = "mqtt://smartpark-ingest:s3cret-pass@broker:1883") -> dict[str, str]:
    return {"SMARTPARK_DATA_DIR": str(tmp_path), "SMARTPARK_MQTT_URL": url, "PATH": "/usr/bin:/bin",
            "SMARTPARK_DATABASE_URL": f"sqlite:///{tmp_path / 'meta.sqlite'}"}


def test_export_command_writes_a_private_includable_fragment(tmp_path: Path) -> None:
    env = _env(tmp_path)
    park = tmp_path / "park.yaml"
    park.write_text(PARK_YAML)
    assert _run(["park", "load", str(park)], env).returncode == 0
    services = tmp_path / "services"
    services.write_text(f"{ADMIN_USER}:admin-secret\nsmartpark-alerts:alerts-secret\n")
    out = tmp_path / "conf"
    result = _run(["broker", "export", str(out), "--services-file", str(services)], env)
    assert result.returncode == 0, result.stderr
    conf = (out / "smartpark.conf").read_text()
    assert f"password_file {out.resolve()}/passwd" in conf
    assert f"plugin_opt_config_file {out.resolve()}/dynamic-security.json" in conf
    assert "allow_anonymous false" in conf
    dynsec = json.loads((out / "dynamic-security.json").read_text())
    clients = {c["username"]: c for c in dynsec["clients"]}
    assert clients["green-1"]["clientid"] == "green-1"  # bound even before it has credentials
    assert "clientid" not in clients[INGEST_USER]
    assert "password" not in json.dumps(dynsec)
    acl = (out / "acl").read_text()
    assert "user green-1\ntopic write smartpark/v1/park-green/green-1/telemetry" in acl
    assert f"user {INGEST_USER}\ntopic read smartpark/v1/#" in acl
    assert (out / "passwd").read_text().startswith(f"{ADMIN_USER}:$7$")  # no device is provisioned yet
    for name in ("passwd", "acl", "dynamic-security.json", "smartpark.conf"):
        assert oct((out / name).stat().st_mode & 0o777) == "0o600", name


@pytest.mark.parametrize("bad", ["file", "services", "device-name"])
def test_export_errors_are_clear(tmp_path: Path, bad: str) -> None:
    env = _env(tmp_path)
    park = tmp_path / "park.yaml"
    park.write_text(PARK_YAML)
    assert _run(["park", "load", str(park)], env).returncode == 0
    target, extra = tmp_path / "conf", []
    if bad == "file":
        target.write_text("not a directory")
    elif bad == "services":
        extra = ["--services-file", str(tmp_path / "missing")]
    else:
        env["SMARTPARK_MQTT_URL"] = "mqtt://ingest:pw@broker:1883"  # not in the services' namespace
    result = _run(["broker", "export", str(target), *extra], env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr
    assert {"file": "conf", "services": "missing", "device-name": "smartpark-"}[bad] in result.stderr


def test_registry_changes_reach_a_running_broker_without_losing_sessions(target: Target) -> None:
    """New device, new password, removed device: export + apply over the control topic + SIGHUP."""
    assert target.server is not None
    # the registry learns the device first (the ingest reloads its bindings at most every 5 s on a miss)
    target.registry.create_device("steel", {"id": "new-meter", "kind": "energy_meter"})
    ingest = target.start_ingest()
    watcher = target.probe("smartpark-alerts", client_id="smartpark-alerts-1")
    assert not watcher.connect().is_failure
    assert not watcher.subscribe("smartpark/v1/+/+/telemetry").is_failure
    removed = target.device("green-1")
    old_password = target.passwords["sinter-cems"]

    target.passwords["new-meter"] = target.registry.provision_device("new-meter")
    target.passwords["sinter-cems"] = target.registry.provision_device("sinter-cems")
    target.registry.delete_device("green-1")
    export = target.tmp_path / "smartpark"
    write_export(target.registry, export, target.services)
    changed = apply_dynsec(target.host, target.port, target.services[ADMIN_USER], target.registry,
                           target.services)
    assert changed == {"created": 1, "disabled": 1}
    target.server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "Reloading config" in target.server.log)

    wait_for(lambda: removed.disconnects)  # disabling a client also disconnects it
    assert target.probe("green-1").connect().is_failure
    assert target.probe("new-meter", client_id="smartpark-ingest").connect().is_failure  # bound at once
    assert target.probe("sinter-cems", old_password).connect().is_failure
    fresh = wait_for(lambda: _connected(target, "new-meter"))
    target.send_readings(fresh, "steel", "new-meter", 10)
    target.send_readings(target.device("sinter-cems"), "steel", "sinter-cems", 10)
    settle(target, "new-meter", 10)
    settle(target, "sinter-cems", 10)
    wait_for(lambda: len(watcher.messages) >= 20)
    assert watcher.disconnects == []  # the services' connections and sessions were never touched
    # the store holds the points before the writer counts their batch (acked, then counted): wait for the count
    wait_for(lambda: ingest.stats.counters["messages_committed"] >= 20)


def _connected(target: Target, device: str) -> object:
    probe = target.probe(device)
    return probe if not probe.connect().is_failure else None


# --------------------------------------------------------------- the simulator against the exported broker

SCENARIO = """
seed: 3
interval_s: 1
park: park.yaml
upsets: false
network: {jitter_ms: 0, latency_ms: 0, duplicate_rate: 0, reorder_rate: 0, malformed_rate: 0}
"""


@pytest.mark.parametrize("mode", ["live", "accelerated", "backfill-publish"])
def test_simulate_against_the_authenticated_production_config(tmp_path: Path, mode: str) -> None:
    """`smartpark simulate` in each publishing mode stores every reading of its ground truth (acceptance 3)."""
    (tmp_path / "park.yaml").write_text(PARK_YAML)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    env = _env(tmp_path / "sim", "mqtt://smartpark-ingest:unused@127.0.0.1:1")
    env["SMARTPARK_DATABASE_URL"] = f"sqlite:///{tmp_path / 'meta.sqlite'}"
    # the registry and credentials exist before the broker starts, as compose's init does it
    result = _run(["simulate", "--scenario", str(scenario), "--credentials-only"], env)
    assert result.returncode == 0, result.stderr
    made = _started_target(tmp_path)
    try:
        made.start_ingest()
        env["SMARTPARK_MQTT_URL"] = f"mqtt://smartpark-simulator:x@{made.host}:{made.port}"
        truth = tmp_path / "truth.jsonl"
        args = {"live": ["--mode", "live", "--duration", str(LIVE_S)],
                "accelerated": ["--mode", "accelerated", "--days", "0.002"],
                "backfill-publish": ["--mode", "backfill", "--publish", "--days", "0.002"]}[mode]
        result = _run(["simulate", "--scenario", str(scenario), "--truth", str(truth), *args], env)
        assert result.returncode == 0, result.stderr
        expected = _truth_readings(truth)
        assert sum(expected.values()) > 0
        for device, n in expected.items():
            settle(made, device, n)
    finally:
        made.close()


def _started_target(tmp_path: Path) -> Target:
    """A Mosquitto on the export of the registry the simulator just provisioned."""
    services = {INGEST_USER: "ingest-secret-1", ALERTS_USER: "alerts-secret-1", ADMIN_USER: "admin-secret-1"}
    return mosquitto_target(park_registry(tmp_path), tmp_path, {}, services)


def _truth_readings(path: Path) -> dict[str, int]:
    seen: dict[str, set[int]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("type") == "reading":
            seen.setdefault(row["device"], set()).add(row["sent_ts"])
    return {d: len(ts) for d, ts in seen.items()}


def test_export_apply_command_binds_a_new_device_on_the_running_broker(target: Target) -> None:
    target.registry.create_device("steel", {"id": "late-meter", "kind": "energy_meter"})
    services = target.tmp_path / "services"
    services.write_text("".join(f"{name}:{pw}\n" for name, pw in target.services.items()))
    env = _env(target.tmp_path / "cli", f"mqtt://{INGEST_USER}:{target.services[INGEST_USER]}@{target.host}:"
                                        f"{target.port}")
    env["SMARTPARK_DATABASE_URL"] = f"sqlite:///{target.tmp_path / 'meta.sqlite'}"
    result = _run(["broker", "export", str(target.tmp_path / "smartpark"), "--services-file", str(services),
                   "--apply"], env)
    assert result.returncode == 0, result.stderr
    assert "1 identities added, 0 disabled" in result.stderr
    # bound before it even has a password: once it gets one, no other client id will do
    password = target.passwords["late-meter"] = target.registry.provision_device("late-meter")
    write_export(target.registry, target.tmp_path / "smartpark", target.services)
    assert target.server is not None
    target.server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: _connected(target, "late-meter"))
    assert target.probe("late-meter", password, "smartpark-alerts").connect().is_failure
