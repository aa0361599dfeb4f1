"""The HJ 212 data segment: each data command, every Flag bit, split packets, DataTime in the park's zone,
the code table, and each malformation with its reason."""

from __future__ import annotations

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.contract import ReadingDecoder, Reason
from smartpark.hj212.codes import load_codes
from smartpark.hj212.convert import convert, zs_disagreements
from smartpark.hj212.errors import REASONS, PacketError
from smartpark.hj212.frame import FrameReader
from smartpark.hj212.parse import Flag, data_time_ms, parse_segment
from smartpark.hj212.reply import data_answer, refusal

from factories import now_ms
from hj212_packets import MN, PW, TZ, data_time, minute_cp, qn, segment

CATALOG = default_catalog()
CODES = load_codes(CATALOG)
DECODER = ReadingDecoder(CATALOG, retention_ms=30 * 86_400_000)
DEVICE = ("steel", "sinter-cems")


def run(seg: str, now: int | None = None):
    packet = parse_segment(seg.encode())
    return packet, convert(packet, DEVICE, CODES, DECODER, tz=TZ, now_ms=now or now_ms())


def test_header_fields() -> None:
    ts = now_ms()
    p = parse_segment(segment(minute_cp(ts), qn_text=qn(ts)).encode())
    assert (p.qn, p.st, p.cn, p.pw, p.mn, p.flag.value) == (qn(ts), "31", "2051", PW, MN, 5)
    assert p.data_time == data_time(ts)
    assert p.cp[1] == {"a21026-Avg": "20.0", "a21026-Flag": "N"}


@pytest.mark.parametrize(("value", "answer", "split", "version"), [
    (4, False, False, 1), (5, True, False, 1), (6, False, True, 1), (7, True, True, 1),
    (9, True, False, 2), (13, True, False, 3)])
def test_flag_bits(value: int, answer: bool, split: bool, version: int) -> None:
    f = Flag(value)
    assert (f.answer, f.split, f.version) == (answer, split, version)


def test_flag_version_0_is_hjt_212_2005_and_refused() -> None:
    with pytest.raises(PacketError) as exc:
        parse_segment(segment("DataTime=20250101000000;a21026-Avg=1", flag=1, qn_text="2025" * 4 + "0").encode())
    assert exc.value.reason == "unsupported_version"


def test_version_2025_flag_is_taken_and_answered_with_its_own_version() -> None:
    ts = now_ms()
    p = parse_segment(segment(minute_cp(ts), flag=9, qn_text=qn(ts)).encode())  # V=2, A=1 [U]
    assert p.flag.version == 2
    assert b";Flag=8;" in data_answer(p)


def test_minute_data_maps_codes_flags_and_corrected_values() -> None:
    ts = now_ms() - 120_000
    _, done = run(segment(minute_cp(ts, nox=60.0, nox_zs=75.0, nox_flag="C"), qn_text=qn(ts)))
    (r,) = done.decoded.readings
    assert r.ts_ms == ts - ts % 1000
    assert r.metrics["nox_mg_m3"] == 60.0
    assert r.metrics["nox_zs_mg_m3"] == 75.0
    assert r.metrics["flow_nm3_h"] == pytest.approx(140.0 * 3600)
    assert r.metrics["temp_c"] == 120.5
    assert r.flags == {"nox_mg_m3": "C", "nox_zs_mg_m3": "C"}  # -Flag covers the code's values
    assert done.unmapped == 0


def test_real_time_hourly_and_daily_data() -> None:
    ts = now_ms() - 3 * 3600_000
    _, rt = run(segment(f"DataTime={data_time(ts)};a21002-Rtd=33.1,a21002-ZsRtd=41.4,a21002-Flag=N", cn="2011",
                        qn_text=qn(ts)))
    assert rt.decoded.readings[0].metrics == {"nox_mg_m3": 33.1, "nox_zs_mg_m3": 41.4}
    _, hour = run(segment(f"DataTime={data_time(ts)};a21002-Avg=45,a21002-ZsAvg=56.2,a21002-Min=1,"
                          f"a21002-Max=90,a21002-Cou=3.3,a21002-Flag=N", cn="2061", qn_text=qn(ts)))
    assert hour.decoded.readings[0].metrics == {"nox_h_mg_m3": 45.0, "nox_zs_h_mg_m3": 56.2}
    _, day = run(segment(f"DataTime={data_time(ts)};a21026-Avg=12,a21026-ZsAvg=15", cn="2031", qn_text=qn(ts)))
    assert day.decoded.readings[0].metrics == {"so2_zs_d_mg_m3": 15.0}


def test_data_time_is_the_park_local_clock() -> None:
    assert data_time_ms("20260101080000", TZ) == 1767225600000  # 2026-01-01T00:00:00Z


def test_unknown_codes_are_counted_not_fatal() -> None:
    ts = now_ms()
    _, done = run(segment(f"DataTime={data_time(ts)};a21002-Avg=10;a99999-Avg=3;a01011-Avg=12", qn_text=qn(ts)))
    assert done.unmapped == 2
    assert done.decoded.readings[0].metrics == {"nox_mg_m3": 10.0}


def test_contract_rules_apply_out_of_range_and_future() -> None:
    ts = now_ms()
    _, done = run(segment(f"DataTime={data_time(ts)};a19001-Avg=25", qn_text=qn(ts)))
    assert done.decoded.rejections[0].reason is Reason.OUT_OF_RANGE
    future = ts + 3600_000
    _, done = run(segment(f"DataTime={data_time(future)};a19001-Avg=15", qn_text=qn(ts)))
    assert done.decoded.rejections[0].reason is Reason.TS_OUT_OF_WINDOW
    _, done = run(segment(f"DataTime={data_time(ts)};a19001-Avg=15,a19001-Flag=P", qn_text=qn(ts)))
    assert done.decoded.rejections[0].reason is Reason.BAD_SCHEMA  # P: a 2005 flag


@pytest.mark.parametrize(("seg", "reason"), [
    (b"QN=1;ST=31;CN=2051;PW=1;MN=1;Flag=5", "bad_segment"),  # no CP
    (b"ST=31;CN=2051;PW=1;Flag=5;CP=&&DataTime=20250101000000&&", "bad_segment"),  # no MN
    (b"ST=31;CN=2051;PW=1;MN=1;Flag=5;CP=&&DataTime=20250101000000&&", "bad_qn"),  # answer wanted, no QN
    (b"QN=2025;ST=31;CN=2051;PW=1;MN=1;Flag=4;CP=&&&&", "bad_qn"),
    (b"QN=20250101000000000;ST=31;CN=2051;PW=1;MN=1;CP=&&&&", "bad_flag"),
    (b"QN=20250101000000000;ST=31;CN=2051;PW=1;MN=1;Flag=x;CP=&&&&", "bad_flag"),
    (b"QN=20250101000000000;ST=31;CN=2051;PW=1;MN=1;Flag=6;CP=&&&&", "bad_split"),  # D without PNUM
    (b"QN=20250101000000000;ST=31;CN=2051;PW=1;MN=1;Flag=6;PNUM=2;PNO=3;CP=&&&&", "bad_split"),
    (b"QN=20250101000000000;ST=31;CN=2051;PW=1;MN=1;Flag=4;CP=&&a21026-Avg&&", "bad_segment"),
    (b"QN=20250101000000000;ST=31;CN=2051;PW=\xff;MN=1;Flag=4;CP=&&&&", "bad_encoding"),
])
def test_malformed_segments_have_their_reason(seg: bytes, reason: str) -> None:
    with pytest.raises(PacketError) as exc:
        parse_segment(seg)
    assert exc.value.reason == reason
    assert reason in REASONS


@pytest.mark.parametrize(("cp", "reason"), [
    ("a21026-Avg=1", "bad_datatime"),
    ("DataTime=2025;a21026-Avg=1", "bad_datatime"),
    ("DataTime=20251399000000;a21026-Avg=1", "bad_datatime"),
    ("DataTime=20250101000000;a21026-Avg=abc", "bad_value"),
    ("DataTime=20250101000000;a99999-Avg=1", "bad_segment"),  # nothing the code table maps
])
def test_malformed_data_has_its_reason(cp: str, reason: str) -> None:
    with pytest.raises(PacketError) as exc:
        run(segment(cp, flag=4))
    assert exc.value.reason == reason


def test_split_packet_header() -> None:
    p = parse_segment(segment("DataTime=20250101000000;a21026-Avg=1", flag=7, qn_text="2" * 17,
                              extra="PNUM=3;PNO=2;").encode())
    assert (p.flag.split, p.pnum, p.pno) == (True, 3, 2)


def test_answers_carry_the_request_qn() -> None:
    ts = now_ms()
    p = parse_segment(segment(minute_cp(ts), qn_text=qn(ts)).encode())
    (answer,) = FrameReader().feed(data_answer(p))
    assert answer.segment == f"QN={qn(ts)};ST=91;CN=9014;PW={PW};MN={MN};Flag=4;CP=&&&&".encode()
    (refused,) = FrameReader().feed(refusal(p, "wrong_pw"))
    assert refused.segment.endswith(b"CN=9011;PW=123456;MN=88888880000001;Flag=4;CP=&&QnRtn=3&&")


def test_corrected_values_that_disagree_with_the_platform_are_found() -> None:
    from smartpark.core.reference import default_reference

    ref = default_reference()
    sinter = ref.source_type("sinter")  # 16 % reference O2
    ok = {"nox_mg_m3": 40.0, "o2_pct": 17.0, "nox_zs_mg_m3": 50.0}  # 40 x 5 / 4
    assert zs_disagreements(ok, sinter, ref.emissions.o2_correction_max_pct) == []
    wrong_o2_ref = {"nox_mg_m3": 40.0, "o2_pct": 17.0, "nox_zs_mg_m3": 40.0}
    assert zs_disagreements(wrong_o2_ref, sinter, ref.emissions.o2_correction_max_pct) == ["nox_mg_m3"]


# ------------------------------------------------------------------------------------------ HJ 212-2025 [S]
def test_an_encrypted_cp_is_refused_with_its_own_reason() -> None:
    with pytest.raises(PacketError) as exc:
        parse_segment(segment("5B3C0A9F1E2D4C6B8A7F9E0D1C2B3A49", flag=9, qn_text="2" * 17).encode())
    assert exc.value.reason == "encrypted"
    assert "encrypted" in REASONS


def test_utf8_text_in_cp_is_taken() -> None:
    ts = now_ms()
    p, done = run(segment(f"DataTime={data_time(ts)};Info=烧结机头;a21002-Avg=30", flag=9, qn_text=qn(ts)))
    assert p.cp[1] == {"Info": "烧结机头"}
    assert done.decoded.readings[0].metrics == {"nox_mg_m3": 30.0}


def test_a_corrected_value_of_9999_99_means_not_correctable() -> None:
    ts = now_ms()
    _, done = run(segment(f"DataTime={data_time(ts)};a21002-Avg=30,a21002-ZsAvg=9999.99,a21002-Flag=N;"
                          f"a19001-Avg=20.8", flag=9, qn_text=qn(ts)))
    assert done.decoded.readings[0].metrics == {"nox_mg_m3": 30.0, "o2_pct": 20.8}
    assert done.sentinels == 1
