"""Registry: park files (errors name file, line and key), idempotent loads, bindings, credentials, keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smartpark.core.errors import ParkFileError, RegistryError
from smartpark.core.registry import Registry, parse_park_file, read_park_file
from smartpark.core.registry.secrets import verify_password
from smartpark.platform import demo_park_path

from factories import PARK_YAML


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    r = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    r.init()
    return r


def test_demo_park_resembles_the_reference_park() -> None:
    park = read_park_file(demo_park_path())
    devices = [d for s in park.sites for d in s.devices]
    assert 8 <= len(park.sites) <= 12
    assert 100 <= len(devices) <= 300
    kinds = {d.kind for d in devices}
    assert {"energy_meter", "cems", "greening"} <= kinds
    assert {"steel", "automotive", "composites", "logistics"} <= {s.industry for s in park.sites}
    assert all(d.source_type for d in devices if d.kind == "cems")
    assert park.park.region == "northeast"


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "park.yaml"
    path.write_text(PARK_YAML.replace("source_type: sinter}", "source_type: sinter, colour: red}"))
    with pytest.raises(ParkFileError) as info:
        read_park_file(path)
    assert info.value.line == 10
    assert info.value.key == "colour"
    assert str(info.value).startswith(f"{path}:10:")


@pytest.mark.parametrize(("change", "line", "needle"), [
    (("industry: steel", "industry: [steel]"), 7, "Expected `str`"),
    (("area_m2: 100000", "area_m2: -5"), 8, "area_m2"),
    (("id: steel\n", "id: Steel Works\n"), 4, "matching regex"),
    (("kind: cems", "kind: chimney"), 10, "kind"),
])
def test_bad_values_name_their_line(change: tuple[str, str], line: int, needle: str) -> None:
    with pytest.raises(ParkFileError, match=needle) as info:
        parse_park_file(PARK_YAML.replace(*change, 1), "p.yaml")
    assert info.value.line == line


def test_duplicate_ids_and_bad_yaml() -> None:
    with pytest.raises(ParkFileError, match="appears twice"):
        parse_park_file(PARK_YAML.replace("id: green-1", "id: steel-meter"))
    with pytest.raises(ParkFileError, match="not valid YAML"):
        parse_park_file("park: {id: x\nsites: [")


def test_device_ids_cannot_take_the_services_namespace(registry: Registry) -> None:
    """A device named like a service could connect with the service's client id (issue 11)."""
    with pytest.raises(ParkFileError, match="reserved"):
        parse_park_file(PARK_YAML.replace("id: green-1", "id: smartpark-ingest"))
    with pytest.raises(RegistryError, match="reserved"):
        registry.create_device("steel", {"id": "smartpark-alerts", "kind": "energy_meter"})


def test_load_is_idempotent_and_binds_devices(registry: Registry) -> None:
    park = parse_park_file(PARK_YAML)
    assert registry.load_park(park) == (2, 3)
    assert registry.load_park(park) == (2, 3)
    assert registry.bindings() == {"sinter-cems": "steel", "steel-meter": "steel", "green-1": "park-green"}
    moved = parse_park_file(PARK_YAML.replace("id: green-1", "id: steel-meter-x"))
    registry.load_park(moved)
    assert len(registry.devices()) == 4


def test_a_device_cannot_move_to_another_site_silently(registry: Registry) -> None:
    registry.load_park(parse_park_file(PARK_YAML))
    clash = PARK_YAML.replace("id: green-1", "id: sinter-cems-2").replace(
        "{id: sinter-cems, kind: cems, source_type: sinter}", "{id: green-1x, kind: cems, source_type: sinter}")
    clash = clash.replace("id: sinter-cems-2", "id: sinter-cems")
    with pytest.raises(RegistryError, match="bound to site 'steel'"):
        registry.load_park(parse_park_file(clash))


def test_device_password_is_stored_hashed(registry: Registry) -> None:
    registry.load_park(parse_park_file(PARK_YAML))
    password = registry.provision_device("sinter-cems")
    site, stored = registry.password_hashes()["sinter-cems"]
    assert site == "steel"
    assert password not in stored
    assert stored.startswith("$7$")
    assert verify_password(password, stored)
    assert not verify_password(password + "x", stored)


def test_api_keys(registry: Registry) -> None:
    registry.load_park(parse_park_file(PARK_YAML))
    key = registry.create_api_key("site", ["steel"])
    key_id = key.split("_")[1]
    stored = registry.api_key(key_id)
    assert stored is not None
    assert stored.sites == ["steel"]
    assert key.split("_", 2)[2] not in stored.key_hash
    with pytest.raises(RegistryError, match="unknown site"):
        registry.create_api_key("site", ["nowhere"])
    with pytest.raises(RegistryError, match="needs at least one"):
        registry.create_api_key("site", [])


def test_bindings_cache_takes_new_devices_and_outlives_a_failed_reload(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest's and the gateway's registry maps share one reload rule (core/registry/cache.py)."""
    from smartpark.core.registry import cache

    registry.load_park(parse_park_file(PARK_YAML))
    db_away = False

    def load() -> dict[str, str]:
        if db_away:
            raise OSError("metadata DB away")
        return registry.bindings()

    bindings = cache.Bindings(load)
    assert bindings.site_of("steel-meter") == "steel"
    registry.create_device("steel", {"id": "late-meter", "kind": "energy_meter"})
    assert bindings.site_of("late-meter") is None  # an unknown device reloads at most every RELOAD_S
    monkeypatch.setattr(cache, "RELOAD_S", 0.0)
    assert bindings.site_of("late-meter") == "steel"
    db_away = True
    monkeypatch.setattr(cache, "REFRESH_S", 0.0)  # every lookup reloads, and fails: the last good map stays
    assert bindings.site_of("steel-meter") == "steel"
    assert bindings.site_of("late-meter") == "steel"


def test_a_failing_first_load_is_fatal_for_the_ingest_but_not_for_the_gateway() -> None:
    from smartpark.core.registry.cache import Bindings
    from smartpark.hj212.identities import Identities

    def away() -> dict[str, Any]:
        raise OSError("metadata DB away")

    with pytest.raises(OSError, match="away"):
        Bindings(away)
    assert Identities(away).find("mn") is None
