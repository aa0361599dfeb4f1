"""Alert engine fixes from review: hostile payloads never fail a batch, a failed commit is redelivered and not
taken for replays, meter resets do not count as energy use, and an episode's webhooks arrive in order."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import update
from test_alerts import NOX_RULE, STATUS, TOPIC, Env, Receiver, auth, make_registry, nox, settings_for, start_env
from test_alerts_faults import subscription

from smartpark.alerts.delivery import Dispatcher
from smartpark.alerts.evaluate import day_start
from smartpark.alerts.models import Episode
from smartpark.alerts.repo import AlertRepo, Changes, Resolved, now_ms
from smartpark.alerts.rules import default_rules
from smartpark.alerts.scheduled import ScheduledEvaluator
from smartpark.core.points import Point
from smartpark.core.reference import load_reference
from smartpark.core.registry import Registry
from smartpark.core.registry.models import Site
from smartpark.core.settings import Settings
from smartpark.core.store.embedded import EmbeddedStore

from factories import now_ms as clock_ms
from factories import wait_for
from servers import MosquittoServer

MINUTE = 60_000
TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = make_registry(tmp_path)
    yield registry
    registry.close()


@pytest.fixture
def store(embedded_store: EmbeddedStore) -> EmbeddedStore:
    return embedded_store


# ------------------------------------------------------------------------------------------------ A: stream
@pytest.fixture
def live(tmp_path: Path, mosquitto: MosquittoServer, store: EmbeddedStore) -> Iterator[Env]:
    env = start_env(tmp_path, mosquitto, store)
    e = next(env)
    assert e.api.post("/v1/alerts/rules", json=NOX_RULE, headers=auth(e.admin)).status_code == 201
    hook = e.api.post("/v1/alerts/webhooks", json={"url": e.receiver.url, "rules": ["sinter-nox-test"]},
                      headers=auth(e.admin))
    assert hook.status_code == 201
    e.engine.reload()
    yield e
    next(env, None)


HOSTILE = [
    (STATUS, b'{"state":' + b"[" * 30_000 + b"]" * 30_000 + b"}"),  # RecursionError in a JSON decoder
    (STATUS, b'{"state":"\xff"}'),  # invalid UTF-8 inside a JSON string
    (STATUS, b'["offline"]'),  # not an object
    (TOPIC, b'{"metrics":{"\xff":1}}'),
    (TOPIC, b'{"metrics":' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
]


def test_hostile_payloads_are_skipped_and_their_batch_still_commits_and_acks(live: Env) -> None:
    t0 = clock_ms() - 30_000
    for topic, body in HOSTILE:
        live.publisher.publish(topic, body)
    live.publisher.publish(TOPIC, nox(90, t0))
    live.settle(len(HOSTILE) + 1)  # every message evaluated and acked, none failing a batch
    fired = live.receiver.ok("alert.firing")
    assert [r.json["value"] for r in fired] == [pytest.approx(90)]
    assert live.engine.failed_batches == 0


def test_a_failed_commit_is_redelivered_and_not_taken_for_replays(live: Env, caplog: pytest.LogCaptureFixture
                                                                  ) -> None:
    repo = live.repo
    blocker = episode("sinter-nox-test")  # holds the open-episode key: the engine's firing cannot commit
    blocker.open_key = "sinter-nox-test|sinter-cems"
    with repo.session() as s:
        s.add(blocker)  # no webhook of its own
    t0 = clock_ms() - 30_000
    live.publisher.publish(TOPIC, nox(90, t0))
    wait_for(lambda: "alert evaluation of 1 messages failed" in caplog.text)  # the unique open-episode key
    with repo.session() as s:
        s.execute(update(Episode).where(Episode.id == blocker.id).values(state="resolved", open_key=None))
    fired = wait_for(lambda: live.receiver.ok("alert.firing"))  # the broker redelivered on a new connection
    assert [(r.json["value"], r.json["id"] != blocker.id) for r in fired] == [(pytest.approx(90), True)]
    minute = t0 - t0 % MINUTE
    assert repo.minutes("sinter-cems", "nox", minute, minute + MINUTE) == [(t0, pytest.approx(90), 1)]
    assert repo.seen()["sinter-cems"] == t0


# ------------------------------------------------------------------------------------------------ B: quota
def test_energy_quota_ignores_a_meter_reset_within_an_hour(registry: Registry, store: EmbeddedStore) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    with registry.session() as s:
        s.get(Site, "steel").energy_quota_tce_day = 1.0  # type: ignore[union-attr]
    repo = AlertRepo(registry.engine)
    repo.init()
    hour = day_start(now_ms(), TZ) + 3_600_000
    counter = [100_000.0, 110_000.0, 0.0, 5_000.0]  # +10,000 kWh, a meter swap (reset to 0), +5,000 kWh
    store.write([Point("energy", "steel", "steel-meter", hour + k * MINUTE, {"energy_kwh": v})
                 for k, v in enumerate(counter)])
    evaluator = ScheduledEvaluator(repo, store, registry, load_reference(settings.reference_file),
                                   valid_minutes=45, no_data_s=600, late_window_ms=3 * 86_400_000, heard=dict)
    rule = next(r for r in default_rules(load_reference(settings.reference_file)) if r.kind == "energy_quota")
    found, _ = evaluator.gather([rule], [], {}, TZ, hour + 10 * MINUTE)
    [(_, subject, obs)] = found
    assert subject.id == "steel"
    assert obs.sample["value"] == pytest.approx(15_000 * 0.1229 / 1000)  # not (110,000 - 0) kWh
    assert obs.active  # 1.84 tce against a quota of 1


# ------------------------------------------------------------------------------------------------ C: order
def episode(rule: str = "r1") -> Episode:
    return Episode(id=f"ep_{uuid.uuid4().hex[:12]}", rule_id=rule, subject="sinter-cems", open_key=f"{rule}|x",
                   site="steel", device="sinter-cems", metric="nox_mg_m3", severity="critical", state="firing",
                   started_ms=now_ms(), value=60.0, peak=60.0, limit=50.0, unit="mg/m3", window="instant",
                   message="over", evidence=[])


def test_firing_is_delivered_before_resolved_even_when_it_needs_a_retry(tmp_path: Path,
                                                                       registry: Registry) -> None:
    settings = settings_for(tmp_path, alerts_webhook_backoff_s=0.5, alerts_webhook_backoff_max_s=1.0)
    repo = AlertRepo(registry.engine)
    repo.init()
    receiver = Receiver(script=[(503, {})])  # the firing's first attempt fails; the next one succeeds
    dispatcher = Dispatcher(repo, settings)
    try:
        subscription(repo, receiver.url)
        ep = episode()
        assert repo.commit(Changes(events=[ep, Resolved(ep.id, now_ms(), 30.0)])) == 2  # one batch: same next_ms
        dispatcher.start()
        wait_for(lambda: repo.pending_count() == 0)
        sent = [(r.json["type"], r.status) for r in receiver.received]
        assert sent == [("alert.firing", 503), ("alert.firing", 200), ("alert.resolved", 200)]
    finally:
        dispatcher.stop()
        receiver.close()


def test_the_schedule_reads_stream_state_under_the_engine_lock(live: Env) -> None:
    """The scheduled evaluator's view of when devices were heard waits while a stream batch holds the lock."""
    got: list[object] = []
    readers = [threading.Thread(target=lambda: got.append(live.engine.scheduled.heard()))]
    with live.engine._lock:
        for t in readers:
            t.start()
        for t in readers:
            t.join(0.3)
        assert got == []  # both still waiting for the lock
    for t in readers:
        t.join()
    assert got == [{}]
