"""Late data in the alert engine: hours judged on their own data whenever it lands, replays are not silence.

Readings go over real MQTT (Mosquitto) to the engine's own subscription; the test drives the schedule with the
times it chooses (``tick(now=...)``), so "an hour later" costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_alerts import MANUAL_SCHEDULE, STATUS, TOPIC, Env, nox, start_env, subscribe

from smartpark.alerts.evaluate import hour_start
from smartpark.core.catalog import default_catalog
from smartpark.core.store.embedded import EmbeddedStore

from factories import now_ms
from servers import MosquittoServer

pytestmark = pytest.mark.mosquitto
HOUR, MINUTE = 3_600_000, 60_000
HOURLY = "nox-hourly-mean"


@contextmanager
def engine_env(tmp_path: Path, mosquitto: MosquittoServer, **settings: Any) -> Iterator[Env]:
    tmp_path.mkdir(exist_ok=True)
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    try:
        yield from start_env(tmp_path, mosquitto, store, **MANUAL_SCHEDULE, **settings)
    finally:
        store.close()


@pytest.fixture
def env(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[Env]:
    with engine_env(tmp_path, mosquitto) as e:
        yield e


def minutes(hour: int, values: list[float], first: int = 0) -> list[dict[str, Any]]:
    """One sinter reading a minute from minute ``first`` of ``hour``, O2-corrected NOx ``values``."""
    return [nox(v, hour + (first + i) * MINUTE) for i, v in enumerate(values)]


def publish(e: Env, readings: list[dict[str, Any]], *, batch: bool = False) -> int:
    """Publish one reading a message, or all as one store-and-forward batch; returns the messages sent."""
    if batch:
        e.publisher.publish(TOPIC, {"readings": readings})
        return 1
    for r in readings:
        e.publisher.publish(TOPIC, r)
    return len(readings)


def hourly_episodes(e: Env) -> list[tuple[int, int | None, float, float]]:
    """(started, ended, value, peak) of the hourly-mean episodes, oldest first."""
    eps, _ = e.repo.episodes(sites=None, active=None)
    return sorted((ep.started_ms, ep.ended_ms, round(ep.value or 0, 3), round(ep.peak or 0, 3))
                  for ep in eps if ep.rule_id == HOURLY)


def test_an_hour_invalid_at_its_close_is_judged_once_when_late_minutes_make_it_valid(env: Env) -> None:
    subscribe(env, rules=[HOURLY])
    hour = hour_start(now_ms(), env.engine._tz) - 3 * HOUR
    sent = publish(env, minutes(hour, [70.0] * 40))  # 40 valid minutes: below the 45 an hour needs
    env.settle(sent)
    env.engine.tick(now=hour + HOUR + 2 * MINUTE)  # the hour has closed: invalid, no episode
    assert hourly_episodes(env) == []
    sent += publish(env, minutes(hour, [40.0] * 10, first=40), batch=True)  # the gateway's buffer arrives
    env.settle(sent)
    env.engine.tick(now=hour + 2 * HOUR)
    env.engine.tick(now=hour + 2 * HOUR + MINUTE)  # nothing new: not judged again
    mean = (40 * 70.0 + 10 * 40.0) / 50  # 64 over the final 50 valid minutes
    assert hourly_episodes(env) == [(hour, None, mean, mean)]
    fired = env.receiver.ok("alert.firing")
    assert [(r.json["rule"], r.json["value"]) for r in fired] == [(HOURLY, pytest.approx(mean))]
    [judged] = fired[0].json["readings"]
    assert judged["valid_minutes"] == 50
    assert judged["late_s"] == (hour + 2 * HOUR - (hour + HOUR) - 90_000) // 1000  # says how late it is


# Hours of one sinter stack: exceeding, exceeding, compliant, exceeding (O2-corrected NOx, limit 50)
DAY = [[30.0] * 60, [70.0] * 60, [40.0] * 30 + [90.0] * 30, [45.0] * 60, [60.0] * 60]


def _run(e: Env, start: int, outage: range | None) -> list[tuple[int, int | None, float, float]]:
    """The DAY's hours sent live (each judged after it closes) or with the hours in ``outage`` held back by the
    gateway and flushed as batches after the last hour."""
    subscribe(e, rules=[HOURLY])
    sent, held = 0, []
    for i, values in enumerate(DAY):
        hour = start + i * HOUR
        if outage is not None and i in outage:
            held += minutes(hour, values)
        else:
            sent += publish(e, minutes(hour, values))
        e.settle(sent)
        e.engine.tick(now=hour + HOUR + 2 * MINUTE)
    for i in range(0, len(held), 60):
        sent += publish(e, held[i:i + 60], batch=True)
    e.settle(sent)
    e.engine.tick(now=start + len(DAY) * HOUR + 10 * MINUTE)
    return hourly_episodes(e)


def test_a_three_hour_outage_gives_the_same_hourly_episodes_once_flushed(tmp_path: Path,
                                                                        mosquitto: MosquittoServer) -> None:
    start = hour_start(now_ms(), ZoneInfo("Asia/Shanghai")) - 24 * HOUR
    with engine_env(tmp_path / "live", mosquitto) as e:
        on_time = _run(e, start, None)
    with engine_env(tmp_path / "late", mosquitto) as e:
        flushed = _run(e, start, range(1, 4))
    # hours 1-2 exceed (70, 65) and hour 3 is compliant: one episode; hour 4 exceeds again: a second, open
    assert on_time == [(start + HOUR, start + 3 * HOUR, 70.0, 70.0), (start + 4 * HOUR, None, 60.0, 60.0)]
    assert flushed == on_time


def test_a_device_replaying_its_past_is_not_silent(env: Env) -> None:
    subscribe(env, rules=["device-no-data"])
    past = now_ms() - 2 * 86_400_000  # an accelerated replay: two days ago, sent now
    sent = publish(env, minutes(past, [30.0] * 30), batch=True)
    env.publisher.publish(STATUS, {"state": "online"})
    env.settle(sent + 1)
    env.engine.tick(now=now_ms())
    assert [ep for ep in env.repo.episodes(sites=None, active=True)[0] if ep.rule_id == "device-no-data"] == []
    env.engine.tick(now=now_ms() + int(env.settings.alerts_no_data_s * 1000) + 60_000)  # then really silent
    assert [ep.rule_id for ep in env.repo.episodes(sites=None, active=True)[0]] == ["device-no-data"]


def test_an_exceedance_longer_than_the_late_window_stays_one_episode(tmp_path: Path,
                                                                      mosquitto: MosquittoServer) -> None:
    """Verdicts older than the late window are forgotten; the open episode of a run that began there must not
    be: the run's later hours are the same exceedance, not a new episode (and webhook) every hour."""
    with engine_env(tmp_path, mosquitto) as e:
        # a late window of 2 h (the store-and-forward window, 7 days by default, also bounds what the decoder
        # takes: the readings here are 8 h old, so only the engine's own window is narrowed)
        e.engine.late_window_ms = e.engine.scheduled.late_window_ms = 2 * HOUR
        subscribe(e, rules=[HOURLY])
        start = hour_start(now_ms(), e.engine._tz) - 8 * HOUR
        sent = 0
        for i in range(6):  # six exceeding hours, each judged after it closes
            hour = start + i * HOUR
            sent += publish(e, minutes(hour, [70.0] * 60), batch=True)
            e.settle(sent)
            e.engine.tick(now=hour + HOUR + 2 * MINUTE)
        assert hourly_episodes(e) == [(start, None, 70.0, 70.0)]
        sent += publish(e, minutes(start + 6 * HOUR, [30.0] * 60), batch=True)  # a compliant hour ends it
        e.settle(sent)
        e.engine.tick(now=start + 7 * HOUR + 2 * MINUTE)
        assert hourly_episodes(e) == [(start, start + 6 * HOUR, 70.0, 70.0)]


def test_one_back_dated_batch_cannot_open_an_episode_storm(env: Env) -> None:
    """A hostile CEMS device sends 300 readings dated over the past weeks, over and under the limit of the
    5-minute NOx threshold rule in turn: each triple (over, over 301 s later, under) is an episode."""
    t0 = now_ms() - 6 * 86_400_000  # inside the store-and-forward window (7 days), so judged, not refused
    readings = []
    for i in range(100):
        t = t0 + i * 400_000
        readings += [nox(90.0, t), nox(90.0, t + 301_000), nox(20.0, t + 302_000)]
    env.settle(publish(env, readings, batch=True))
    _, total = env.repo.episodes(sites=None, active=None)
    assert total <= 10, f"{total} episodes from one message"
