"""Simulated devices keep their MQTT credentials between runs, so a broker that learnt them keeps accepting them."""

from __future__ import annotations

from pathlib import Path

from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.registry.secrets import verify_password
from smartpark.simulators.credentials import simulator_credentials

from factories import PARK_YAML

DEVICES = ["sinter-cems", "steel-meter", "green-1"]


def test_credentials_are_kept_and_renewed_only_when_stale(tmp_path: Path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    path = tmp_path / "data" / "creds.json"

    first = simulator_credentials(registry, DEVICES, path)
    assert first.provisioned == DEVICES
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    hashes = {d: h for d, (_s, h) in registry.password_hashes().items()}
    assert all(verify_password(first.passwords[d], hashes[d]) for d in DEVICES)

    again = simulator_credentials(registry, DEVICES, path)  # a restart: the broker's view stays valid
    assert again.provisioned == []
    assert again.passwords == first.passwords
    assert {d: h for d, (_s, h) in registry.password_hashes().items()} == hashes

    registry.provision_device("steel-meter")  # someone else re-provisioned it: the kept password is stale
    third = simulator_credentials(registry, DEVICES, path)
    assert third.provisioned == ["steel-meter"]
    assert third.passwords["sinter-cems"] == first.passwords["sinter-cems"]
    registry.close()
