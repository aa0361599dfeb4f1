"""Issue 11's attacks by a device with valid credentials, against the embedded broker AND a real Mosquitto
running the shipped config with `smartpark broker export`: each must fail, and the legitimate traffic around
it must be stored completely (counted in the store of a real ingest)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from factories import wait_for
from identity_brokers import ALERTS_USER, INGEST_USER, Target, barrier, make_target, settle

N = 20  # legitimate readings before and after each attack


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    made = make_target(request.param, tmp_path)
    yield made
    made.close()


@pytest.mark.parametrize("service", [INGEST_USER, ALERTS_USER])
def test_device_cannot_take_over_a_service_client_id(target: Target, service: str) -> None:
    ingest = target.start_ingest()
    alerts = target.probe(ALERTS_USER, client_id=f"{ALERTS_USER}-engine", clean=False)
    assert not alerts.connect().is_failure
    assert not alerts.subscribe("smartpark/v1/+/+/telemetry").is_failure
    victim_id = ingest.settings.ingest_client_id if service == INGEST_USER else f"{ALERTS_USER}-engine"
    sensor = target.device("sinter-cems")
    t0 = target.send_readings(sensor, "steel", "sinter-cems", N)

    attacker = target.probe("steel-meter", client_id=victim_id, clean=False)
    assert attacker.connect().is_failure, "a device took a service's client id"

    target.send_readings(sensor, "steel", "sinter-cems", N, t0 + N)
    settle(target, "sinter-cems", 2 * N)
    wait_for(lambda: len(alerts.messages) >= 2 * N)
    assert len(alerts.messages) == 2 * N
    assert alerts.disconnects == []  # the engine was never kicked


def test_device_cannot_join_the_ingest_shared_group(target: Target) -> None:
    shared = "ingest" if target.mqtt5 else ""  # amqtt speaks 3.1.1: no shared subscriptions to join
    target.start_ingest(shared=shared)
    attacker = target.device("steel-meter")
    assert attacker.subscribe("$share/ingest/smartpark/v1/+/+/telemetry").is_failure
    sensor = target.device("sinter-cems")
    target.send_readings(sensor, "steel", "sinter-cems", 2 * N)
    settle(target, "sinter-cems", 2 * N)
    barrier(attacker, "steel", "steel-meter")
    assert attacker.messages == []


@pytest.mark.parametrize("topic_filter", ["smartpark/v1/steel/sinter-cems/telemetry", "smartpark/v1/+/+/telemetry",
                                          "smartpark/v1/#", "#", "$SYS/#"])
def test_device_cannot_subscribe_to_other_devices(target: Target, topic_filter: str) -> None:
    target.start_ingest()
    attacker = target.device("steel-meter")
    assert attacker.subscribe(topic_filter).is_failure
    sensor = target.device("sinter-cems")
    target.send_readings(sensor, "steel", "sinter-cems", N)
    settle(target, "sinter-cems", N)
    barrier(attacker, "steel", "steel-meter")
    assert attacker.messages == []


def test_retained_messages_of_another_site_reach_no_device(target: Target) -> None:
    ingest = target.start_ingest()  # subscribes smartpark/v1/+/+/status: amqtt used to replay it to anyone
    green = target.device("green-1")
    green.publish("smartpark/v1/park-green/green-1/status", {"state": "online", "ts": 1}, retain=True)
    target.send_readings(green, "park-green", "green-1", N)
    wait_for(lambda: ingest.stats.counters["messages_committed"] >= N + 1)

    attacker = target.probe("steel-meter", clean=False)
    assert not attacker.connect().is_failure
    assert attacker.subscribe("smartpark/v1/park-green/green-1/status").is_failure
    barrier(attacker, "steel", "steel-meter")
    assert [m.topic for m in attacker.messages] == []
    settle(target, "green-1", N)


def test_device_publishes_only_under_its_own_topics(target: Target) -> None:
    target.start_ingest()
    attacker = target.device("steel-meter")
    for forged in ("smartpark/v1/steel/sinter-cems/telemetry", "smartpark/v1/park-green/steel-meter/telemetry"):
        attacker.client.publish(forged, b'{"metrics": {"power_kw": 1}}', qos=1).wait_for_publish(10)
    target.send_readings(attacker, "steel", "steel-meter", N)
    settle(target, "steel-meter", N)
    assert target.stored("sinter-cems") == 0
