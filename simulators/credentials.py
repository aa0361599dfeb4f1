"""MQTT passwords of simulated devices, kept between runs so a broker that already knows them accepts them.

The registry keeps only hashes, and a production broker learns new ones only from `smartpark broker export`
(then a reload): a simulator that gave its devices fresh passwords at each start would connect before the
broker knew them (CONNACK NOT_AUTHORIZED, and a compose service restarting forever). So the passwords live in
a private file (mode 600) beside the hash they were issued with; a device is (re)provisioned only when it has
none or the registry's hash changed since (someone else re-provisioned it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from smartpark.core.errors import ConfigError
from smartpark.core.registry import Registry

__all__ = ["FILE_NAME", "SimulatorCredentials", "simulator_credentials"]

FILE_NAME = "simulator-credentials.json"


@dataclass
class SimulatorCredentials:
    passwords: dict[str, str]
    provisioned: list[str] = field(default_factory=list)
    """Devices that got a new password in this call: a running external broker does not know them yet."""


def simulator_credentials(registry: Registry, devices: Iterable[str], path: Path) -> SimulatorCredentials:
    """Passwords for ``devices``, reusing those still valid in the registry, provisioning the rest."""
    kept = _read(path)
    hashes = {d: h for d, (_site, h) in registry.password_hashes().items()}
    out = SimulatorCredentials({})
    for device in devices:
        entry = kept.get(device)
        if entry is not None and hashes.get(device) == entry[1]:
            out.passwords[device] = entry[0]
            continue
        out.passwords[device] = registry.provision_device(device)
        out.provisioned.append(device)
    if out.provisioned:
        hashes = {d: h for d, (_site, h) in registry.password_hashes().items()}
        kept.update({d: (out.passwords[d], hashes[d]) for d in out.provisioned})
        _write(path, kept)
    return out


def _read(path: Path) -> dict[str, tuple[str, str]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the simulator's credentials {path}: {exc}") from exc
    return {str(d): (str(v["password"]), str(v["hash"])) for d, v in raw.items()}


def _write(path: Path, kept: dict[str, tuple[str, str]]) -> None:
    body = json.dumps({d: {"password": p, "hash": h} for d, (p, h) in sorted(kept.items())}, indent=1)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the simulator's credentials {path}: {exc.strerror or exc}") from exc
