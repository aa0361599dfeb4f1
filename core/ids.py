"""Identifier rules of the contract: safe in MQTT topics, URLs, InfluxDB tags and Mosquitto ACL lines.

Two spellings of one rule: ``ID_PATTERN`` for Python's ``re`` (msgspec's ``Meta(pattern=...)`` searches with
it), anchored with ``\\A``/``\\Z`` because Python's ``$`` also matches before a trailing newline, and an id
``"steel\\n"`` would then pass and write a malformed ACL line; ``ID_SCHEMA_PATTERN`` for pydantic (Rust regex)
and the OpenAPI schema (ECMA), where ``$`` is the end of the text and ``\\Z`` is not understood.
"""

from __future__ import annotations

import re

__all__ = ["ID_PATTERN", "ID_SCHEMA_PATTERN", "SERVICE_PREFIX", "is_service_id", "is_valid_id", "reserved_device_id",
           "valid_device_id", "valid_site_id"]

ID_PATTERN = r"\A[a-z0-9][a-z0-9_-]{0,62}\Z"
ID_SCHEMA_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID = re.compile(ID_PATTERN)
SERVICE_PREFIX = "smartpark-"
"""MQTT client ids and broker users of the platform's own services begin with this; no device id may, so no
device can take a service's client id (the brokers bind a device's client id to its device id)."""


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string that matches the contract's id pattern, whole."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _valid(kind: str, value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(f"invalid {kind} id {value!r}: lower case letters, digits, - and _, at most 63, "
                         "starting with a letter or digit")
    return value


def valid_site_id(value: str) -> str:
    """Return ``value`` if it is a valid site id, else raise ValueError naming the rule."""
    return _valid("site", value)


def is_service_id(value: object) -> bool:
    """True for a client id or broker user of a platform service (``smartpark-...``, otherwise a valid id)."""
    return is_valid_id(value) and str(value).startswith(SERVICE_PREFIX) and len(str(value)) > len(SERVICE_PREFIX)


def reserved_device_id(value: str) -> bool:
    """True when ``value`` would be a device id in the services' reserved namespace (refused by the registry)."""
    return value.startswith(SERVICE_PREFIX)


def valid_device_id(value: str) -> str:
    """Return ``value`` if it is a valid device id, else raise ValueError naming the rule."""
    if reserved_device_id(value):
        raise ValueError(f"invalid device id {value!r}: ids beginning with {SERVICE_PREFIX!r} are reserved "
                         "for the platform's services")
    return _valid("device", value)
