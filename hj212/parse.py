"""The HJ 212 data segment: ``QN=..;ST=..;CN=..;PW=..;MN=..;Flag=..;[PNUM=..;PNO=..;]CP=&&...&&``.

`parse_segment` turns a CRC-checked segment into a `Packet` or raises `PacketError` with a counted reason.
`CP` holds items separated by ``;`` and one factor's sub-items by ``,`` (``a21026-Avg=14.3,a21026-Flag=N``);
it is split once, and values stay text until the converter knows which of them it needs.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from smartpark.hj212.errors import PacketError

__all__ = ["DATA_COMMANDS", "HEARTBEAT", "Flag", "Packet", "data_time_ms", "parse_segment"]

DATA_COMMANDS = frozenset({"2011", "2051", "2061", "2031"})  # real-time, minute, hourly, daily data
HEARTBEAT = "9015"  # HJ 212-2025 heartbeat [S]: keeps a connection alive, nothing to store
VERSION_2017 = 1  # Flag V5..V0 = 000001: HJ 212-2017; 0 was HJ/T 212-2005 (other codes and flags)
_CIPHER = re.compile(r"[0-9A-Fa-f]+|[A-Za-z0-9+/]+={0,2}")  # hex or base64, no key=value structure
MAX_SPLIT = 99  # PNUM above this is refused: reassembly is bounded per connection


class Flag(NamedTuple):
    """``Flag`` bits ``V5..V0 D A``: A (bit 0) answer required, D (bit 1) split packet, V the version."""

    value: int

    @property
    def answer(self) -> bool:
        return bool(self.value & 1)

    @property
    def split(self) -> bool:
        return bool(self.value & 2)

    @property
    def version(self) -> int:
        return self.value >> 2


class Packet(NamedTuple):
    qn: str | None
    st: str
    cn: str
    pw: str
    mn: str
    flag: Flag
    pnum: int | None
    pno: int | None
    cp: list[dict[str, str]]  # CP items (``;``), each a dict of its ``,``-separated ``key=value`` pairs

    @property
    def data_time(self) -> str | None:
        for item in self.cp:
            if "DataTime" in item:
                return item["DataTime"]
        return None


_REQUIRED = ("ST", "CN", "PW", "MN")


def parse_segment(segment: bytes) -> Packet:
    """Header fields and CP items; raises PacketError(reason) for anything the gateway cannot take."""
    try:  # ASCII in 2017; HJ 212-2025 counts the length in UTF-8 bytes and allows Chinese in CP [S]
        text = segment.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PacketError("bad_encoding", f"not UTF-8 at byte {exc.start}") from None
    head, sep, cp = text.partition("CP=&&")
    if not sep or not cp.endswith("&&"):
        raise PacketError("bad_segment", "no CP=&&...&& in the data segment")
    fields = _header(head)
    missing = [k for k in _REQUIRED if not fields.get(k)]
    if missing:
        raise PacketError("bad_segment", f"missing {', '.join(missing)}")
    flag = _flag(fields.get("Flag"))
    qn = fields.get("QN")
    if qn is not None and not (len(qn) == 17 and qn.isdigit()):
        raise PacketError("bad_qn", f"QN {qn[:40]!r} is not YYYYMMDDhhmmsszzz")
    if qn is None and flag.answer:
        raise PacketError("bad_qn", "an answer is requested but the packet has no QN")
    pnum, pno = _split(fields, flag)
    return Packet(qn, fields["ST"], fields["CN"], fields["PW"], fields["MN"], flag, pnum, pno,
                  _cp_items(cp[:-2]))


def _header(head: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in head.split(";"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            raise PacketError("bad_segment", f"header item {part[:40]!r} is not key=value")
        fields[key] = value
    return fields


def _flag(text: str | None) -> Flag:
    if text is None:  # HJ/T 212-2005 made Flag optional; 2017 always sends it
        raise PacketError("bad_flag", "no Flag (HJ/T 212-2005 packets are not supported)")
    if not text.isdigit() or int(text) > 255:
        raise PacketError("bad_flag", f"Flag {text[:20]!r} is not a number 0..255")
    flag = Flag(int(text))
    if flag.version < VERSION_2017:
        raise PacketError("unsupported_version", f"Flag {text} carries version {flag.version} (HJ/T 212-2005)")
    return flag


def _split(fields: dict[str, str], flag: Flag) -> tuple[int | None, int | None]:
    if not flag.split:
        return None, None
    pnum, pno = fields.get("PNUM", ""), fields.get("PNO", "")
    if not (pnum.isdigit() and pno.isdigit()):
        raise PacketError("bad_split", "split packet (Flag D) without numeric PNUM and PNO")
    total, number = int(pnum), int(pno)
    if not 1 <= number <= total <= MAX_SPLIT:
        raise PacketError("bad_split", f"PNO {number} of PNUM {total} (at most {MAX_SPLIT} parts)")
    return total, number


def _cp_items(cp: str) -> list[dict[str, str]]:
    if len(cp) >= 16 and _CIPHER.fullmatch(cp):  # HJ 212-2025: SM4-encrypted CP over the internet [S]
        raise PacketError("encrypted", "CP holds no key=value item: an SM4-encrypted CP (not supported)")
    items = []
    for group in cp.split(";"):
        if not group:
            continue
        item: dict[str, str] = {}
        for pair in group.split(","):
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise PacketError("bad_segment", f"CP item {pair[:40]!r} is not key=value")
            item[key] = value
        items.append(item)
    return items


@lru_cache(maxsize=8192)  # units of a park report the same minutes: one parse per minute, not per packet
def data_time_ms(text: str, tz: ZoneInfo) -> int:
    """``YYYYMMDDhhmmss`` on the monitor's clock (the park's time zone) as epoch milliseconds."""
    if len(text) != 14 or not text.isdigit():
        raise PacketError("bad_datatime", f"DataTime {text[:40]!r} is not YYYYMMDDhhmmss")
    try:
        local = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=tz)
    except ValueError:
        raise PacketError("bad_datatime", f"DataTime {text} is not a date") from None
    return int(local.timestamp()) * 1000
