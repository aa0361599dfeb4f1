"""The spool: ordered, checksummed, bounded, and it survives a reopen and a torn tail."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartpark.core.points import Point
from smartpark.ingest import spool as spool_mod
from smartpark.ingest.spool import Spool, SpoolFull


def batch(n: int, start: int = 0) -> list[Point]:
    return [Point("energy", "s", "d", 1_700_000_000_000 + i, {"power_kw": float(i)}) for i in range(start, start + n)]


def drain(spool: Spool) -> list[list[Point]]:
    out = []
    while (points := spool.peek()) is not None:
        out.append(points)
        spool.pop()
    return out


def test_replays_in_order_and_empties(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    assert not spool
    assert spool.peek() is None
    for i in range(3):
        spool.append(batch(10, i * 10))
    assert spool
    assert spool.bytes > 0
    assert drain(spool) == [batch(10, 0), batch(10, 10), batch(10, 20)]
    assert not spool
    assert spool.bytes == 0
    assert list(tmp_path.iterdir()) == []


def test_survives_reopen_and_continues_where_replay_stopped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    for i in range(3):
        spool.append(batch(5, i * 5))
    spool.peek()
    spool.pop()  # first batch stored; then the process dies before the segment is finished
    reopened = Spool(tmp_path, 1 << 20)
    # The first record is replayed again after a restart: harmless, it overwrites itself in the store.
    assert drain(reopened) == [batch(5, 0), batch(5, 5), batch(5, 10)]


def test_rotates_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "SEGMENT_BYTES", 600)
    spool = Spool(tmp_path, 1 << 20)
    for i in range(6):
        spool.append(batch(10, i * 10))
    assert len(list(tmp_path.glob("seg-*.log"))) >= 3
    assert [b[0].fields["power_kw"] for b in drain(spool)] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert list(tmp_path.iterdir()) == []


def test_torn_tail_is_cut_and_earlier_records_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(batch(3))
    spool.append(batch(3, 3))
    (segment,) = tmp_path.glob("seg-*.log")
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # a crash in the middle of the second write
    reopened = Spool(tmp_path, 1 << 20)
    assert drain(reopened) == [batch(3)]


def test_corrupt_record_is_not_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(batch(3))
    (segment,) = tmp_path.glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert drain(Spool(tmp_path, 1 << 20)) == []


def test_full_spool_refuses_instead_of_dropping(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 2000)
    spool.append(batch(10))
    record, appended = spool.bytes, 1  # every batch of 10 points encodes to the same size
    while spool.bytes + record <= 2000:
        spool.append(batch(10, appended * 10))
        appended += 1
    with pytest.raises(SpoolFull, match="of 2,000 bytes"):
        spool.append(batch(10, appended * 10))
    kept = drain(spool)
    assert kept
    assert kept == [batch(10, i * 10) for i in range(appended)]  # the oldest are never the ones lost
