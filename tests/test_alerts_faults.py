"""Alert engine faults: SIGKILL with an open episode and a pending delivery; receivers that fail, throttle,
redirect, refuse or are gone.

The crash test runs the real command (`python -m smartpark alerts`) against Mosquitto; the retry tests run
the dispatcher in process against a real HTTP receiver on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_alerts import NOX_RULE, TOPIC, Receiver, auth, make_registry, nox, settings_for, verify_standard_webhook

from smartpark.alerts.delivery import Dispatcher
from smartpark.alerts.models import Delivery, WebhookSubscription
from smartpark.alerts.repo import AlertRepo, now_ms
from smartpark.alerts.rules import RuleSpec
from smartpark.alerts.signing import message_id, new_secret
from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.store.embedded import EmbeddedStore

from factories import Publisher, ServedApp, ServiceProcess, forget_session, wait_for
from servers import MosquittoServer


def subscription(repo: AlertRepo, url: str, **filters: list[str]) -> WebhookSubscription:
    sub = WebhookSubscription(id=f"wh_{uuid.uuid4().hex[:12]}", url=url, secret=new_secret(), enabled=True,
                              disabled_reason="", description="", created_ms=now_ms(),
                              sites=filters.get("sites", []), severities=[], rules=filters.get("rules", []))
    repo.add_subscription(sub)
    return sub


# ------------------------------------------------------------------------------------------------ SIGKILL
@pytest.fixture
def engine_process(tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[ServiceProcess]:
    client_id = f"smartpark-alerts-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")} | {
        "SMARTPARK_MQTT_URL": f"mqtt://{mosquitto.host}:{mosquitto.port}", "SMARTPARK_DATA_DIR": str(tmp_path),
        "SMARTPARK_ALERTS_CLIENT_ID": client_id, "SMARTPARK_ALERTS_WEBHOOK_ALLOW_PRIVATE": "true",
        "SMARTPARK_ALERTS_WEBHOOK_BACKOFF_S": "0.2", "SMARTPARK_ALERTS_WEBHOOK_BACKOFF_MAX_S": "0.5",
        "SMARTPARK_ALERTS_WEBHOOK_MAX_ATTEMPTS": "100", "SMARTPARK_ALERTS_EVAL_INTERVAL_S": "1"}
    engine = ServiceProcess("alerts", "alert engine subscribed", tmp_path, env)
    yield engine
    if engine.running():
        engine.kill(signal.SIGTERM)
    forget_session(mosquitto.host, mosquitto.port, client_id)


def test_sigkill_neither_loses_nor_refires_and_the_pending_delivery_arrives(
        tmp_path: Path, mosquitto: MosquittoServer, engine_process: ServiceProcess) -> None:
    registry = make_registry(tmp_path)
    repo = AlertRepo(registry.engine)
    repo.init()
    repo.put_rule(RuleSpec.model_validate(NOX_RULE))
    receiver = Receiver(default=503)  # down: the firing delivery stays pending, retried
    sub = subscription(repo, receiver.url, rules=["sinter-nox-test"])
    t0 = now_ms() - 60_000
    try:
        engine_process.start()
        with Publisher(mosquitto.host, mosquitto.port) as pub:
            pub.publish(TOPIC, nox(30, t0))
            pub.publish(TOPIC, nox(70, t0 + 1000))  # fires
            wait_for(lambda: len(receiver.received) >= 2)  # attempted, refused, pending
            open_before = [e.id for e in repo.episodes(sites=None, active=True)[0]]
            assert len(open_before) == 1
            engine_process.kill()  # SIGKILL: episode open, delivery pending
            pub.publish(TOPIC, nox(75, t0 + 2000))  # still over while the engine is down: no new episode
            receiver.default = 200
            engine_process.start()
            wait_for(lambda: receiver.ok("alert.firing"))
            pub.publish(TOPIC, nox(80, t0 + 3000))
            pub.publish(TOPIC, nox(20, t0 + 4000))  # resolves
            wait_for(lambda: receiver.ok("alert.resolved"))
            wait_for(lambda: repo.pending_count() == 0)
        attempts = [r for r in receiver.received if r.json["type"] == "alert.firing"]
        assert len({r.headers["webhook-id"] for r in attempts}) == 1  # the same delivery, before and after
        assert len(receiver.ok("alert.firing")) == 1
        assert len(receiver.ok("alert.resolved")) == 1
        assert all(verify_standard_webhook(sub.secret, r.headers, r.body) for r in receiver.received)
        episodes, total = repo.episodes(sites=None, active=None)
        assert total == 1
        assert episodes[0].id == open_before[0]
        assert episodes[0].state == "resolved"
        assert episodes[0].peak == pytest.approx(80)
    finally:
        receiver.close()
        registry.close()


def test_alerts_command_needs_a_broker(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")} | {
        "SMARTPARK_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "smartpark", "alerts"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "SMARTPARK_MQTT_URL" in result.stderr


# ------------------------------------------------------------------------------------------------ retries
@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[tuple[AlertRepo, Dispatcher, ServedApp, str]]:
    settings = settings_for(tmp_path, alerts_webhook_backoff_s=0.05, alerts_webhook_backoff_max_s=3.0,
                            alerts_webhook_max_attempts=6)
    registry = make_registry(tmp_path)
    repo = AlertRepo(registry.engine)
    repo.init()
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    served = ServedApp(create_app(settings, registry=registry, store=store, catalog=default_catalog()))
    dispatcher = Dispatcher(repo, settings)
    dispatcher.start()
    yield repo, dispatcher, served, registry.create_api_key("admin", [])
    dispatcher.stop()
    served.close()
    store.close()
    registry.close()


def enqueue(repo: AlertRepo, sub: WebhookSubscription) -> str:
    msg = message_id()
    repo.add_delivery(Delivery(id=msg, subscription_id=sub.id, event_type="alert.firing", episode_id=None,
                               body=f'{{"type":"alert.firing","id":"{msg}"}}', state="pending", attempts=0,
                               created_ms=now_ms(), next_ms=now_ms(), last_status=None, last_error=""))
    return msg


def test_three_failures_then_success_arrives_on_the_fourth_attempt(
        outbox: tuple[AlertRepo, Dispatcher, ServedApp, str]) -> None:
    repo, dispatcher, served, admin = outbox
    receiver = Receiver(script=[(500, {}), (503, {}), (429, {"Retry-After": "1"})])
    try:
        sub = subscription(repo, receiver.url)
        msg = enqueue(repo, sub)
        dispatcher.wake.set()
        wait_for(receiver.ok)
        log = served.client.get(f"/v1/alerts/webhooks/{sub.id}/deliveries", headers=auth(admin)).json()
        assert [a["status"] for a in log[0]["attempts"]] == [500, 503, 429, 200]
        assert log[0]["state"] == "delivered"
        assert log[0]["id"] == msg
        assert [r.headers["webhook-id"] for r in receiver.received] == [msg] * 4
        gap = (receiver.received[3].at - receiver.received[2].at)
        assert gap >= 0.9  # Retry-After: 1 was honoured (a lower bound, not a speed requirement)
    finally:
        receiver.close()


@pytest.mark.parametrize(("status", "state", "enabled"), [(410, "gone", False), (400, "failed", True),
                                                         (302, "failed", True)])
def test_no_retry_on_4xx_and_redirects_and_410_disables(
        outbox: tuple[AlertRepo, Dispatcher, ServedApp, str], status: int, state: str, enabled: bool) -> None:
    repo, dispatcher, served, admin = outbox
    receiver = Receiver(script=[(status, {"Location": "http://169.254.169.254/"} if status == 302 else {})])
    try:
        sub = subscription(repo, receiver.url)
        enqueue(repo, sub)
        dispatcher.wake.set()
        wait_for(lambda: repo.pending_count() == 0)
        log = served.client.get(f"/v1/alerts/webhooks/{sub.id}/deliveries", headers=auth(admin)).json()
        assert log[0]["state"] == state
        assert [a["status"] for a in log[0]["attempts"]] == [status]
        shown = served.client.get(f"/v1/alerts/webhooks/{sub.id}", headers=auth(admin)).json()
        assert shown["enabled"] is enabled
        assert len(receiver.received) == 1  # never retried, the redirect never followed
        if not enabled:
            assert "410" in shown["disabled_reason"]
    finally:
        receiver.close()
