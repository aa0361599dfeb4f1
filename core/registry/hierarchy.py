"""The meter hierarchy of a site: which energy meters give the site's total and which break it down.

- ``main``: measures what the site draws from outside (grid incomers, gas and steam supply). The site's
  consumption is the sum of its main meters.
- ``sub``: a line or process beneath a ``parent`` meter (main or sub) of the same site; sub-meters give the
  breakdown, and a main meter minus its direct sub-meters is reported as unmetered.
- ``generation``: power a site produces or exports; reported beside consumption, never added to it.

Default for park files and API calls that name no role (files written before roles existed): a meter with a
``parent`` is a ``sub``, any other meter a ``main``. So an old park file keeps its old totals (every meter
counted) until it declares its sub-meters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

__all__ = ["METER_ROLES", "MeterRole", "effective_role", "hierarchy_errors"]

MeterRole = Literal["main", "sub", "generation"]
METER_ROLES: tuple[MeterRole, ...] = ("main", "sub", "generation")

# (id, kind, role, parent) of one device
DeviceLine = tuple[str, str, str | None, str | None]


def effective_role(kind: str, role: str | None, parent: str | None) -> str | None:
    """The role a device counts with: None for devices that are not energy meters."""
    if kind != "energy_meter":
        return None
    return role or ("sub" if parent else "main")


def hierarchy_errors(devices: Sequence[DeviceLine]) -> Iterator[tuple[int, str, str]]:
    """(index of the device, key, message) for each rule broken among one site's devices.

    Rules: role and parent only on energy meters; a sub-meter names a parent, other roles do not; the
    parent is an energy meter of the same site (``devices``) and not a generation meter; no cycles."""
    by_id = {d[0]: d for d in devices}
    for i, (dev, kind, role, parent) in enumerate(devices):
        if kind != "energy_meter":
            if role is not None or parent is not None:
                key = "role" if role is not None else "parent"
                yield i, key, f"{dev!r} is a {kind}: only energy meters take role and parent"
            continue
        actual = effective_role(kind, role, parent)
        if actual == "sub" and parent is None:
            yield i, "parent", f"sub-meter {dev!r} needs a parent (a meter of the same site)"
        elif actual != "sub" and parent is not None:
            yield i, "parent", f"{actual} meter {dev!r} cannot have a parent (only role: sub does)"
        elif parent is not None:
            yield from _parent_errors(i, dev, parent, by_id)


def _parent_errors(i: int, dev: str, parent: str, by_id: dict[str, DeviceLine]) -> Iterator[tuple[int, str, str]]:
    up = by_id.get(parent)
    if up is None:
        yield i, "parent", f"parent {parent!r} of {dev!r} is not a device of the same site"
    elif up[1] != "energy_meter":
        yield i, "parent", f"parent {parent!r} of {dev!r} is a {up[1]}, not an energy meter"
    elif effective_role(*up[1:]) == "generation":
        yield i, "parent", f"parent {parent!r} of {dev!r} is a generation meter"
    else:
        seen = {dev}
        while up is not None and up[3] is not None:
            if up[0] in seen:
                yield i, "parent", f"the parents of {dev!r} form a cycle through {up[0]!r}"
                return
            seen.add(up[0])
            up = by_id.get(up[3])
