"""The MQTT side of opening a connection, once for every mqtt5-codec client: CONNECT with the endpoint's
credentials, client id and keepalive; and the reconnect backoff (exponential, with jitter) of every client."""

from __future__ import annotations

import random

import mqtt5

from smartpark.core.mqtt.endpoint import Endpoint

__all__ = ["Backoff", "connect_packet"]


def connect_packet(endpoint: Endpoint, client_id: str, *, clean_start: bool, keepalive_s: int,
                   session_expiry_s: int = 0, receive_maximum: int = 65535, max_packet_bytes: int | None = None,
                   will: mqtt5.Will | None = None) -> bytes:
    """An MQTT 5 CONNECT; the password is sent only with a username (MQTT 5 allows it alone, brokers do not)."""
    password = endpoint.password.encode() if endpoint.username and endpoint.password is not None else None
    return mqtt5.ConnectPacket(
        client_id, username=endpoint.username or None, password=password, clean_start=clean_start,
        keep_alive=keepalive_s, session_expiry_interval=session_expiry_s, receive_max=receive_maximum,
        max_packet_size=max_packet_bytes, will=will,
    ).write()


class Backoff:
    """Delays for reconnect attempts: doubling from ``min_s`` to ``max_s``, each drawn in [d/2, d] so that
    many clients losing one broker do not come back in lockstep."""

    def __init__(self, min_s: float = 1.0, max_s: float = 30.0) -> None:
        self.min_s, self.max_s = min_s, max_s
        self._next = min_s

    def next(self) -> float:
        delay = random.uniform(self._next / 2, self._next)
        self._next = min(self._next * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.min_s
