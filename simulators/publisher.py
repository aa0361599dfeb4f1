"""A thin MQTT 5 QoS-1 publisher on the ``mqtt5`` sans-io codec: pipelined, with a window of unacked ids.

Why not paho: paho spends tens of microseconds of Python per QoS-1 publish (message objects, locks, callback
plumbing) and tops out near 20,000 msg/s. Here a PUBLISH is one codec call (``PublishPacket.write()``), packets
are coalesced into one ``sendall`` per burst, and PUBACKs are parsed in a tight loop, so one process publishes
well over 100,000 msg/s and the broker becomes the limit. QoS-1 semantics are kept: at most ``window``
packets await their PUBACK, and ``drain()`` returns only when the broker has acknowledged every one.

A connection can also vanish like a 5G link does (``drop()``: no DISCONNECT, so the broker publishes the
will), which is how the simulators play outages. The link (TCP, TLS for mqtts://) and the CONNECT come from
the platform's MQTT transport (``core/mqtt``).
"""

from __future__ import annotations

import socket
import ssl
import time
from contextlib import suppress

import mqtt5

from smartpark.core.mqtt.connect import connect_packet
from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.core.mqtt.errors import BrokerUnreachable
from smartpark.core.mqtt.link import Link, broker_error, open_link

__all__ = ["Connection", "PublishError"]

QOS1 = mqtt5.QoS.AT_LEAST_ONCE
SEND_BYTES = 64 * 1024  # coalesce packets up to this before a sendall
RECV_BYTES = 256 * 1024
CONNECT_TIMEOUT_S = 10.0


class PublishError(ConnectionError):
    """The broker refused the connection or a publish, or stopped acknowledging (a TLS failure included:
    ``__cause__`` is then the transport's TlsHandshakeError)."""


class Connection:
    """One client connection that publishes at QoS 1 with at most ``window`` PUBLISHes awaiting PUBACK."""

    def __init__(self, endpoint: Endpoint, client_id: str, *, will: mqtt5.Will | None = None, window: int = 1000,
                 keepalive_s: int = 60, timeout_s: float = 30.0) -> None:
        self.endpoint, self.client_id, self.will = endpoint, client_id, will
        self.window = max(1, min(window, 65535 - 1))
        self.keepalive_s, self.timeout_s = keepalive_s, timeout_s
        self.published = 0
        self.acked = 0
        self._sock: Link | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._inflight: set[int] = set()
        self._next_id = 0
        self._buf = bytearray()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def connect(self) -> None:
        """Open the link (TCP, TLS), CONNECT (clean start), wait for CONNACK; raise PublishError if refused."""
        try:
            sock = open_link(self.endpoint, CONNECT_TIMEOUT_S)
        except BrokerUnreachable as exc:
            raise PublishError(f"{self.client_id}: {exc}") from exc
        packet = connect_packet(self.endpoint, self.client_id, clean_start=True, keepalive_s=self.keepalive_s,
                                will=self.will)
        try:
            sock.sendall(packet)
            self._sock, self._buf = sock, bytearray()
            connack = self._read_one(mqtt5.ConnAckPacket)
        except BaseException as exc:
            self._sock = None
            sock.close()
            if self.endpoint.tls is not None and isinstance(exc, OSError):  # a TLS 1.3 broker refuses a client
                err = broker_error(self.endpoint, exc, stage="connect")  # certificate only now
                raise PublishError(f"{self.client_id}: {err}") from err
            raise
        if connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
            self.close()
            raise PublishError(f"{self.client_id}: CONNACK {connack.reason_code.name}")
        self._inflight.clear()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Queue one QoS-1 PUBLISH; blocks (reading PUBACKs) while ``window`` packets are unacknowledged."""
        if len(self._inflight) >= self.window:
            self.flush()
            self._await(lambda: len(self._inflight) < self.window)
        pid = self._take_id()
        data = mqtt5.PublishPacket(topic, payload, qos=QOS1, packet_id=pid, retain=retain).write()
        self._out.append(data)
        self._out_bytes += len(data)
        self.published += 1
        if self._out_bytes >= SEND_BYTES:
            self.flush()

    def _take_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._inflight:
                self._inflight.add(self._next_id)
                return self._next_id

    def flush(self) -> None:
        """Send what is queued (one sendall), then read whatever PUBACKs have already arrived."""
        if self._out:
            self._socket().sendall(b"".join(self._out))
            self._out.clear()
            self._out_bytes = 0
        self.poll()

    def poll(self) -> None:
        """Read the PUBACKs available now, without waiting."""
        sock = self._socket()
        sock.setblocking(False)
        try:
            while True:
                chunk = sock.recv(RECV_BYTES)
                if not chunk:
                    raise PublishError(f"{self.client_id}: the broker closed the connection")
                self._parse(chunk)
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        finally:
            sock.settimeout(self.timeout_s)

    def drain(self) -> None:
        """Flush and wait until the broker has acknowledged every PUBLISH."""
        self.flush()
        self._await(lambda: not self._inflight)

    def drop(self) -> None:
        """Lose the link: close the socket without DISCONNECT (the broker publishes the will); unacked
        PUBLISHes are forgotten, as a device that lost power would forget them."""
        sock, self._sock = self._sock, None
        self._out.clear()
        self._out_bytes = 0
        self._inflight.clear()
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """DISCONNECT (normal: no will) and close."""
        if self._sock is not None:
            with suppress(OSError):
                self._sock.sendall(mqtt5.DisconnectPacket().write())
        self.drop()

    # ------------------------------------------------------------------------------------------ reading

    def _socket(self) -> Link:
        if self._sock is None:
            raise PublishError(f"{self.client_id}: not connected")
        return self._sock

    def _await(self, done: object) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not done():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise PublishError(f"{self.client_id}: {len(self._inflight)} PUBLISHes unacknowledged "
                                   f"after {self.timeout_s:.0f} s")
            try:
                chunk = self._socket().recv(RECV_BYTES)
            except TimeoutError:
                continue
            if not chunk:
                raise PublishError(f"{self.client_id}: the broker closed the connection")
            self._parse(chunk)

    def _parse(self, chunk: bytes) -> None:
        buf = self._buf
        buf += chunk
        mv, off, read, inflight = memoryview(buf), 0, mqtt5.read, self._inflight
        try:
            while off < len(buf):
                try:
                    packet, used = read(mv[off:])
                except IndexError:
                    break
                off += used
                if type(packet) is mqtt5.PubAckPacket:
                    if packet.reason_code.value >= 0x80:
                        raise PublishError(f"{self.client_id}: PUBACK {packet.reason_code.name}")
                    inflight.discard(packet.packet_id)
                    self.acked += 1
                elif isinstance(packet, mqtt5.DisconnectPacket):
                    raise PublishError(f"{self.client_id}: broker sent DISCONNECT {packet.reason_code.name}")
        finally:
            mv.release()
        del buf[:off]

    def _read_one(self, kind: type) -> mqtt5.ConnAckPacket:
        sock = self._socket()
        while True:
            with suppress(IndexError):
                packet, used = mqtt5.read(memoryview(bytes(self._buf)))
                del self._buf[:used]
                if not isinstance(packet, kind):
                    raise PublishError(f"{self.client_id}: expected {kind.__name__}, got {type(packet).__name__}")
                return packet  # type: ignore[return-value]
            chunk = sock.recv(RECV_BYTES)
            if not chunk:
                raise ConnectionResetError(f"{self.client_id}: the broker closed the connection during CONNECT")
            self._buf += chunk
