"""The durable spool: batches the store could not take, on local disk until it can.

Append-only segment files in the data dir; each record is ``length (u32) | crc32 (u32) | msgpack(points)`` and
is fsynced before the batch's messages are acked, so a spooled batch survives a crash of the process or the
machine. Replay goes oldest first and deletes a segment once all its records are in the store (a record
written twice overwrites itself: points carry device timestamps). A torn record at the tail of the last
segment was never acked (the crash came before the fsync returned): it is cut off and the broker redelivers.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import msgspec

from smartpark.core.points import Point

__all__ = ["Spool", "SpoolFull"]

log = logging.getLogger("smartpark.ingest.spool")
HEADER = struct.Struct("<II")
SEGMENT_BYTES = 64 * 1024 * 1024
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Point])


class SpoolFull(Exception):
    """The spool has reached its size bound; the caller must stop acknowledging."""


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._segments = sorted(self.dir.glob("seg-*.log"))
        self._repair_tail()
        self._bytes = sum(p.stat().st_size for p in self._segments)
        self._read_pos = 0  # offset of the next record to replay in the oldest segment

    @property
    def bytes(self) -> int:
        return self._bytes

    def __bool__(self) -> bool:
        return bool(self._segments)

    # --- writing
    def append(self, points: Sequence[Point]) -> None:
        """Append a batch and fsync it; raises SpoolFull rather than grow past the bound."""
        body = _encoder.encode(list(points))
        record = HEADER.pack(len(body), zlib.crc32(body)) + body
        with self._lock:
            if self._bytes + len(record) > self.max_bytes:
                raise SpoolFull(f"spool at {self._bytes:,} of {self.max_bytes:,} bytes")
            path = self._tail_segment(len(record))
            with path.open("ab") as f:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
            self._bytes += len(record)

    def _tail_segment(self, size: int) -> Path:
        if self._segments and self._segments[-1].stat().st_size + size <= SEGMENT_BYTES:
            return self._segments[-1]
        number = int(self._segments[-1].stem[4:]) + 1 if self._segments else 1
        path = self.dir / f"seg-{number:012d}.log"
        path.touch()
        _fsync_dir(self.dir)  # the new file's directory entry must survive a crash too
        self._segments.append(path)
        return path

    # --- replay
    def peek(self) -> list[Point] | None:
        """The oldest record's points, or None when the spool is empty."""
        with self._lock:
            while self._segments:
                record = _read_record(self._segments[0], self._read_pos)
                if record is not None:
                    return _decoder.decode(record)
                if len(self._segments) == 1:
                    return None  # only the segment being appended to, fully replayed
                self._drop_head()
            return None

    def pop(self) -> None:
        """Mark the record returned by peek() as stored."""
        with self._lock:
            record = _read_record(self._segments[0], self._read_pos)
            if record is None:
                return
            self._read_pos += HEADER.size + len(record)
            if self._read_pos >= self._segments[0].stat().st_size:
                self._drop_head()

    def _drop_head(self) -> None:
        head = self._segments.pop(0)
        self._bytes -= head.stat().st_size
        head.unlink()
        self._read_pos = 0

    # --- start-up
    def _repair_tail(self) -> None:
        """Cut a torn or corrupt record (and what follows it) off each segment."""
        for path in self._segments:
            good = _valid_prefix(path)
            if good < path.stat().st_size:
                log.warning("spool %s: cutting %d bytes of a torn record (never acked: the broker redelivers)",
                            path.name, path.stat().st_size - good)
                with path.open("r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())


def _read_record(path: Path, pos: int) -> bytes | None:
    with path.open("rb") as f:
        f.seek(pos)
        header = f.read(HEADER.size)
        if len(header) < HEADER.size:
            return None
        length, crc = HEADER.unpack(header)
        body = f.read(length)
    if len(body) < length or zlib.crc32(body) != crc:
        return None
    return body


def _valid_prefix(path: Path) -> int:
    pos, size = 0, path.stat().st_size
    while pos < size:
        body = _read_record(path, pos)
        if body is None:
            break
        pos += HEADER.size + len(body)
    return pos


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
