"""Identifier rules of the contract: safe in MQTT topics, URLs and InfluxDB tags."""

from __future__ import annotations

import re

__all__ = ["ID_PATTERN", "is_valid_id", "valid_device_id", "valid_site_id"]

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID = re.compile(ID_PATTERN)


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string that matches the contract's id pattern."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _valid(kind: str, value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(f"invalid {kind} id {value!r}: must match {ID_PATTERN}")
    return value


def valid_site_id(value: str) -> str:
    """Return ``value`` if it is a valid site id, else raise ValueError naming the rule."""
    return _valid("site", value)


def valid_device_id(value: str) -> str:
    """Return ``value`` if it is a valid device id, else raise ValueError naming the rule."""
    return _valid("device", value)
