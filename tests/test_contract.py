"""The wire contract in code: topics, ids, readings, batches and every rejection reason."""

from __future__ import annotations

import json

import pytest

from smartpark.core.catalog import default_catalog
from smartpark.core.contract import MAX_PAYLOAD, ReadingDecoder, Reason, parse_topic, to_points
from smartpark.core.ids import is_valid_id, valid_site_id

from factories import now_ms, payload, reading

DAY = 86_400_000


@pytest.fixture
def decoder() -> ReadingDecoder:
    return ReadingDecoder(default_catalog(), retention_ms=30 * DAY)


def reasons(decoded: object) -> list[str]:
    return [r.reason.value for r in decoded.rejections]  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["steel-works", "a", "s_1", "0" * 63])
def test_valid_ids(value: str) -> None:
    assert is_valid_id(value)


@pytest.mark.parametrize("value", ["", "Steel", "-a", "a b", "a/b", "a+", "#", "0" * 64, "钢"])
def test_invalid_ids(value: str) -> None:
    assert not is_valid_id(value)
    with pytest.raises(ValueError, match="invalid site id"):
        valid_site_id(value)


def test_parse_topic() -> None:
    assert parse_topic("smartpark/v1/steel/sinter-cems/telemetry") == ("steel", "sinter-cems", "telemetry")
    assert parse_topic("smartpark/v1/steel/sinter-cems/status").kind == "status"  # type: ignore[union-attr]
    for bad in ["smartpark/v2/s/d/telemetry", "smartpark/v1/s/d", "smartpark/v1/S/d/telemetry",
                "smartpark/v1/s/d/other", "smartpark/v1/s/d/telemetry/x"]:
        assert parse_topic(bad) is None, bad


def test_documented_reading_decodes(decoder: ReadingDecoder) -> None:
    now = now_ms()
    body = {"ts": now, "seq": 42, "metrics": {"so2_mg_m3": 18.2, "nox_mg_m3": 41.0, "pm_mg_m3": 3.1,
                                              "o2_pct": 16.4, "flow_nm3_h": 512000},
            "flags": {"nox_mg_m3": "C", "so2_mg_m3": "N"}}
    out = decoder.decode("steel", "cems", payload(body), now)
    assert out.rejections == []
    (r,) = out.readings
    assert (r.site, r.device, r.ts_ms, r.seq) == ("steel", "cems", now, 42)
    assert r.metrics["flow_nm3_h"] == 512000.0
    assert r.flags == {"nox_mg_m3": "C"}  # N is the default and is not stored


def test_missing_ts_takes_receive_time(decoder: ReadingDecoder) -> None:
    now = now_ms()
    stamped = decoder.decode("s", "d", payload(reading(power_kw=1)), now)
    assert stamped.readings[0].ts_ms == now
    assert stamped.readings[0].ts_from_device is False
    (point,) = to_points(stamped.readings, default_catalog())
    assert point.fields["ts_source"] == "platform"


def test_rfc3339_converts_to_epoch_ms(decoder: ReadingDecoder) -> None:
    now = 1795881600000  # 2026-11-28T16:00:00Z
    out = decoder.decode("s", "d", payload(reading(ts="2026-11-28T23:59:00.5+08:00", power_kw=1)), now)
    assert out.readings[0].ts_ms == now - 59_500
    out = decoder.decode("s", "d", payload(reading(ts="2026-11-28T15:59:59.999Z", power_kw=1)), now)
    assert out.readings[0].ts_ms == now - 1


CASES = [
    (b"{not json", "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[1, 2]", "bad_schema"),
    (payload({"metric": {"power_kw": 1}}), "bad_schema"),
    (payload(reading()), "bad_schema"),  # empty metrics
    (payload({"metrics": {f"m{i}": 1 for i in range(65)}}), "bad_schema"),
    (payload(reading(power_kw="12")), "bad_schema"),
    (payload(reading(power_kw=True)), "bad_schema"),
    (payload(reading(power_kw=1, seq=-1)), "bad_schema"),
    (payload(reading(power_kw=1, flags={"power_kw": "X"})), "bad_schema"),
    (payload(reading(power_kw=1, flags={"o2_pct": "C"})), "bad_schema"),
    (payload(reading(ts=1.5, power_kw=1)), "bad_schema"),
    (payload(reading(ts="2026-11-28T08:00:00", power_kw=1)), "bad_schema"),  # no offset
    (payload({"readings": []}), "bad_schema"),
    (payload(reading(colour_kw=1)), "unknown_metric"),
    (b'{"metrics": {"power_kw": NaN}}', "non_finite"),
    (b'{"metrics": {"power_kw": Infinity}}', "non_finite"),
    (b'{"metrics": {"power_kw": -Infinity}}', "non_finite"),
    (b'{"metrics": {"power_kw": 1e999}}', "non_finite"),
    (payload(reading(o2_pct=21.5)), "out_of_range"),
    (payload(reading(energy_kwh=-1)), "out_of_range"),
    (b'{"metrics": {"power_kw": 1, "pad": "' + b"x" * MAX_PAYLOAD + b'"}}', "too_large"),
    (payload({"readings": [reading(power_kw=1)] * 1001}), "too_large"),
]


@pytest.mark.parametrize(("body", "reason"), CASES)
def test_rejections(decoder: ReadingDecoder, body: bytes, reason: str) -> None:
    out = decoder.decode("s", "d", body, now_ms())
    assert out.readings == []
    assert reasons(out) == [reason]
    assert out.rejections[0].detail


def test_timestamp_window(decoder: ReadingDecoder) -> None:
    now = now_ms()
    assert decoder.decode("s", "d", payload(reading(ts=now + 299_000, power_kw=1)), now).readings
    assert reasons(decoder.decode("s", "d", payload(reading(ts=now + 301_000, power_kw=1)), now)) == [
        "ts_out_of_window"]
    assert reasons(decoder.decode("s", "d", payload(reading(ts=now - 31 * DAY, power_kw=1)), now)) == [
        "ts_out_of_window"]
    seconds = decoder.decode("s", "d", payload(reading(ts=now // 1000, power_kw=1)), now)
    assert reasons(seconds) == ["ts_out_of_window"]
    assert "not ms" in seconds.rejections[0].detail


def test_batch_keeps_good_readings(decoder: ReadingDecoder) -> None:
    now = now_ms()
    batch = {"readings": [reading(ts=now - 2000, power_kw=1), reading(ts=now - 1000, bogus=1),
                          {"metrics": {"power_kw": "x"}}, reading(ts=now, power_kw=3, energy_kwh=10)]}
    out = decoder.decode("s", "d", payload(batch), now)
    assert [r.metrics["power_kw"] for r in out.readings] == [1.0, 3.0]
    assert [(r.reason.value, r.index) for r in out.rejections] == [("unknown_metric", 1), ("bad_schema", 2)]


def test_batch_overflow_inside_reading_is_non_finite(decoder: ReadingDecoder) -> None:
    body = b'{"readings": [{"metrics": {"power_kw": 1}}, {"metrics": {"power_kw": 1e999}}]}'
    out = decoder.decode("s", "d", body, now_ms())
    assert len(out.readings) == 1
    assert [(r.reason.value, r.index) for r in out.rejections] == [("non_finite", 1)]


def test_points_split_by_domain_with_flags() -> None:
    now = now_ms()
    decoder = ReadingDecoder(default_catalog(), retention_ms=DAY)
    out = decoder.decode("s", "gw", payload(reading(ts=now, flags={"o2_pct": "M"}, power_kw=5, o2_pct=17,
                                                  ndvi=0.4)), now)
    points = {p.measurement: p for p in to_points(out.readings, default_catalog())}
    assert set(points) == {"energy", "emissions", "greening"}
    assert points["emissions"].fields == {"o2_pct": 17.0, "o2_pct_flag": "M"}
    assert points["energy"].fields == {"power_kw": 5.0}
    assert all(p.ts_ms == now and p.site == "s" and p.device == "gw" for p in points.values())


def test_every_reason_has_a_case() -> None:
    covered = {reason for _, reason in CASES} | {"ts_out_of_window"}
    # unknown_device and topic_mismatch need the registry: tests/test_ingest.py produces them.
    assert {r.value for r in Reason} - covered == {"unknown_device", "topic_mismatch"}


def test_payload_json_roundtrip_of_case_table() -> None:
    # Guard the table itself: the payloads meant as JSON are JSON.
    assert json.loads(CASES[2][0]) == [1, 2]


def test_batch_with_a_nan_literal_keeps_the_other_readings(decoder: ReadingDecoder) -> None:
    now = now_ms()
    body = b'{"readings": [{"ts": %d, "metrics": {"power_kw": 1}}, {"metrics": {"power_kw": NaN}}]}' % now
    out = decoder.decode("s", "d", body, now)
    assert [r.ts_ms for r in out.readings] == [now]
    assert [(r.reason.value, r.index) for r in out.rejections] == [("non_finite", 1)]


HOSTILE = [
    b'{"metrics": {"\xff": 1}}',  # invalid UTF-8 inside a JSON string
    b'{"readings": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",  # deep nesting inside a batch
    b'{"x": NaN, "y": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",  # deep nesting on the NaN slow path
    b'{"metrics": {"power_kw": 1}, "deep": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",  # in an ignored key
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_payloads_are_rejected_not_raised(decoder: ReadingDecoder, body: bytes) -> None:
    out = decoder.decode("s", "d", body, now_ms())
    assert out.readings == []
    assert len(out.rejections) == 1
    assert out.rejections[0].reason.value in {"bad_json", "bad_schema"}


def test_a_batch_decides_each_reading_as_a_single_message_would(decoder: ReadingDecoder) -> None:
    """Batches take a fast path for plain readings; its verdicts must be the single-message path's, at the
    time window's edges included."""
    now = now_ms()
    cases = [reading(ts=now + 300_000, power_kw=1), reading(ts=now + 300_001, power_kw=1),
             reading(ts=now - 30 * DAY, power_kw=1), reading(ts=now - 30 * DAY - 1, power_kw=1),
             reading(ts=now, power_kw=-1e9), reading(ts=now, nox_mg_m3=5, flags={"nox_mg_m3": "C"}),
             reading(ts=now, power_kw=2, flags={"power_kw": "N"}), reading(ts=now, unknown=1),
             reading(ts="2026-11-28T15:59:59.999Z", power_kw=1), reading(power_kw=3),
             reading(ts=now, power_kw=1, o2_pct=21.5)]
    batch = decoder.decode("s", "d", payload({"readings": cases}), now)
    singles = [decoder.decode("s", "d", payload(c), now) for c in cases]
    assert batch.readings == [r for s in singles for r in s.readings]
    assert [(r.reason, r.index) for r in batch.rejections] == [
        (s.rejections[0].reason, i) for i, s in enumerate(singles) if s.rejections]
    assert len(batch.readings) >= 5
    assert len(batch.rejections) >= 4
