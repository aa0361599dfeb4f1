"""Park files (YAML): a park's sites and devices (contract "Registry").

Errors name the file, the line and the key: msgspec reports the path of what is wrong
(``$.sites[3].devices[0]``) and the YAML node tree maps that path back to a line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml

from smartpark.core.clock import DEFAULT_TIMEZONE
from smartpark.core.errors import ParkFileError
from smartpark.core.ids import ID_PATTERN, SERVICE_PREFIX, reserved_device_id
from smartpark.core.reference import Reference, default_reference
from smartpark.core.registry.hierarchy import METER_ROLES, MeterRole, hierarchy_errors
from smartpark.core.screening import Screening, default_screening

__all__ = ["HJ212_MN_PATTERN", "METER_ROLES", "DeviceSpec", "Hj212Spec", "ParkFile", "ParkSpec", "SiteSpec",
           "parse_park_file", "read_park_file", "valid_timezone"]

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
DeviceKind = Literal["energy_meter", "cems", "greening", "gateway"]
Pct = Annotated[float, msgspec.Meta(ge=0, le=100)]
Quota = Annotated[float, msgspec.Meta(gt=0)]
HJ212_MN_PATTERN = "^[0-9A-Za-z]{1,64}$"  # 24 characters in HJ 212-2017; letters and digits only


class ParkSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    name: str = ""
    region: str = "national"  # selects grid CO2 factors
    timezone: str = DEFAULT_TIMEZONE  # regulatory hours are local clock hours


class Hj212Spec(msgspec.Struct, forbid_unknown_fields=True):
    """A stack monitor's HJ 212 identity: the MN its data acquisition unit sends and its PW (stored hashed)."""

    mn: Annotated[str, msgspec.Meta(pattern=HJ212_MN_PATTERN)]
    pw: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class DeviceSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    kind: DeviceKind
    source_type: str | None = None  # CEMS only: selects reference O2 and limits
    # meter hierarchy (energy meters only; see core/registry/hierarchy.py): role defaults to `sub` where a
    # parent is named, else `main`; rated_kw bounds a plausible electricity step
    role: MeterRole | None = None
    parent: Id | None = None
    rated_kw: Annotated[float, msgspec.Meta(gt=0)] | None = None
    hj212: Hj212Spec | None = None  # CEMS reporting over HJ 212 (the gateway), not MQTT
    # two-high screening (core/data/screening.yaml): the production process a meter's line runs (its energy
    # over its output_t is the line's intensity) and the product a device's line makes
    process: str | None = None
    product: str | None = None


class SiteSpec(msgspec.Struct, forbid_unknown_fields=True):
    id: Id
    name: str
    enterprise: str
    industry: str
    area_m2: Annotated[float, msgspec.Meta(gt=0)]
    energy_quota_tce_day: Quota | None = None
    energy_quota_tce_year: Quota | None = None
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


def parse_park_file(text: str, path: str = "<park file>", reference: Reference | None = None, *,
                    screening: Screening | None = None) -> ParkFile:
    """A park file checked against its types and then its meaning (time zone, region and source types known to
    ``reference``, processes and products known to ``screening`` (defaults: the shipped data; a park with its
    own files passes them), greening band, meter hierarchy)."""
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
    _check_meaning(park, root, path, reference, screening)
    return park


def _check_meaning(park: ParkFile, root: yaml.Node, path: str, ref: Reference | None,
                   screening: Screening | None) -> None:
    """What the types cannot say, checked before anything is stored: a park that loads cannot break a KPI."""
    for where, key, message in _problems(park, ref or default_reference(), screening or default_screening()):
        node = _node_at(root, where)
        raise ParkFileError(message, path=path, line=node.start_mark.line + 1, key=key)


def _problems(park: ParkFile, ref: Reference, screening: Screening) -> Iterator[tuple[str, str, str]]:
    """(msgspec-style path, key, message) of every semantic error, in file order."""
    tz, region = park.park.timezone, park.park.region
    if not valid_timezone(tz):
        yield "$.park.timezone", "timezone", f"unknown time zone {tz!r} (an IANA name such as Asia/Shanghai)"
    regions = sorted(ref.energy.grid_co2_kg_per_kwh)
    if region not in regions:
        yield "$.park.region", "region", f"region {region!r} is not in the reference data ({', '.join(regions)})"
    for i, site in enumerate(park.sites):
        yield from _site_problems(f"$.sites[{i}]", site, ref, screening)


def _site_problems(at: str, site: SiteSpec, ref: Reference, screening: Screening) -> Iterator[tuple[str, str, str]]:
    low, high = site.greening_min_pct, site.greening_max_pct
    if low is not None and high is not None and low > high:
        yield f"{at}.greening_min_pct", "greening_min_pct", f"greening_min_pct {low} is above greening_max_pct {high}"
    sources = ref.emissions.source_types
    for j, dev in enumerate(site.devices):
        if dev.kind == "cems" and dev.source_type not in sources:
            what = f"source_type {dev.source_type!r} is unknown" if dev.source_type else "needs a source_type"
            yield (f"{at}.devices[{j}]" + (".source_type" if dev.source_type else ""), "source_type",
                   f"CEMS {dev.id!r} {what} (one of {', '.join(sorted(sources))})")
    for j, key, message in hierarchy_errors([(d.id, d.kind, d.role, d.parent) for d in site.devices]):
        yield f"{at}.devices[{j}].{key}", key, message
    yield from _screening_problems(at, site, screening)


def _screening_problems(at: str, site: SiteSpec, screening: Screening) -> Iterator[tuple[str, str, str]]:
    """A declared process or product must be one the screening data knows (a typo would hide a flag);
    a process line's intensity needs its own counters: energy meters only."""
    for j, dev in enumerate(site.devices):
        if dev.process is not None and dev.process not in screening.processes:
            yield (f"{at}.devices[{j}].process", "process",
                   f"process {dev.process!r} of {dev.id!r} is unknown "
                   f"(one of {', '.join(sorted(screening.processes))})")
        elif dev.process is not None and dev.kind != "energy_meter":
            yield f"{at}.devices[{j}].process", "process", f"{dev.id!r}: only an energy meter declares a process"
        if dev.product is not None and dev.product not in screening.products:
            yield (f"{at}.devices[{j}].product", "product",
                   f"product {dev.product!r} of {dev.id!r} is unknown (one of {', '.join(sorted(screening.products))})")


def valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


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
            if reserved_device_id(device.id):
                raise ParkFileError(f"device id {device.id!r}: ids beginning with {SERVICE_PREFIX!r} are reserved "
                                    "for the platform's services", path=path, key="id")
            seen_devices.add(device.id)
    mns = [d.hj212.mn for s in park.sites for d in s.devices if d.hj212 is not None]
    if len(set(mns)) != len(mns):
        raise ParkFileError("an hj212 MN appears on two devices", path=path, key="mn")


def read_park_file(path: Path, reference: Reference | None = None, *, screening: Screening | None = None) -> ParkFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ParkFileError(str(exc), path=str(path)) from exc
    return parse_park_file(text, str(path), reference, screening=screening)
