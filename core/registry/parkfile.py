"""Park files (YAML): a park's sites and devices (contract "Registry").

Errors name the file, the line and the key: msgspec reports the path of what is wrong
(``$.sites[3].devices[0]``) and the YAML node tree maps that path back to a line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

from smartpark.core.errors import ParkFileError
from smartpark.core.ids import ID_PATTERN

__all__ = ["HJ212_MN_PATTERN", "DeviceSpec", "Hj212Spec", "ParkFile", "ParkSpec", "SiteSpec", "parse_park_file",
           "read_park_file"]

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
DeviceKind = Literal["energy_meter", "cems", "greening", "gateway"]
Pct = Annotated[float, msgspec.Meta(ge=0, le=100)]
HJ212_MN_PATTERN = "^[0-9A-Za-z]{1,64}$"  # 24 characters in HJ 212-2017; letters and digits only


class ParkSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    name: str = ""
    region: str = "national"  # selects grid CO2 factors
    timezone: str = "Asia/Shanghai"  # regulatory hours are local clock hours


class Hj212Spec(msgspec.Struct, forbid_unknown_fields=True):
    """A stack monitor's HJ 212 identity: the MN its data acquisition unit sends and its PW (stored hashed)."""

    mn: Annotated[str, msgspec.Meta(pattern=HJ212_MN_PATTERN)]
    pw: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class DeviceSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    kind: DeviceKind
    source_type: str | None = None  # CEMS only: selects reference O2 and limits
    hj212: Hj212Spec | None = None  # CEMS reporting over HJ 212 (the gateway), not MQTT


class SiteSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    name: str
    enterprise: str
    industry: str
    area_m2: Annotated[float, msgspec.Meta(gt=0)]
    energy_quota_tce_day: float | None = None
    energy_quota_tce_year: float | None = None
    greening_min_pct: Pct | None = None
    greening_max_pct: Pct | None = None
    devices: list[DeviceSpec] = []


class ParkFile(msgspec.Struct, forbid_unknown_fields=True):
    park: ParkSpec
    sites: list[SiteSpec]


_PATH = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")


def _node_at(root: yaml.Node, path: str) -> yaml.Node:
    """Follow a msgspec error path (``$.sites[0].devices``) through the YAML node tree."""
    node = root
    for key, index in _PATH.findall(path.removeprefix("$")):
        if index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            node = node.value[int(index)]
        elif key and isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == key]
            if not match:
                break
            node = match[0]
        else:
            break
    return node


def _locate(root: yaml.Node, message: str) -> tuple[int, str]:
    """Line (1-based) and key that a msgspec validation message points at."""
    at = message.rpartition(" - at `")[2].rstrip("`") if " - at `" in message else "$"
    node = _node_at(root, at)
    unknown = re.search(r"unknown field `([^`]+)`", message)
    if unknown and isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if k.value == unknown.group(1):
                return k.start_mark.line + 1, unknown.group(1)
    key = _PATH.findall(at)[-1][0] if _PATH.findall(at) else ""
    return node.start_mark.line + 1, key


def parse_park_file(text: str, path: str = "<park file>") -> ParkFile:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ParkFileError(f"not valid YAML: {exc}", path=path, line=mark.line + 1 if mark else None) from exc
    if root is None:
        raise ParkFileError("empty park file", path=path)
    try:
        park = msgspec.convert(data, ParkFile, strict=False)
    except msgspec.ValidationError as exc:
        line, key = _locate(root, str(exc))
        raise ParkFileError(str(exc), path=path, line=line, key=key) from exc
    _check_unique(park, path)
    return park


def _check_unique(park: ParkFile, path: str) -> None:
    seen_sites: set[str] = set()
    seen_devices: set[str] = set()
    for site in park.sites:
        if site.id in seen_sites:
            raise ParkFileError(f"site id {site.id!r} appears twice", path=path, key="id")
        seen_sites.add(site.id)
        for device in site.devices:
            if device.id in seen_devices:
                raise ParkFileError(f"device id {device.id!r} appears twice", path=path, key="id")
            seen_devices.add(device.id)
    mns = [d.hj212.mn for s in park.sites for d in s.devices if d.hj212 is not None]
    if len(set(mns)) != len(mns):
        raise ParkFileError("an hj212 MN appears on two devices", path=path, key="mn")


def read_park_file(path: Path) -> ParkFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ParkFileError(str(exc), path=str(path)) from exc
    return parse_park_file(text, str(path))
