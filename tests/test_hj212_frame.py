"""HJ 212 framing and CRC: the domain.md vector, built packets, and every malformation with its reason."""

from __future__ import annotations

import pytest

from smartpark.hj212.frame import Frame, FrameReader, Malformed, build_frame, crc16, crc16_fast

from factories import now_ms
from hj212_packets import minute_frame

VECTOR = (b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
          b"CP=&&RtdInterval=30&&1C80\r\n")


def test_crc_matches_the_standard_vector() -> None:
    segment = VECTOR[6:-6]
    assert len(segment) == 101
    assert crc16(segment) == 0x1C80
    assert crc16_fast(segment) == 0x1C80
    assert build_frame(segment) == VECTOR


def test_crc_is_not_modbus() -> None:
    # CRC-16/MODBUS of the same bytes differs: the standard's register update is another one.
    segment = VECTOR[6:-6]
    crc = 0xFFFF
    for byte in segment:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    assert crc != crc16(segment)


@pytest.mark.parametrize("data", [b"", b"a", b"QN=1;CP=&&&&", bytes(range(256)), b"x" * 1500])
def test_table_crc_equals_bitwise_crc(data: bytes) -> None:
    assert crc16_fast(data) == crc16(data)


def test_built_packet_round_trips() -> None:
    frame = minute_frame(now_ms())
    (got,) = FrameReader().feed(frame)
    assert isinstance(got, Frame)
    assert got.raw == frame
    assert crc16(got.segment) == int(frame[-6:-2], 16)


def test_split_across_reads_and_several_in_one_read() -> None:
    a, b = minute_frame(now_ms()), minute_frame(now_ms() - 60_000)
    reader = FrameReader()
    out = []
    stream = a + b
    for i in range(0, len(stream), 7):  # 7-byte reads: every boundary falls somewhere odd
        out += reader.feed(stream[i:i + 7])
    assert [f.raw for f in out] == [a, b]
    assert reader.pending == 0
    assert [f.raw for f in FrameReader().feed(a + b + a)] == [a, b, a]


def test_garbage_between_frames_is_counted_and_skipped() -> None:
    a = minute_frame(now_ms())
    out = FrameReader().feed(b"\x00\xffnoise" + a + b"junk#" + a)
    assert [type(x).__name__ for x in out] == ["Malformed", "Frame", "Malformed", "Frame"]
    assert out[0].reason == out[2].reason == "garbage"


def test_a_lone_hash_at_the_end_waits_for_the_next_read() -> None:
    a = minute_frame(now_ms())
    reader = FrameReader()
    assert reader.feed(b"xx#") == [Malformed("garbage", "2 bytes outside a frame", b"xx")]
    out = reader.feed(a[1:])
    assert [f.raw for f in out if isinstance(f, Frame)] == [a]


def test_wrong_crc() -> None:
    a = bytearray(minute_frame(now_ms()))
    a[-6:-2] = b"0000" if a[-6:-2] != b"0000" else b"0001"
    (bad,) = FrameReader().feed(bytes(a))
    assert isinstance(bad, Malformed)
    assert bad.reason == "bad_crc"
    assert bad.segment is not None
    (bad,) = FrameReader().feed(bytes(a[:-6]) + b"XYZ!\r\n")
    assert bad.reason == "bad_crc"


def test_length_not_digits_then_resync() -> None:
    a = minute_frame(now_ms())
    out = FrameReader().feed(b"##01x5QN=1;" + a)
    assert out[0].reason == "bad_length"
    assert isinstance(out[-1], Frame)


def test_length_too_short_or_too_long_resyncs_on_the_next_frame() -> None:
    a = minute_frame(now_ms())
    n = int(a[2:6])
    short = a[:2] + b"%04d" % (n - 3) + a[6:]
    out = FrameReader().feed(short + a)
    assert out[0].reason == "bad_length"
    assert [f.raw for f in out if isinstance(f, Frame)] == [a]
    long_ = a[:2] + b"%04d" % (n + 40) + a[6:]
    reader = FrameReader()
    assert reader.feed(long_) == []  # could still be a longer frame: wait
    out = reader.feed(a)
    assert out[0].reason == "bad_length"
    assert [f.raw for f in out if isinstance(f, Frame)] == [a]


def test_oversized_frame_is_refused_without_buffering_it() -> None:
    reader = FrameReader(max_segment=1024)
    out = reader.feed(b"##5000QN=")
    assert out[0].reason == "too_large"
    assert reader.pending == 0
    body = b"x" * 5000 + b"ABCD\r\n"
    out = reader.feed(body)
    assert all(isinstance(x, Malformed) and x.reason == "garbage" for x in out)
    assert reader.pending <= 1


def test_buffer_stays_bounded_under_endless_garbage() -> None:
    reader = FrameReader(max_segment=1024)
    for _ in range(1000):
        reader.feed(b"x" * 4096)
        assert reader.pending <= 1
