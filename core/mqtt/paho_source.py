"""MQTT in through paho-mqtt 2 (MQTT 3.1.1 or 5): manual acks, a persistent session, TLS from the endpoint.

paho acks QoS-1 messages only when told to (``manual_ack``), so a message is acknowledged after its data
is durable. MQTT 5 ``Receive Maximum`` bounds the unacked messages the broker sends us: that is the
consumer's backpressure and its memory bound. ``paho_client`` is how every paho client of the platform
(this source, the live simulator's devices) gets its credentials and TLS: ``tls_set_context`` with the
context the endpoint built once, so verification is the same as on the mqtt5-codec path.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.core.mqtt.errors import BrokerUnreachable, ConnectRefused, TlsHandshakeError
from smartpark.core.mqtt.link import CLOSED, CLOSED_AFTER_HANDSHAKE, broker_error
from smartpark.core.mqtt.source import SESSION_EXPIRY_S, OnMessage

__all__ = ["PahoSource", "connect_error", "paho_client"]

log = logging.getLogger("smartpark.mqtt")
CONNACK_TIMEOUT_S = 10.0


def paho_client(endpoint: Endpoint, client_id: str, *, mqtt5: bool, clean: bool, **kwargs: Any) -> mqtt.Client:
    """A paho client with the endpoint's credentials and, for mqtts://, its verifying TLS context."""
    protocol = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         clean_session=None if mqtt5 else clean, **kwargs)
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    context = endpoint.context()
    if context is not None:
        client.tls_set_context(context)
    return client


def connect_error(endpoint: Endpoint, exc: OSError) -> BrokerUnreachable:
    """The typed error for a failed paho connect (paho does the TLS handshake inside ``connect``)."""
    tcp = isinstance(exc, (ConnectionRefusedError, socket.gaierror)) or not isinstance(exc, (ssl.SSLError, *CLOSED))
    return broker_error(endpoint, exc, stage="tcp" if tcp else "handshake")


class PahoSource:
    def __init__(self, endpoint: Endpoint, *, client_id: str, receive_maximum: int, filters: list[str],
                 on_message: OnMessage, mqtt5: bool, max_packet_bytes: int | None = None) -> None:
        self.endpoint, self.mqtt5 = endpoint, mqtt5
        self.host, self.port = endpoint.host, endpoint.port
        self.receive_maximum = min(receive_maximum, 65535)
        self.max_packet_bytes = max_packet_bytes
        self.filters = filters
        self.on_message = on_message
        self.subscribed = threading.Event()
        self.generation = 0  # bumped on every connect: acks of an older connection are void
        self._connack = threading.Event()
        self._failure: str | None = None  # why the first connection failed, for start() to raise
        self.client = paho_client(endpoint, client_id, mqtt5=mqtt5, clean=False, manual_ack=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        props = None
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = self.receive_maximum
            if self.max_packet_bytes:
                props.MaximumPacketSize = self.max_packet_bytes
        self._connack.clear()
        self._failure = None
        self.client.on_log = self._on_log  # until CONNACK only: paho formats a log line per message for it
        try:
            kwargs: dict[str, Any] = {"clean_start": False, "properties": props} if self.mqtt5 else {}
            self.client.connect(self.host, self.port, keepalive=30, **kwargs)
        except OSError as exc:
            raise connect_error(self.endpoint, exc) from exc
        self.client.loop_start()
        self._await_connack()

    def _await_connack(self) -> None:
        """Return once the broker accepted CONNECT; raise (typed, with the reason) if it did not, as the MQTT 5
        session does. Under TLS 1.3 a refused client certificate shows here, after paho's handshake returned."""
        arrived = self._connack.wait(CONNACK_TIMEOUT_S)
        self.client.on_log = None
        if arrived and self._failure is None:
            return
        self.client.loop_stop()
        reason = self._failure or f"no CONNACK within {CONNACK_TIMEOUT_S:.0f} s"
        tls = self.endpoint.tls is not None
        if reason.startswith("CONNACK"):
            raise ConnectRefused(self.host, self.port, reason, tls=tls)
        if tls and arrived:  # the link closed before CONNACK, after paho's handshake: see broker_error
            detail = reason if "SSL" in reason else CLOSED_AFTER_HANDSHAKE
            raise TlsHandshakeError(self.host, self.port, f"TLS handshake failed: {detail}", tls=True)
        raise BrokerUnreachable(self.host, self.port, reason, tls=tls)

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
            log.error("MQTT connect to %s refused: %s", self.endpoint.url, reason)
            self._fail(f"CONNACK {reason}")
            return
        self._connack.set()
        self.generation += 1
        client.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, _c: object, _u: object, _mid: int, reasons: list[Any], _p: object) -> None:
        if any(r.is_failure for r in reasons):
            log.error("MQTT subscription refused: %s", reasons)
            return
        self.subscribed.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, reason: Any, _p: object) -> None:
        self.subscribed.clear()
        self._fail(f"connection lost ({reason})")
        if reason.is_failure:
            log.warning("MQTT connection to %s lost (%s); reconnecting", self.endpoint.url, reason)

    def _on_log(self, _c: object, _u: object, level: int, message: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:  # e.g. "failed to receive on socket: [SSL: ...]"
            self._fail(message)

    def _fail(self, reason: str) -> None:
        """Before the first CONNACK: remember the first reason and wake start()."""
        if not self._connack.is_set():
            self._failure = self._failure or reason
            self._connack.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.on_message(msg.topic, cast(bytes, msg.payload), msg.mid if msg.qos else 0, self.generation)
