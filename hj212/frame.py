"""HJ 212 framing: ``##`` + 4-digit length + data segment + 4 hex CRC + CR LF, and the standard's CRC.

`FrameReader` is fed whatever a socket read returns and hands back whole frames and counted malformations:
frames split across reads, several in one read, garbage between frames, a wrong length, a wrong CRC, an
oversized frame. Its buffer never holds more than one largest frame plus one read, so a misbehaving data
acquisition unit costs the gateway a bounded amount of memory.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HEADER", "MAX_SEGMENT", "Frame", "FrameReader", "Malformed", "build_frame", "crc16"]

HEADER = b"##"
TRAILER = b"\r\n"
MAX_SEGMENT = 9999  # the length field has 4 digits; the common limit is 1024 [U], a setting lowers it
_OVERHEAD = 2 + 4 + 4 + 2  # ## + length + CRC + CR LF
_HEX = frozenset(b"0123456789abcdefABCDEF")


def crc16(data: bytes) -> int:
    """HJ 212-2017 Annex A: register 0xFFFF; per byte ``crc = (crc >> 8) ^ byte``, then 8 shifts right with
    XOR 0xA001 when the bit shifted out was 1. Not CRC-16/MODBUS (which XORs the byte into the low byte)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _table() -> list[int]:
    """crc16 of every state of the low byte after the XOR: the 8 shifts only ever see that byte."""
    out = []
    for low in range(256):
        crc = low
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        out.append(crc)
    return out


_TABLE = _table()


def crc16_fast(data: bytes) -> int:
    """crc16 by table; equal to crc16 for every input (tests compare them). After ``(crc >> 8) ^ byte`` the
    register holds 8 bits, so each byte is one lookup: ``crc = T[(crc >> 8) ^ byte]``."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc >> 8) ^ byte]
    return crc


def build_frame(segment: str | bytes) -> bytes:
    """A whole frame around a data segment (for replies, the simulator and tests)."""
    body = segment.encode() if isinstance(segment, str) else segment
    if len(body) > MAX_SEGMENT:
        raise ValueError(f"data segment of {len(body)} bytes, the length field holds at most {MAX_SEGMENT}")
    return b"%s%04d%s%04X\r\n" % (HEADER, len(body), body, crc16_fast(body))


class Frame(NamedTuple):
    segment: bytes  # the data segment, CRC checked
    raw: bytes  # the whole frame as received (relayed upstream as it is)


class Malformed(NamedTuple):
    reason: str  # garbage | bad_length | too_large | bad_crc
    detail: str
    raw: bytes  # what was discarded (at most one frame's worth)
    segment: bytes | None = None  # for bad_crc: the segment, so a reply can name its QN


class FrameReader:
    """Incremental de-framer for one connection: `feed()` bytes, get frames and malformations in order."""

    __slots__ = ("_buf", "max_segment")

    def __init__(self, max_segment: int = MAX_SEGMENT) -> None:
        self.max_segment = max_segment
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | Malformed]:
        self._buf += data
        out: list[Frame | Malformed] = []
        while self._buf:
            item = self._next()
            if item is None:
                break
            out.append(item)
        return out

    def _next(self) -> Frame | Malformed | None:  # noqa: PLR0911 (one return per outcome reads best here)
        """One frame or malformation from the head of the buffer; None when more bytes are needed."""
        buf = self._buf
        start = buf.find(HEADER)
        while start != -1 and buf[start + 2:start + 3] == b"#":  # "###": the frame starts at the last pair
            start += 1
        if start != 0:
            return self._garbage(start)
        if len(buf) < 6:
            return None
        digits = bytes(buf[2:6])
        if not digits.isdigit():
            return self._skip("bad_length", f"length field {digits!r} is not 4 digits")
        n = int(digits)
        if n > self.max_segment:
            return self._skip("too_large", f"data segment of {n} bytes, limit {self.max_segment}")
        end = n + _OVERHEAD
        if len(buf) < end:
            return self._early_header(n)
        if buf[end - 2:end] != TRAILER:
            return self._skip("bad_length", f"no CR LF after the declared {n} bytes and CRC")
        return self._checked(n, end)

    def _checked(self, n: int, end: int) -> Frame | Malformed:
        raw = bytes(self._buf[:end])
        del self._buf[:end]
        segment, crc_text = raw[6:6 + n], raw[6 + n:10 + n]
        if not set(crc_text) <= _HEX:
            return Malformed("bad_crc", f"CRC field {crc_text!r} is not hex", raw, segment)
        if int(crc_text, 16) != crc16_fast(segment):
            return Malformed("bad_crc", f"CRC {crc_text.decode()} != {crc16_fast(segment):04X}", raw, segment)
        return Frame(segment, raw)

    def _early_header(self, n: int) -> Malformed | None:
        """A frame still incomplete: wait, unless its declared length runs over a complete frame that follows
        it (a length too large would otherwise stall the connection until a long frame's worth arrives)."""
        buf = self._buf
        nxt = buf.find(HEADER, 6)
        if nxt != -1 and buf.find(TRAILER, nxt) != -1 and buf[nxt - 2:nxt] == TRAILER:
            return self._skip("bad_length", f"declared {n} bytes, but a frame ends at byte {nxt}")
        return None

    def _garbage(self, start: int) -> Malformed | None:
        """Bytes before the next ``##`` (all of them if none; a trailing ``#`` may start one)."""
        buf = self._buf
        if start == -1:
            keep = 1 if buf.endswith(b"#") else 0
            start = len(buf) - keep
            if start == 0:
                return None
        raw = bytes(buf[:start])
        del buf[:start]
        return Malformed("garbage", f"{len(raw)} bytes outside a frame", raw[:4096])

    def _skip(self, reason: str, detail: str) -> Malformed:
        """Drop this ``##`` and resynchronise on the next one."""
        nxt = self._buf.find(HEADER, 2)
        cut = len(self._buf) if nxt == -1 else nxt
        raw = bytes(self._buf[:cut])
        del self._buf[:cut]
        return Malformed(reason, detail, raw[:4096])
