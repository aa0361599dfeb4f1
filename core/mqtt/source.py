"""The one message-source protocol that the ingest and the alert engine consume, and the factory that opens one.

A source holds a persistent session with the broker, hands every message to ``on_message`` on its reader
thread and acknowledges a QoS-1 message only when ``ack`` is called (after the consumer made it durable).
Every (re)connect bumps ``generation``: acks of an older connection are dropped and the broker redelivers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal, Protocol

from smartpark.core.contract import TOPIC_PREFIX
from smartpark.core.mqtt.endpoint import Endpoint

__all__ = ["SESSION_EXPIRY_S", "MessageSource", "OnMessage", "open_source", "platform_filters"]

OnMessage = Callable[[str, bytes, int, int], None]  # topic, payload, packet id (0 for QoS 0), generation
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps a consumer's queue for a week of downtime


class MessageSource(Protocol):
    """An MQTT consumer with manual acks: ``Mqtt5Session`` (MQTT 5) and ``PahoSource`` (3.1.1 or 5) fit."""

    endpoint: Endpoint
    subscribed: threading.Event
    generation: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def ack(self, acks: list[tuple[int, int]]) -> int: ...


def platform_filters(shared: str = "") -> list[str]:
    """The telemetry and status filters; ``shared`` ("1" or a group name) makes them MQTT 5 shared subscriptions."""
    filters = [f"{TOPIC_PREFIX}/+/+/telemetry", f"{TOPIC_PREFIX}/+/+/status"]
    if not shared:
        return filters
    group = "smartpark-ingest" if shared in ("1", "true", "yes") else shared
    return [f"$share/{group}/{f}" for f in filters]


def open_source(endpoint: Endpoint, *, client_id: str, on_message: OnMessage, receive_maximum: int,
                filters: list[str], mqtt5: bool = True, client: Literal["session", "paho"] = "session",
                max_packet_bytes: int | None = None) -> MessageSource:
    """The consumer for this broker: the mqtt5-codec session (~3 µs a message) for MQTT 5, paho otherwise."""
    if mqtt5 and client == "session":
        from smartpark.core.mqtt.session import Mqtt5Session

        return Mqtt5Session(endpoint, client_id=client_id, on_message=on_message, receive_maximum=receive_maximum,
                            filters=filters, max_packet_bytes=max_packet_bytes)
    from smartpark.core.mqtt.paho_source import PahoSource

    return PahoSource(endpoint, client_id=client_id, on_message=on_message, receive_maximum=receive_maximum,
                      filters=filters, mqtt5=mqtt5, max_packet_bytes=max_packet_bytes)
