"""Identifier rules of the contract: safe in MQTT topics, URLs, InfluxDB tags and Mosquitto ACL lines.

Two spellings of one rule: ``ID_PATTERN`` for Python's ``re`` (msgspec's ``Meta(pattern=...)`` searches with
it), anchored with ``\\A``/``\\Z`` because Python's ``$`` also matches before a trailing newline, and an id
``"steel\\n"`` would then pass and write a malformed ACL line; ``ID_SCHEMA_PATTERN`` for pydantic (Rust regex)
and the OpenAPI schema (ECMA), where ``$`` is the end of the text and ``\\Z`` is not understood.
"""

from __future__ import annotations

import re

__all__ = ["ID_PATTERN", "ID_SCHEMA_PATTERN", "is_valid_id", "valid_device_id", "valid_site_id"]

ID_PATTERN = r"\A[a-z0-9][a-z0-9_-]{0,62}\Z"
ID_SCHEMA_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID = re.compile(ID_PATTERN)


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


def valid_device_id(value: str) -> str:
    """Return ``value`` if it is a valid device id, else raise ValueError naming the rule."""
    return _valid("device", value)
