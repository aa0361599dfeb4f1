"""History is evidence: the store-and-forward window, the audit trail of rewritten values, bounded episodes.

Through the real ingest (Mosquitto + InfluxDB, and the embedded broker + SQLite store) and the real alert
engine: a reading older than the window is refused with its reason; a back-dated reading that changes a stored
value is kept and audited (a redelivery of the same value is not); a back-dated batch cannot open an episode storm.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.contract import ReadingDecoder
from smartpark.core.errors import ConfigError
from smartpark.core.registry import AuditTrail, Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.simulators.modes import check_publish_window, window
from smartpark.simulators.scenario import default_scenario

from factories import PARK_YAML, Publisher, ServedApp, endpoint_of, forget_session, now_ms, payload, reading, wait_for
from ingest_pipeline import BACKENDS, Pipeline, run_pipeline

DAY_MS = 86_400_000
CEMS = ("steel", "sinter-cems")


@pytest.fixture(params=BACKENDS)
def pipeline(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pipeline]:
    """The ingest with the default store-and-forward window (a retention of 30 days, longer than it)."""
    yield from run_pipeline(request, tmp_path)


# ------------------------------------------------------------------------------------------------ the window
def test_a_reading_older_than_the_store_and_forward_window_is_rejected_with_its_reason(pipeline: Pipeline) -> None:
    """Within the 30-day retention but older than the 7-day window: refused (it was stored before), the
    detail naming the window; a reading 6 days late (a long outage's buffer) is still taken."""
    now = now_ms()
    old, late = now - 8 * DAY_MS, now - 6 * DAY_MS
    pipeline.publish(*CEMS, {"readings": [reading(ts=old, so2_mg_m3=1.0), reading(ts=late, so2_mg_m3=2.0)]})
    pipeline.publish(*CEMS, reading(ts=old + 1000, so2_mg_m3=3.0))  # a single reading: the other fast path
    pipeline.settle(2)
    letters = pipeline.service.dead_letters.recent()
    assert sorted((d.reason, d.item if d.item is not None else -1) for d in letters) == [
        ("ts_out_of_window", -1), ("ts_out_of_window", 0)]
    assert all("7-day store-and-forward window" in d.detail for d in letters)
    assert pipeline.service.stats.rejected["ts_out_of_window"] == 2
    assert pipeline.service.stats.counters["readings_stored"] == 1
    stored = pipeline.store.stored_fields(_points(old, late, old + 1000))
    assert [k[3] for k in stored] == [late]


def _points(*stamps: int) -> list[Any]:
    from smartpark.core.points import Point

    return [Point("emissions", *CEMS, ts, {"so2_mg_m3": 0.0}) for ts in stamps]


def test_the_decoder_names_the_bound_and_keeps_its_fast_paths() -> None:
    """Each path of the decoder (single reading, typed batch, per-reading fallback) applies the window."""
    decoder = ReadingDecoder(default_catalog(), retention_ms=30 * DAY_MS, window_ms=3 * DAY_MS)
    now = now_ms()
    ok, old = now - 2 * DAY_MS, now - 4 * DAY_MS
    single = decoder.decode("s", "d", payload(reading(ts=old, power_kw=1.0)), now)
    typed = decoder.decode("s", "d", payload({"readings": [reading(ts=old, power_kw=1.0),
                                                           reading(ts=ok, power_kw=2.0)]}), now)
    mixed = decoder.decode("s", "d", payload({"readings": [reading(ts=old, power_kw=1.0), {"metrics": {}},
                                                           reading(ts=ok, power_kw=2.0)]}), now)
    assert [r.reason.value for r in single.rejections] == ["ts_out_of_window"]
    assert [r.ts_ms for r in typed.readings] == [ok] == [r.ts_ms for r in mixed.readings]
    assert [(r.reason.value, r.index) for r in typed.rejections] == [("ts_out_of_window", 0)]
    assert [(r.reason.value, r.index) for r in mixed.rejections] == [("ts_out_of_window", 0), ("bad_schema", 1)]
    assert "3-day store-and-forward window" in single.rejections[0].detail
    longer = ReadingDecoder(default_catalog(), retention_ms=DAY_MS, window_ms=3 * DAY_MS)  # the retention bounds
    (rejected,) = longer.decode("s", "d", payload(reading(ts=ok, power_kw=1.0)), now).rejections
    assert "1-day retention" in rejected.detail


def test_publishing_history_beyond_the_window_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    """`simulate --publish` / accelerated go through the ingest: a run older than the window would be
    dead-lettered, so it is refused up front (a backfill straight into the store is not bounded)."""
    scenario = default_scenario()
    now = now_ms()
    check_publish_window(window(scenario, "accelerated", 2.9, now_ms=now), 3 * DAY_MS, now_ms=now)
    with pytest.raises(ConfigError, match="3-day store-and-forward window"):
        check_publish_window(window(scenario, "backfill", 3.1, now_ms=now), 3 * DAY_MS, now_ms=now)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")}
    env |= {"SMARTPARK_DATA_DIR": str(tmp_path / "data"), "SMARTPARK_MQTT_URL": "mqtt://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "smartpark", "simulate", "--mode", "backfill", "--publish",
                           "--days", "8"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "7-day store-and-forward window" in done.stderr
    assert "published" not in done.stderr


# ------------------------------------------------------------------------------------------------ the audit trail
def test_a_back_dated_rewrite_is_kept_and_audited_and_a_redelivery_is_not(pipeline: Pipeline,
                                                                         tmp_path: Path) -> None:
    t0 = (now_ms() - 3_600_000) // 1000 * 1000
    minute = 60_000
    pipeline.publish(*CEMS, {"readings": [reading(ts=t0 + i * minute, so2_mg_m3=500.0 + i, o2_pct=16.0)
                                          for i in range(5)]})  # an exceedance, stored
    pipeline.publish(*CEMS, reading(ts=t0 + 10 * minute, so2_mg_m3=20.0))
    pipeline.settle(2)
    # later: the plant "corrects" its past, amid a redelivery and a gap filled late
    pipeline.publish(*CEMS, reading(ts=t0, so2_mg_m3=5.0, o2_pct=16.0))  # rewrite of so2; o2 the same
    pipeline.publish(*CEMS, reading(ts=t0 + minute, so2_mg_m3=501.0, o2_pct=16.0))  # redelivery: same values
    pipeline.publish(*CEMS, {"readings": [reading(ts=t0 + 7 * minute, so2_mg_m3=9.0),  # a gap filled: new
                                          reading(ts=t0 + 2 * minute, so2_mg_m3=6.0)]})  # rewrite
    pipeline.publish(*CEMS, reading(ts=t0 + 2 * minute, so2_mg_m3=7.0))  # and again, right behind it
    pipeline.settle(6)
    trail = AuditTrail(pipeline.registry.engine)
    rows, total = trail.rewrites()
    got = sorted((r.device, r.site, r.metric, r.ts_ms, r.old_value, r.new_value) for r in rows)
    assert got == sorted([("sinter-cems", "steel", "so2_mg_m3", t0, 500.0, 5.0),
                          ("sinter-cems", "steel", "so2_mg_m3", t0 + 2 * minute, 502.0, 6.0),
                          ("sinter-cems", "steel", "so2_mg_m3", t0 + 2 * minute, 6.0, 7.0)])
    assert total == 3
    assert all(now_ms() - 60_000 < r.received_ms <= now_ms() for r in rows)
    assert pipeline.service.stats.counters["rewrites_recorded"] == 3
    stored = pipeline.store.stored_fields(_points(t0, t0 + 2 * minute))
    assert stored[("emissions", *CEMS, t0)]["so2_mg_m3"] == 5.0  # the new value is kept
    assert stored[("emissions", *CEMS, t0 + 2 * minute)]["so2_mg_m3"] == 7.0
    _check_listing(pipeline, tmp_path, t0)


def _check_listing(pipeline: Pipeline, tmp_path: Path, t0: int) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    served = ServedApp(create_app(settings, registry=pipeline.registry, store=pipeline.store,
                                  catalog=default_catalog()))
    try:
        admin = {"Authorization": f"Bearer {pipeline.registry.create_api_key('admin', [])}"}
        site = {"Authorization": f"Bearer {pipeline.registry.create_api_key('site', ['steel'])}"}
        page = served.client.get("/v1/audit/rewrites", params={"limit": 2}, headers=admin).json()
        assert (page["total"], page["offset"], page["limit"], len(page["items"])) == (3, 0, 2, 2)
        newest = page["items"][0]
        assert (newest["device"], newest["metric"], newest["old_value"], newest["new_value"]) == (
            "sinter-cems", "so2_mg_m3", 6.0, 7.0)
        rest = served.client.get("/v1/audit/rewrites", params={"offset": 2, "device": "sinter-cems"},
                                 headers=admin).json()
        assert [(i["old_value"], i["new_value"]) for i in rest["items"]] == [(500.0, 5.0)]
        assert rest["items"][0]["ts"].startswith(_iso_second(t0))
        assert served.client.get("/v1/audit/rewrites", params={"site": "park-green"}, headers=admin).json()[
            "total"] == 0
        assert served.client.get("/v1/audit/rewrites", headers=site).status_code == 403
        assert served.client.get("/v1/audit/rewrites").status_code == 401
        assert served.client.get("/v1/audit/rewrites", params={"device": "x\n"}, headers=admin).status_code == 422
    finally:
        served.close()


def _iso_second(ms: int) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))


def test_a_rewrite_right_after_a_restart_is_audited(pipeline: Pipeline) -> None:
    """The device's last time comes from the store at start: its first message after a restart is checked."""
    t0 = (now_ms() - 600_000) // 1000 * 1000
    pipeline.publish(*CEMS, {"readings": [reading(ts=t0, so2_mg_m3=80.0), reading(ts=t0 + 1000, so2_mg_m3=81.0)]})
    pipeline.settle(1)
    pipeline.service.decoder.last_ts.clear()  # as after a restart
    pipeline.service._seed_last_seen()
    pipeline.publish(*CEMS, reading(ts=t0, so2_mg_m3=8.0))
    pipeline.settle(2)
    rows, _ = AuditTrail(pipeline.registry.engine).rewrites()
    assert [(r.ts_ms, r.old_value, r.new_value) for r in rows] == [(t0, 80.0, 8.0)]


# ------------------------------------------------------------------------------------------------ episodes
NOX_TOPIC = "smartpark/v1/steel/sinter-cems/telemetry"
RULE = "nox-over-limit"  # a default rule: sinter NOx (O2-corrected; at 16 % O2 as measured) over 50 for 5 minutes


@dataclass
class Alerts:
    engine: Any
    repo: Any
    publisher: Publisher

    def send(self, body: dict[str, Any]) -> None:
        before = self.engine.processed
        self.publisher.publish(NOX_TOPIC, body)
        wait_for(lambda: self.engine.processed > before)

    def episodes(self) -> list[Any]:
        rows, _ = self.repo.episodes(sites=None, active=None, limit=1000)
        return sorted((e for e in rows if e.rule_id == RULE), key=lambda e: e.started_ms)


@pytest.fixture
def alerts(tmp_path: Path, mosquitto: Any) -> Iterator[Alerts]:
    from smartpark.platform import alert_engine

    settings = Settings(_env_file=None, data_dir=tmp_path, alerts_client_id=f"smartpark-alerts-{uuid.uuid4().hex[:8]}",  # type: ignore[call-arg]
                        alerts_eval_interval_s=3600, retention_days=30)  # schedule rules out of the way
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    engine = alert_engine(settings, registry, store, default_catalog(), endpoint=endpoint_of(mosquitto), mqtt5=True)
    engine.start()
    publisher = Publisher(mosquitto.host, mosquitto.port)
    try:
        yield Alerts(engine, engine.repo, publisher)
    finally:
        publisher.close()
        engine.stop()
        store.close()
        registry.close()
        forget_session(mosquitto.host, mosquitto.port, settings.alerts_client_id)


def nox(value: float, ts: int) -> dict[str, Any]:
    return {"ts": ts, "metrics": {"nox_mg_m3": value, "o2_pct": 16.0}}


def test_a_back_dated_65_kb_batch_opens_at_most_the_rate_limit_and_counts_the_rest(alerts: Alerts) -> None:
    """1,000 invented readings five minutes apart, days back: over, over (5 minutes: fires), under (resolves).
    It opened 333 episodes (and their webhooks) at once; now the first 6 of the hour, the rest counted."""
    step = 300_000
    t0 = (now_ms() - 5 * DAY_MS) // step * step
    batch = {"readings": [nox(900.0 if i % 3 != 2 else 1.0, t0 + i * step) for i in range(1000)]}
    body = payload(batch).replace(b" ", b"")
    assert 60_000 < len(body) <= 64 * 1024
    alerts.send(body)  # type: ignore[arg-type]
    episodes = alerts.episodes()
    assert [(e.started_ms, e.ended_ms, e.state) for e in episodes] == [
        (t0 + 3 * k * step, t0 + (3 * k + 2) * step, "resolved") for k in range(6)]  # the first six, as they were
    assert alerts.engine.book.suppressed == 327
    assert alerts.repo.states()[(RULE, "sinter-cems")].suppressed == 327  # committed with the batch
    alerts.engine.book.clock = lambda: now_ms() + 3_600_000  # the next hour: episodes open again
    later = t0 + 1000 * step
    alerts.send({"readings": [nox(1.0, later), nox(900.0, later + step), nox(900.0, later + 2 * step)]})
    (newest,) = [e for e in alerts.episodes() if e.started_ms == later + step]
    assert "327 earlier episodes suppressed by the rate limit" in newest.message


def test_a_reading_older_than_the_last_seen_is_judged_on_its_own_timestamp(alerts: Alerts) -> None:
    """Back-dated readings were not evaluated at all; now on a late timeline: their own episode (beside the
    live one), resolved where the late data clears or ends, and not again when redelivered."""
    now = now_ms() // 1000 * 1000
    alerts.send({"readings": [nox(80.0, now - 400_000), nox(80.0, now - 60_000)]})  # live: firing
    (live,) = alerts.episodes()
    t = now - 7_200_000
    past = {"readings": [nox(70.0, t + i * 60_000) for i in range(7)] + [nox(10.0, t + 420_000)]}
    alerts.send(past)
    alerts.send(past)  # a redelivery: nothing new
    alerts.send(nox(80.0, now - 400_000))  # a duplicate of a live reading: nothing new either
    first = [e for e in alerts.episodes() if e.id != live.id]
    assert [(e.started_ms, e.ended_ms, e.state) for e in first] == [(t, t + 420_000, "resolved")]
    assert first[0].message.startswith("late data: ")
    t2 = t + 1_800_000  # a late segment that ends while over the limit
    alerts.send({"readings": [nox(70.0, t2 + i * 60_000) for i in range(7)]})
    alerts.send(nox(80.0, now - 30_000))  # the next batch carries no late data: the late episode ends
    by_start = {e.started_ms: e for e in alerts.episodes()}
    assert (by_start[t2].state, by_start[t2].ended_ms) == ("resolved", t2 + 360_000)
    assert by_start[live.started_ms].state == "firing"  # the live episode was never disturbed
    assert len(by_start) == 3


def test_live_spans_tell_duplicates_from_late_data() -> None:
    from smartpark.alerts.evaluate import LIVE_GAP_MS, LIVE_SPANS, State, covered, extend_live

    state = State()
    for ts in (1_000, 61_000, 121_000, 121_000 + LIVE_GAP_MS + 1):  # a gap longer than LIVE_GAP_MS after 121 s
        extend_live(state, ts)
        state.last_ts = ts
    assert state.live == [[1_000, 121_000], [121_000 + LIVE_GAP_MS + 1] * 2]
    assert covered(state, 61_000)  # a duplicate
    assert not covered(state, 500)  # before the first span: late data
    assert not covered(state, 200_000)  # in the gap: late data
    legacy = State(last_ts=50_000)  # kept before spans existed: everything up to last_ts counts as judged
    assert covered(legacy, 10)
    extend_live(legacy, 60_000)
    assert legacy.live == [[0, 60_000]]
    sparse = State()
    for k in range(LIVE_SPANS + 5):
        extend_live(sparse, k * 10 * LIVE_GAP_MS)
    assert len(sparse.live) == LIVE_SPANS  # bounded: the oldest gaps merge (and count as covered)
    assert covered(sparse, 15 * LIVE_GAP_MS)
    assert not covered(sparse, (LIVE_SPANS + 3) * 10 * LIVE_GAP_MS + 5 * LIVE_GAP_MS)


def test_stored_fields_finds_exactly_the_stored_keys_in_both_stores(store: TimeSeriesStore) -> None:
    """The batched look-up: keys far apart (several InfluxQL ranges), another device, flags, keys never stored."""
    from smartpark.core.points import Point

    t0 = (now_ms() - 2 * DAY_MS) // 1000 * 1000
    stamps = [t0, t0 + 1000, t0 + 3_600_000, t0 + DAY_MS]
    store.write([Point("emissions", *CEMS, ts, {"so2_mg_m3": float(i), "so2_mg_m3_flag": "C"})
                 for i, ts in enumerate(stamps)] + [Point("emissions", "steel", "other", t0, {"so2_mg_m3": 9.0})])
    asked = [Point("emissions", *CEMS, ts, {"so2_mg_m3": 0.0}) for ts in [*stamps, t0 + 500, t0 + 7_200_000]]
    found = store.stored_fields(asked)
    assert {k: v["so2_mg_m3"] for k, v in found.items()} == {
        ("emissions", *CEMS, ts): float(i) for i, ts in enumerate(stamps)}
    assert store.stored_fields([]) == {}
