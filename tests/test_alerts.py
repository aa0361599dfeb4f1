"""Alert engine end to end: a sinter stack's NOx episodes reach a webhook receiver once each, signed; window,
status and no-data rules; the alerts API (scope and admin); the SSRF guard.

Readings are published over real MQTT (Mosquitto) to the engine's own subscription; webhooks go to a real
HTTP receiver on 127.0.0.1 (allowed by SMARTPARK_ALERTS_WEBHOOK_ALLOW_PRIVATE, as production never would).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from smartpark.alerts import AlertEngine, AlertRepo, UnsafeDestination
from smartpark.alerts.delivery import Sender
from smartpark.alerts.evaluate import hour_start
from smartpark.alerts.ssrf import check_address, resolve_target
from smartpark.api.app import create_app
from smartpark.core.catalog import default_catalog
from smartpark.core.registry import Registry, parse_park_file
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore
from smartpark.core.store.embedded import EmbeddedStore
from smartpark.platform import alert_engine

from factories import PARK_YAML, HookServer, Publisher, ServedApp, endpoint_of, forget_session, now_ms, wait_for
from servers import MosquittoServer

TOPIC = "smartpark/v1/steel/sinter-cems/telemetry"
STATUS = "smartpark/v1/steel/sinter-cems/status"
O2 = 17.0  # sinter reference O2 is 16 %: corrected = measured x (21 - 16) / (21 - 17) = measured x 1.25
NOX_RULE = {"id": "sinter-nox-test", "name": "Sinter NOx (corrected) over 50", "kind": "threshold",
            "severity": "critical", "source_type": "sinter",
            "conditions": [{"metric": "nox_mg_m3", "limit": 50, "clear": 40, "o2_corrected": True}]}


# ------------------------------------------------------------------------------------------------ helpers
def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """Standard Webhooks verification written from the specification, independently of smartpark.alerts."""
    key = base64.b64decode(secret.split("_", 1)[1])
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest())
    fresh = abs(time.time() - int(ts)) <= tolerance_s
    return fresh and any(sig.split(",", 1) == ["v1", expected.decode()]
                         for sig in headers["webhook-signature"].split(" "))


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver(HookServer):
    """A webhook receiver on 127.0.0.1: answers from ``script`` (status, headers) in turn, then ``default``."""

    def __init__(self, script: list[tuple[int, dict[str, str]]] | None = None, default: int = 200) -> None:
        self.script, self.default = list(script or []), default
        self.received: list[Received] = []
        self.lock = threading.Lock()
        super().__init__()

    def post(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("content-length", 0)))
        with self.lock:
            status, extra = self.script.pop(0) if self.script else (self.default, {})
            self.received.append(Received({k.lower(): v for k, v in request.headers.items()}, body, status,
                                          time.monotonic()))
        request.send_response(status)
        for k, v in extra.items():
            request.send_header(k, v)
        request.send_header("content-length", "0")
        request.end_headers()

    def ok(self, event_type: str | None = None) -> list[Received]:
        """Requests answered 2xx, optionally of one event type."""
        with self.lock:
            return [r for r in self.received if 200 <= r.status < 300
                    and (event_type is None or r.json["type"] == event_type)]


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    base: dict[str, Any] = {"data_dir": tmp_path, "alerts_client_id": f"smartpark-alerts-{uuid.uuid4().hex[:8]}",
                            "alerts_webhook_allow_private": True, "alerts_eval_interval_s": 0.3,
                            "alerts_webhook_backoff_s": 0.1, "alerts_webhook_backoff_max_s": 1.0,
                            "retention_days": 30}
    return Settings(_env_file=None, **(base | extra))  # type: ignore[call-arg]


def make_registry(tmp_path: Path) -> Registry:
    registry = Registry(f"sqlite:///{tmp_path / 'meta.sqlite'}")
    registry.init()
    registry.load_park(parse_park_file(PARK_YAML))
    return registry


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def nox(corrected: float, ts: int, flags: dict[str, str] | None = None) -> dict[str, Any]:
    """A sinter reading whose O2-corrected NOx is ``corrected``."""
    body: dict[str, Any] = {"ts": ts, "metrics": {"nox_mg_m3": round(corrected * (21 - O2) / 5, 6), "o2_pct": O2,
                                                  "so2_mg_m3": 10.0, "pm_mg_m3": 2.0}}
    if flags:
        body["flags"] = flags
    return body


@dataclass
class Env:
    settings: Settings
    registry: Registry
    store: TimeSeriesStore
    api: httpx.Client
    admin: str
    receiver: Receiver
    engine: AlertEngine
    publisher: Publisher
    repo: AlertRepo

    def settle(self, messages: int) -> None:
        """Wait until the engine has evaluated ``messages`` messages and the outbox is empty."""
        wait_for(lambda: self.engine.processed >= messages and self.repo.pending_count() == 0)


def start_env(tmp_path: Path, mosquitto: MosquittoServer, store: TimeSeriesStore, **settings: Any
              ) -> Iterator[Env]:
    settings = settings_for(tmp_path, **settings)
    registry = make_registry(tmp_path)
    served = ServedApp(create_app(settings, registry=registry, store=store, catalog=default_catalog()))
    receiver = Receiver()
    admin = registry.create_api_key("admin", [])
    engine = alert_engine(settings, registry, store, default_catalog(), endpoint=endpoint_of(mosquitto), mqtt5=True)
    engine.start()
    publisher = Publisher(mosquitto.host, mosquitto.port)
    try:
        yield Env(settings, registry, store, served.client, admin, receiver, engine, publisher, engine.repo)
    finally:
        publisher.close()
        engine.stop()
        receiver.close()
        served.close()
        registry.close()
        forget_session(mosquitto.host, mosquitto.port, settings.alerts_client_id)


@pytest.fixture
def env(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: MosquittoServer) -> Iterator[Env]:
    store = EmbeddedStore(tmp_path / "ts.sqlite", default_catalog())
    store.init()
    yield from start_env(tmp_path, mosquitto, store, **getattr(request, "param", {}))
    store.close()


MANUAL_SCHEDULE = {"alerts_eval_interval_s": 3600}  # the test calls tick() itself, with the time it chooses


def subscribe(env: Env, **filters: Any) -> dict[str, Any]:
    resp = env.api.post("/v1/alerts/webhooks", json={"url": env.receiver.url, **filters}, headers=auth(env.admin))
    assert resp.status_code == 201, resp.text
    env.engine.reload()
    return resp.json()


# ------------------------------------------------------------------------------------------------ acceptance 1
SCHEDULE = [  # O2-corrected NOx of a sinter stack, one reading per second: two episodes, flapping in the band
    30, 38, 45, 49, 47,        # below, then inside the band 40..50: nothing
    55, 62, 48, 52, 44, 49.9,  # over 50: firing; flapping across 50 and inside the band: nothing more
    35,                        # below 40: resolved
    44, 47, 42,                # inside the band again: nothing
    58, 51, 39.5,              # second episode, resolved at 39.5
]


@pytest.mark.influx
def test_sinter_nox_exceedance_fires_once_and_resolves_once(tmp_path: Path, mosquitto: MosquittoServer,
                                                            influx_store: TimeSeriesStore) -> None:
    env = start_env(tmp_path, mosquitto, influx_store)
    e = next(env)
    try:
        assert e.api.post("/v1/alerts/rules", json=NOX_RULE, headers=auth(e.admin)).status_code == 201
        hook = subscribe(e, rules=["sinter-nox-test"])
        t0 = now_ms() - 60_000
        for i, value in enumerate(SCHEDULE):
            e.publisher.publish(TOPIC, nox(value, t0 + i * 1000))
        e.settle(len(SCHEDULE))
        check_two_episodes(e, hook, t0)
        check_episodes_api(e)
        annotations = wait_for(lambda: influx_store.query(  # type: ignore[attr-defined]
            'SELECT count("state") FROM "alerts"')[0].get("series"))
        assert annotations[0]["values"][0][1] == 4  # 2 firing + 2 resolved, for Grafana
    finally:
        next(env, None)


def check_two_episodes(e: Env, hook: dict[str, Any], t0: int) -> None:
    got = e.receiver.ok()
    assert sorted(r.json["type"] for r in got) == ["alert.firing", "alert.firing", "alert.resolved",
                                                   "alert.resolved"]
    assert all(verify_standard_webhook(hook["secret"], r.headers, r.body) for r in got)
    assert len({r.headers["webhook-id"] for r in got}) == 4
    by_episode: dict[str, dict[str, dict[str, Any]]] = {}
    for r in got:
        by_episode.setdefault(r.json["id"], {})[r.json["type"]] = r.json
    first, second = sorted(by_episode.values(), key=lambda ep: ep["alert.firing"]["started_at"])
    fired = first["alert.firing"]
    assert (fired["rule"], fired["site"], fired["device"], fired["metric"]) == (
        "sinter-nox-test", "steel", "sinter-cems", "nox_mg_m3")
    assert fired["value"] == pytest.approx(55)
    assert fired["limit"] == 50
    assert fired["severity"] == "critical"
    assert fired["readings"][0]["metrics"]["o2_pct"] == O2
    assert first["alert.resolved"]["peak"] == pytest.approx(62)
    assert first["alert.resolved"]["resolved_at"] is not None
    assert second["alert.firing"]["value"] == pytest.approx(58)
    assert second["alert.resolved"]["peak"] == pytest.approx(58)


def check_episodes_api(e: Env) -> None:
    admin = e.api.get("/v1/alerts/episodes", params={"site": "steel"}, headers=auth(e.admin)).json()
    ours = [ep for ep in admin["items"] if ep["rule"] == "sinter-nox-test"]
    assert [ep["state"] for ep in ours] == ["resolved", "resolved"]
    steel_key = e.registry.create_api_key("site", ["steel"])
    green_key = e.registry.create_api_key("site", ["park-green"])
    assert e.api.get("/v1/alerts/episodes", headers=auth(steel_key)).json()["total"] == admin["total"]
    assert e.api.get("/v1/alerts/episodes", headers=auth(green_key)).json()["total"] == 0
    hidden = e.api.get("/v1/alerts/episodes", params={"site": "steel"}, headers=auth(green_key))
    assert hidden.status_code == 404
    assert e.api.get(f"/v1/alerts/episodes/{ours[0]['id']}", headers=auth(green_key)).status_code == 404
    assert e.api.get(f"/v1/alerts/episodes/{ours[0]['id']}", headers=auth(steel_key)).json()["peak"] > 50


# ------------------------------------------------------------------------------------------------ other rules
def test_invalid_flags_and_missing_o2_never_fire(env: Env) -> None:
    env.api.post("/v1/alerts/rules", json=NOX_RULE, headers=auth(env.admin))
    subscribe(env, rules=["sinter-nox-test"])
    t0 = now_ms() - 30_000
    env.publisher.publish(TOPIC, nox(90, t0, flags={"nox_mg_m3": "C"}))  # calibration: not valid data
    env.publisher.publish(TOPIC, {"ts": t0 + 1000, "metrics": {"nox_mg_m3": 90.0}})  # no O2: cannot correct
    env.publisher.publish(TOPIC, nox(90, t0 + 2000, flags={"o2_pct": "D"}))  # O2 faulty
    env.publisher.publish(TOPIC, nox(90, t0 + 3000))  # the one valid exceedance
    env.settle(4)
    fired = env.receiver.ok("alert.firing")
    assert len(fired) == 1
    assert fired[0].json["started_at"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((t0 + 3000) // 1000)))


def test_duration_and_all_combination(env: Env) -> None:
    rule = {"id": "hot-and-wet", "kind": "threshold", "combine": "all", "duration_s": 3, "device": "sinter-cems",
            "conditions": [{"metric": "temp_c", "limit": 150, "clear": 140},
                           {"metric": "moisture_pct", "limit": 20, "clear": 15}]}
    assert env.api.post("/v1/alerts/rules", json=rule, headers=auth(env.admin)).status_code == 201
    subscribe(env, rules=["hot-and-wet"])
    t0 = now_ms() - 60_000
    readings = [(160, 10), (160, 25), (161, 26), (170, 25),  # both over for 2 s only, then temp alone
                (130, 25), (155, 22), (156, 23), (157, 24), (158, 22), (100, 10)]  # 3 s both: fires; clears
    for i, (temp, moist) in enumerate(readings):
        env.publisher.publish(TOPIC, {"ts": t0 + i * 1000, "metrics": {"temp_c": temp, "moisture_pct": moist}})
    env.settle(len(readings))
    fired, resolved = env.receiver.ok("alert.firing"), env.receiver.ok("alert.resolved")
    assert len(fired) == 1
    assert len(resolved) == 1
    assert fired[0].json["window"] == "3s"
    assert [r["ts"] for r in fired[0].json["readings"]] == [t0 + k * 1000 for k in (5, 6, 7, 8)]


@pytest.mark.parametrize("env", [MANUAL_SCHEDULE], indirect=True)
def test_status_hourly_mean_and_no_data(env: Env) -> None:
    subscribe(env, rules=["device-offline", "nox-hourly-mean", "device-no-data"])
    env.publisher.publish(STATUS, {"state": "offline", "ts": now_ms() - 2000})
    env.publisher.publish(STATUS, {"state": "offline", "ts": now_ms() - 1000})  # still offline: nothing new
    env.publisher.publish(STATUS, {"state": "online", "ts": now_ms()})
    this_hour = hour_start(now_ms(), env.engine._tz)
    last_hour = this_hour - 3_600_000
    minutes = [(last_hour + m * 60_000, 70.0 if m < 30 else 40.0) for m in range(50)]  # mean 58 > limit 50
    for ts, value in minutes:
        env.publisher.publish(TOPIC, nox(value, ts))
    env.publisher.publish(TOPIC, nox(30.0, last_hour + 55 * 60_000, flags={"nox_mg_m3": "M"}))
    env.settle(3 + len(minutes) + 1)
    env.engine.tick(now=this_hour + 30 * 60_000)  # the last hour has closed: judge it
    env.engine.tick(now=this_hour + 31 * 60_000)  # judged once only
    env.engine.tick(now=now_ms() + 3600_000)  # an hour of silence: no data
    wait_for(lambda: env.repo.pending_count() == 0 and len(env.receiver.ok()) >= 4)
    by_rule = {(r.json["rule"], r.json["type"]) for r in env.receiver.ok()}
    assert by_rule == {("device-offline", "alert.firing"), ("device-offline", "alert.resolved"),
                       ("nox-hourly-mean", "alert.firing"), ("device-no-data", "alert.firing")}
    hourly = next(r.json for r in env.receiver.ok() if r.json["rule"] == "nox-hourly-mean")
    assert hourly["value"] == pytest.approx(58.0)
    assert hourly["limit"] == 50
    assert hourly["window"] == "1h"
    assert hourly["readings"][0]["valid_minutes"] == 50
    assert len(env.receiver.ok()) == 4


def test_a_status_from_a_clock_far_ahead_is_dated_when_received(env: Env) -> None:
    """A device clock years ahead must not date the episode (nor hold back the statuses after it): the
    engine takes the receive time for an implausible ts, as the ingest does."""
    subscribe(env, rules=["device-offline"])
    sent = now_ms()
    env.publisher.publish(STATUS, {"state": "offline", "ts": sent + 10 * 365 * 86_400_000})
    env.publisher.publish(STATUS, {"state": "online", "ts": sent + 60_000})
    env.settle(2)
    wait_for(lambda: env.repo.pending_count() == 0 and len(env.receiver.ok()) >= 2)
    firing, resolved = (r.json for r in env.receiver.ok())
    assert (firing["type"], resolved["type"]) == ("alert.firing", "alert.resolved")
    started = datetime.fromisoformat(firing["started_at"]).timestamp() * 1000
    assert sent - 1000 <= started <= now_ms()


# ------------------------------------------------------------------------------------------------ API
def test_rules_api_is_admin_only_and_validates(env: Env) -> None:
    site_key = env.registry.create_api_key("site", ["steel"])
    rules = env.api.get("/v1/alerts/rules", headers=auth(env.admin)).json()
    ids = {r["id"] for r in rules}
    assert {"nox-over-limit", "so2-hourly-mean", "pm-hourly-early", "device-no-data", "energy-over-quota",
            "greening-out-of-band"} <= ids
    assert env.api.get("/v1/alerts/rules", headers=auth(site_key)).status_code == 403
    assert env.api.post("/v1/alerts/rules", json=NOX_RULE, headers=auth(site_key)).status_code == 403
    assert env.api.post("/v1/alerts/rules", json=NOX_RULE, headers=auth(env.admin)).status_code == 201
    assert env.api.post("/v1/alerts/rules", json=NOX_RULE, headers=auth(env.admin)).status_code == 409
    bad = env.api.post("/v1/alerts/rules", headers=auth(env.admin),
                       json={**NOX_RULE, "id": "bad", "conditions": [{"metric": "nope", "limit": 1}]})
    assert bad.status_code == 422
    assert "nope" in bad.json()["error"]["message"]
    assert env.api.post("/v1/alerts/rules", headers=auth(env.admin),
                        json={"id": "x", "kind": "hourly_mean"}).status_code == 422
    changed = {**NOX_RULE, "severity": "warning"}
    assert env.api.put("/v1/alerts/rules/sinter-nox-test", json=changed, headers=auth(env.admin)).json()[
        "severity"] == "warning"
    assert env.api.delete("/v1/alerts/rules/sinter-nox-test", headers=auth(env.admin)).status_code == 204
    assert env.api.get("/v1/alerts/rules/sinter-nox-test", headers=auth(env.admin)).status_code == 404


def test_webhooks_api_secret_once_ping_and_log(env: Env) -> None:
    site_key = env.registry.create_api_key("site", ["steel"])
    assert env.api.post("/v1/alerts/webhooks", json={"url": env.receiver.url},
                        headers=auth(site_key)).status_code == 403
    hook = subscribe(env, severities=["critical"])
    assert hook["secret"].startswith("whsec_")
    shown = env.api.get(f"/v1/alerts/webhooks/{hook['id']}", headers=auth(env.admin)).json()
    assert "secret" not in shown
    assert shown["severities"] == ["critical"]
    ping = env.api.post(f"/v1/alerts/webhooks/{hook['id']}/test", headers=auth(env.admin)).json()
    assert ping["state"] == "delivered"
    assert ping["attempts"][0]["status"] == 200
    got = env.receiver.ok("ping")
    assert len(got) == 1
    assert got[0].headers["webhook-id"] == ping["id"]
    assert verify_standard_webhook(hook["secret"], got[0].headers, got[0].body)
    log = env.api.get(f"/v1/alerts/webhooks/{hook['id']}/deliveries", headers=auth(env.admin)).json()
    assert [d["id"] for d in log] == [ping["id"]]
    patched = env.api.patch(f"/v1/alerts/webhooks/{hook['id']}", json={"sites": ["steel"]}, headers=auth(env.admin))
    assert patched.json()["sites"] == ["steel"]
    assert env.api.delete(f"/v1/alerts/webhooks/{hook['id']}", headers=auth(env.admin)).status_code == 204
    assert env.api.get(f"/v1/alerts/webhooks/{hook['id']}", headers=auth(env.admin)).status_code == 404


# ------------------------------------------------------------------------------------------------ SSRF
REFUSED = ["http://127.0.0.1/hook", "http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data",
           "http://[::1]:8080/hook", "http://100.64.0.1/hook", "http://[::ffff:127.0.0.1]/hook", "http://0.0.0.0/"]


@pytest.mark.parametrize("url", REFUSED)
def test_ssrf_guard_refuses_non_global_addresses_by_default(url: str) -> None:
    with pytest.raises(UnsafeDestination) as info:
        resolve_target(url, allow_private=False)
    assert info.value.address is not None


def test_ssrf_guard_other_cases(env: Env) -> None:
    with pytest.raises(UnsafeDestination, match="http or https"):
        resolve_target("file:///etc/passwd", allow_private=True)
    with pytest.raises(UnsafeDestination, match=r"127\.0\.0\.1|::1"):
        resolve_target("http://localhost:9/hook", allow_private=False)  # a name is checked as resolved
    assert resolve_target("http://127.0.0.1:9/x?y=1", allow_private=True).pinned_url() == "http://127.0.0.1:9/x?y=1"
    assert str(check_address("93.184.215.14", allow_private=False)) == "93.184.215.14"  # checked, never contacted
    sender = Sender(timeout_s=1, allow_private=False)
    try:
        attempt = sender.send("http://169.254.169.254/latest", "whsec_" + "A" * 32, "msg_x", b"{}")
    finally:
        sender.close()
    assert attempt.status is None
    assert attempt.error.startswith("refused")
    assert not attempt.retryable
    strict = create_app(settings_for(env.settings.data_dir, alerts_webhook_allow_private=False),
                        registry=env.registry, store=env.store, catalog=default_catalog())
    served = ServedApp(strict)
    try:
        for url in REFUSED[:5]:
            resp = served.client.post("/v1/alerts/webhooks", json={"url": url}, headers=auth(env.admin))
            assert resp.status_code == 422, url
    finally:
        served.close()
