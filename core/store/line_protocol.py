"""InfluxDB's two text languages, written safely: line protocol (points in) and InfluxQL quoting (names out).

Every name and value taken from outside is escaped (``line``) or quoted (``quote_ident``, ``quote_literal``),
never pasted into a statement. What line protocol cannot carry at all is refused with ValueError instead of
being silently mangled.

Line protocol as InfluxDB 1.6 parses it (checked against the real server by tests/test_store_influx.py):

- Measurement: comma and space are escaped with a backslash. A leading ``#`` makes the line a comment that
  is dropped without an error, so such a name is refused.
- Tag keys, tag values, field keys: comma, equals sign and space are escaped. A backslash is *not* an escape
  for itself there: ``a\\b`` is stored with both backslashes (2.x documents the opposite), so a backslash is
  written as is and refused where it would change the meaning: before a backslash, comma, equals sign or
  space, or at the end. Quotes need no escaping. Newline and carriage return cannot be escaped at all, and
  a tag value cannot be empty.
- String field values are double-quoted with backslash and double quote escaped. A raw newline or carriage
  return inside the quotes round-trips on 1.6 (``\\n`` would be stored as backslash + n), so they are
  written raw.
- Floats are written with ``repr`` (shortest round-trip form); NaN and infinities cannot be written.
- Timestamps are epoch milliseconds (``precision=ms``); a point with the same measurement, tags and time
  overwrites the previous one, which makes redelivery safe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from math import isfinite

from smartpark.core.points import Point

__all__ = ["escape_measurement", "escape_string_field", "escape_tag", "line", "lines", "quote_ident", "quote_literal"]

_NO_NEWLINES = ("\n", "\r")
_MEASUREMENT_SPECIALS = {",": "\\,", " ": "\\ "}
_TAG_SPECIALS = {",": "\\,", "=": "\\=", " ": "\\ "}
_AFTER_BACKSLASH = ("", "\\", ",", "=", " ")  # a backslash before these (or at the end) changes the meaning


# ------------------------------------------------------------------------------------------ line protocol


def _escape(value: str, what: str, specials: dict[str, str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if value == "":
        raise ValueError(f"{what} cannot be empty in InfluxDB line protocol")
    if any(c in value for c in _NO_NEWLINES):
        raise ValueError(f"{what} {value!r} has a newline or carriage return: line protocol cannot carry it")
    out = []
    for i, c in enumerate(value):
        if c == "\\":
            nxt = value[i + 1] if i + 1 < len(value) else ""
            if nxt in _AFTER_BACKSLASH:
                raise ValueError(
                    f"{what} {value!r} has a backslash before {nxt!r} or at its end, which InfluxDB line "
                    "protocol cannot carry unambiguously"
                )
        out.append(specials.get(c, c))
    return "".join(out)


def escape_measurement(name: str) -> str:
    """A measurement for line protocol: comma and space escaped; what it cannot carry raises ValueError."""
    if name.startswith("#"):
        raise ValueError(f"measurement {name!r} starts with '#': line protocol would drop it as a comment")
    return _escape(name, "measurement", _MEASUREMENT_SPECIALS)


def escape_tag(text: str, what: str = "tag key, tag value or field key") -> str:
    """A tag key, tag value or field key for line protocol: comma, equals sign and space escaped.

    ``what`` names the value in the ValueError raised for what line protocol cannot carry.
    """
    return _escape(text, what, _TAG_SPECIALS)


def escape_string_field(value: str) -> str:
    """A string field value, quoted: backslash and double quote escaped, newlines raw (they round-trip)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _field_value(key: str, value: object) -> str:
    if type(value) is float and math.isfinite(value):  # the hot path: metric values
        return repr(value)
    if isinstance(value, str):
        return escape_string_field(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"field {key!r}: a value must be a float or a string, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"field {key!r}: {value!r} is not finite; InfluxDB cannot store it")
    return repr(number)


# Escaping walks every character: cache it. A park has a few thousand series and a hundred field names.
@lru_cache(maxsize=65536)
def _series_prefix(measurement: str, site: str, device: str) -> str:
    # tags sorted by key (device < site), as InfluxDB recommends
    return (f"{escape_measurement(measurement)},device={escape_tag(device, 'tag device')},"
            f"site={escape_tag(site, 'tag site')} ")


@lru_cache(maxsize=4096)
def _field_key(key: str) -> str:
    return escape_tag(key, "field key") + "="


def line(point: Point) -> str:
    """One point as a line of InfluxDB line protocol with a millisecond timestamp (no trailing newline)."""
    if not point.fields:
        raise ValueError(f"point {point.measurement}/{point.site}/{point.device}@{point.ts_ms} has no fields")
    if type(point.ts_ms) is not int:
        raise TypeError(f"ts_ms must be an integer (epoch milliseconds), got {point.ts_ms!r}")
    fields = ",".join([
        _field_key(k) + (repr(v) if type(v) is float and isfinite(v) else _field_value(k, v))
        for k, v in point.fields.items()])
    return f"{_series_prefix(point.measurement, point.site, point.device)}{fields} {point.ts_ms}"


def lines(points: Iterable[Point]) -> bytes:
    """Points as a line-protocol body (UTF-8, one line each). The ingest's hot path, so line() inlined for
    the plain point (float fields, int timestamp): about 1 µs a point. (Formatting all floats in one msgspec
    call and laying out fields by template was measured no faster on typical sensor values.)"""
    out: list[str] = []
    append = out.append
    keys = _FIELD_KEYS
    for p in points:
        fields = p.fields
        if not fields or type(p.ts_ms) is not int:
            append(line(p))  # raises the precise error
            continue
        parts = []
        for k, v in fields.items():
            key = keys.get(k)
            if key is None:
                key = _field_key(k)
                if len(keys) < 4096:
                    keys[k] = key
            parts.append(key + (repr(v) if type(v) is float and isfinite(v) else _field_value(k, v)))
        append(f"{_series_prefix(p.measurement, p.site, p.device)}{','.join(parts)} {p.ts_ms}")
    return "\n".join(out).encode("utf-8")


_FIELD_KEYS: dict[str, str] = {}  # _field_key's results by key, for lines(): a dict lookup beats a call


# ------------------------------------------------------------------------------------------------ InfluxQL


def _quote(text: str, quote: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"InfluxQL quoting needs a string, got {type(text).__name__}")
    # InfluxQL strings know the escapes \\ \" \' \n; a raw newline ends the statement with an error
    return quote + text.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n") + quote


def quote_ident(name: str) -> str:
    """An InfluxQL identifier (database, retention policy, measurement, field, tag key) in double quotes."""
    return _quote(name, '"')


def quote_literal(value: str) -> str:
    """An InfluxQL string literal (a tag value in WHERE) in single quotes."""
    return _quote(value, "'")
