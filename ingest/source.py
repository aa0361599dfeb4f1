"""MQTT in: a paho-mqtt 2 client with manual acks and a persistent session.

paho acks QoS-1 messages only when told to (``manual_ack``), so a message is acknowledged after its data
is durable. MQTT 5 ``Receive Maximum`` bounds the unacked messages the broker sends us: that is the
ingest's backpressure and its memory bound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartpark.core.contract import TOPIC_PREFIX
from smartpark.ingest.errors import BrokerUnreachable

__all__ = ["MqttSource", "subscriptions"]

log = logging.getLogger("smartpark.ingest")
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue for a week of downtime

OnMessage = Callable[[str, bytes, int, int], None]  # topic, payload, mid, connection generation


def subscriptions(shared: str) -> list[str]:
    """Topic filters; ``shared`` ("1" or a group name) makes them MQTT 5 shared subscriptions."""
    filters = [f"{TOPIC_PREFIX}/+/+/telemetry", f"{TOPIC_PREFIX}/+/+/status"]
    if not shared:
        return filters
    group = "smartpark-ingest" if shared in ("1", "true", "yes") else shared
    return [f"$share/{group}/{f}" for f in filters]


class MqttSource:
    def __init__(self, *, host: str, port: int, client_id: str, username: str | None, password: str | None,
                 mqtt5: bool, receive_maximum: int, shared: str, on_message: OnMessage) -> None:
        self.host, self.port, self.mqtt5 = host, port, mqtt5
        self.receive_maximum = min(receive_maximum, 65535)
        self.filters = subscriptions(shared)
        self.on_message = on_message
        self.subscribed = threading.Event()
        self.generation = 0  # bumped on every connect: acks of an older connection are void
        protocol = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  clean_session=None if mqtt5 else False, manual_ack=True)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        props = None
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = self.receive_maximum
        try:
            kwargs: dict[str, Any] = {"clean_start": False, "properties": props} if self.mqtt5 else {}
            self.client.connect(self.host, self.port, keepalive=30, **kwargs)
        except OSError as exc:
            raise BrokerUnreachable(self.host, self.port, str(exc)) from exc
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def ack(self, acks: list[tuple[int, int]]) -> int:
        """Acknowledge (generation, mid) pairs of the current connection; returns how many were sent."""
        sent = 0
        for generation, mid in acks:
            if generation == self.generation and mid:
                self.client.ack(mid, 1)
                sent += 1
        return sent

    # --- paho callbacks (network thread)
    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object) -> None:
        if reason.is_failure:
            log.error("MQTT connect to %s:%s refused: %s", self.host, self.port, reason)
            return
        self.generation += 1
        client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, _c: object, _u: object, _mid: int, reasons: list[Any], _p: object) -> None:
        if any(r.is_failure for r in reasons):
            log.error("MQTT subscription refused: %s", reasons)
            return
        self.subscribed.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, reason: Any, _p: object) -> None:
        self.subscribed.clear()
        if reason.is_failure:
            log.warning("MQTT connection lost (%s); reconnecting", reason)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.on_message(msg.topic, msg.payload, msg.mid if msg.qos else 0, self.generation)
