"""MQTT in, lean: an MQTT 5 consumer session on the ``mqtt5`` sans-io codec (a ``MessageSource``).

Why this exists: paho-mqtt spends ~26 µs of CPU per received QoS-1 message in its pure-Python receive path
(packet reassembly, MQTTMessage objects, callback plumbing, per-message ack bookkeeping). The Rust codec
``mqtt5`` parses a PUBLISH in ~0.2 µs and writes a PUBACK in ~0.15 µs, so a session that only does the
socket I/O in Python receives and acks for a fraction of that cost.

The semantics are PahoSource's: a persistent session (``clean_start=False``, a week of session expiry), QoS-1
subscriptions, PUBACK only when ``ack()`` is called (after the data is durable), and MQTT 5 ``Receive
Maximum`` as backpressure. Every CONNACK bumps ``generation``; acks of an older connection are dropped, the
broker redelivers those messages (DUP) and the store overwrites them.

Threads: one daemon reader thread owns the socket's receive side, parses every complete packet of its buffer
in a tight loop and calls ``on_message``; ``ack()`` (any thread), pings and subscribes write through a lock.
The link comes from ``link.open_link`` (plain socket or TLS); CONNECT carries MQTT 5 Maximum Packet Size,
so the broker never sends a packet bigger than ``max_packet_bytes``, and the receive buffer, grown for a
packet bigger than ``BUFFER_BYTES``, shrinks back once that packet is consumed.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from contextlib import suppress

import mqtt5

from smartpark.core.mqtt.connect import Backoff, connect_packet
from smartpark.core.mqtt.endpoint import Endpoint
from smartpark.core.mqtt.errors import BrokerUnreachable, ConnectRefused
from smartpark.core.mqtt.link import Link, broker_error, open_link
from smartpark.core.mqtt.source import SESSION_EXPIRY_S, OnMessage

__all__ = ["Mqtt5Session"]

log = logging.getLogger("smartpark.mqtt")

BUFFER_BYTES = 1 << 20  # one recv fills up to this; grows only for a bigger packet, then shrinks back
# Receive coalescing: a recv that brought less than COALESCE_BYTES (~100 telemetry messages) means the broker
# sends slower than this thread parses; waiting COALESCE_S before the next one lets it bring a batch instead of
# a message or two. Fewer wake-ups, GIL hand-offs and TLS decrypt rounds: about -8 % CPU a message in plain
# text and -14 % over TLS at 20k msg/s (interleaved bench/bench_ingest.py runs), for at most 5 ms more latency
# (batches wait 50 ms of quiet anyway). After a read past it the next one follows at once: this thread is behind.
COALESCE_BYTES, COALESCE_S = 16 * 1024, 0.005
CONNECT_TIMEOUT_S = 10.0
# A PUBACK with reason Success and no properties is 4 bytes (MQTT 5 3.4.2.1): 0x40, remaining length 2, packet
# id. Packed as big-endian u32s in one call: a quarter of the codec's cost per ack, on the hot path.
PUBACK = 0x40020000
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 30.0
JOIN_TIMEOUT_S = 10.0


class Mqtt5Session:
    def __init__(self, endpoint: Endpoint, *, client_id: str, receive_maximum: int, filters: list[str],
                 on_message: OnMessage, keepalive_s: int = 30, max_packet_bytes: int | None = None) -> None:
        self.endpoint, self.client_id = endpoint, client_id
        self.host, self.port = endpoint.host, endpoint.port
        self.receive_maximum = max(1, min(receive_maximum, 65535))
        self.max_packet_bytes = max_packet_bytes
        self.filters = filters
        self.on_message = on_message
        self.keepalive_s = keepalive_s
        self.subscribed = threading.Event()
        self.generation = 0  # bumped on every CONNACK: acks of an older connection are void
        self._wlock = threading.Lock()  # guards _sock, generation changes and every sendall
        self._sock: Link | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._buf = bytearray(BUFFER_BYTES)
        self._mv = memoryview(self._buf)
        self._end = 0  # bytes of _buf filled
        self._got = BUFFER_BYTES  # bytes the last recv brought (coalescing)
        self._ka = float(keepalive_s)  # effective keep alive (the broker may override it in CONNACK)
        self._last_send = self._last_recv = self._last_ping = 0.0
        self._sub_pid = 0

    # ------------------------------------------------------------------------------------ public API
    def start(self) -> None:
        """Connect and subscribe; raise BrokerUnreachable if that fails; then read in a daemon thread."""
        self._stopping.clear()
        try:
            self._connect()
        except OSError as exc:  # after the link was open: CONNECT unanswered, connection dropped, TLS alert
            raise broker_error(self.endpoint, exc, stage="connect") from exc
        self._thread = threading.Thread(target=self._run, name=f"mqtt5-{self.client_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Send DISCONNECT (normal: the session and its queue stay on the broker), close, join the reader."""
        self._stopping.set()
        with self._wlock:
            sock = self._sock
            if sock is not None:
                try:
                    sock.sendall(mqtt5.DisconnectPacket().write())
                    # Half-close: the broker reads our last acks and the DISCONNECT, then closes, which wakes
                    # the reader. Dropping the read side too could reset the connection and lose those acks.
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            self._thread = None
        self._drop()

    def ack(self, acks: list[tuple[int, int]]) -> int:
        """PUBACK the (generation, packet id) pairs of the current connection in one write; returns how many."""
        with self._wlock:
            generation, sock = self.generation, self._sock
            pids = [PUBACK | pid for gen, pid in acks if gen == generation and pid]
            if not pids or sock is None:
                return 0
            try:
                sock.sendall(struct.pack(f">{len(pids)}I", *pids))
            except OSError as exc:  # a partial write breaks the stream: let the reader reconnect
                log.warning("MQTT ack write failed (%s); the broker will redeliver", exc)
                _shutdown(sock)
                return 0
            self._last_send = time.monotonic()
            return len(pids)

    # ------------------------------------------------------------------------------------ connection
    def _connect(self) -> None:
        """Open the link (TCP, TLS), CONNECT/CONNACK, install it (generation + 1), SUBSCRIBE."""
        sock = open_link(self.endpoint, CONNECT_TIMEOUT_S)
        try:
            self._end = 0
            sock.sendall(connect_packet(self.endpoint, self.client_id, clean_start=False, keepalive_s=self.keepalive_s,
                                        session_expiry_s=SESSION_EXPIRY_S, receive_maximum=self.receive_maximum,
                                        max_packet_bytes=self.max_packet_bytes))
            connack = self._read_connack(sock)
            if connack.reason_code != mqtt5.ConnAckReasonCode.SUCCESS:
                detail = f": {connack.reason_str}" if connack.reason_str else ""
                raise ConnectRefused(self.host, self.port, f"CONNACK {connack.reason_code.name}{detail}",
                                     tls=self.endpoint.tls is not None)
            self._ka = float(connack.server_keep_alive or self.keepalive_s)
            sock.settimeout(max(self._ka / 4, 0.05) if self._ka else None)
            self._install(sock)
        except BaseException:
            sock.close()
            raise

    def _read_connack(self, sock: Link) -> mqtt5.ConnAckPacket:
        """Receive until the CONNACK is complete; bytes after it stay in the buffer for the reader."""
        while True:
            try:
                packet, used = mqtt5.read(self._mv[: self._end])
            except IndexError:
                self._recv(sock)
                continue
            if not isinstance(packet, mqtt5.ConnAckPacket):
                raise ConnectionError(f"expected CONNACK, got {type(packet).__name__}")
            self._end = self._compact(used, self._end)
            return packet

    def _install(self, sock: Link) -> None:
        with self._wlock:
            if self._stopping.is_set():
                raise ConnectionAbortedError("stopping")
            self._sock = sock
            self.generation += 1
            self._last_send = self._last_recv = self._last_ping = time.monotonic()
            self._sub_pid = self._sub_pid % 65535 + 1
            topics = [mqtt5.TopicFilter(f, max_qos=mqtt5.QoS.AT_LEAST_ONCE) for f in self.filters]
            sock.sendall(mqtt5.SubscribePacket(self._sub_pid, topics).write())

    def _drop(self) -> None:
        """Forget the current socket (closing it) and the subscribed state."""
        self.subscribed.clear()
        with self._wlock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    # ------------------------------------------------------------------------------------ reader thread
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._pump()
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning("MQTT connection to %s lost (%s); reconnecting", self.endpoint.url,
                            exc, exc_info=not isinstance(exc, OSError))
            self._drop()
            if not self._reconnect():
                break
        self._drop()

    def _reconnect(self) -> bool:
        """Reconnect with exponential backoff and jitter; False once stop() was called."""
        backoff = Backoff(BACKOFF_MIN_S, BACKOFF_MAX_S)
        while not self._stopping.wait(backoff.next()):
            try:
                self._connect()
            except (OSError, BrokerUnreachable) as exc:
                if self._stopping.is_set():
                    return False
                log.warning("MQTT reconnect failed (%s); retrying", exc)
                continue
            log.warning("MQTT reconnected to %s (generation %d)", self.endpoint.url, self.generation)
            return True
        return False

    def _pump(self) -> None:
        """The hot path: parse every complete packet in the buffer, compact once, recv again."""
        sock = self._sock
        if sock is None:
            raise ConnectionAbortedError("no connection")
        read, publish, on_message, generation = mqtt5.read, mqtt5.PublishPacket, self.on_message, self.generation
        while True:
            mv, off, end = self._mv, 0, self._end
            while off < end:
                try:
                    packet, used = read(mv[off:end])
                except IndexError:  # a partial packet: wait for more bytes
                    break
                off += used
                if type(packet) is publish:
                    on_message(packet.topic, packet.payload, packet.packet_id or 0, generation)
                else:
                    self._control(packet)
            self._end = self._compact(off, end)
            if self._got < COALESCE_BYTES:
                time.sleep(COALESCE_S)
            with suppress(TimeoutError):  # a quiet line: the keepalive check below decides
                self._recv(sock)
            self._keepalive(sock)

    def _recv(self, sock: Link) -> None:
        """recv_into the free tail of the buffer."""
        n = sock.recv_into(self._mv[self._end :])
        if not n:
            raise ConnectionResetError("connection closed by the broker")
        self._got = n
        self._end += n
        self._last_recv = time.monotonic()

    def _compact(self, off: int, end: int) -> int:
        """Move the unparsed tail to the front (one copy per recv); grow if a single packet fills the buffer, and
        shrink back to BUFFER_BYTES once what is left fits (one big packet must not pin its memory)."""
        if off == end:
            if len(self._buf) > BUFFER_BYTES:
                self._resize(BUFFER_BYTES, 0, 0)
            return 0
        if len(self._buf) > BUFFER_BYTES and end - off <= BUFFER_BYTES // 2:
            self._resize(BUFFER_BYTES, off, end)
            return end - off
        if off:
            self._mv[: end - off] = self._mv[off:end]
            return end - off
        if end == len(self._buf):
            self._resize(2 * len(self._buf), 0, end)
        return end

    def _resize(self, size: int, off: int, end: int) -> None:
        """A new buffer of ``size`` bytes holding ``_buf[off:end]`` at its start."""
        buf = bytearray(size)
        buf[: end - off] = self._mv[off:end]
        self._buf, self._mv = buf, memoryview(buf)

    def _keepalive(self, sock: Link) -> None:
        """PINGREQ after keep_alive/2 without a write (or a read); dead after keep_alive*1.5 without a read."""
        if not self._ka:
            return
        now, half = time.monotonic(), self._ka / 2
        if now - self._last_recv >= 1.5 * self._ka:
            raise TimeoutError(f"no packet from the broker in {1.5 * self._ka:.0f} s")
        if now - self._last_send >= half or (now - self._last_recv >= half and now - self._last_ping >= half):
            self._send(sock, mqtt5.PingReqPacket().write())
            self._last_ping = now

    def _send(self, sock: Link, data: bytes) -> None:
        with self._wlock:
            sock.sendall(data)
            self._last_send = time.monotonic()

    def _control(self, packet: object) -> None:
        """Non-PUBLISH packets: SUBACK, PINGRESP, DISCONNECT; anything else is ignored."""
        if isinstance(packet, mqtt5.SubAckPacket):
            failed = [code for code in packet.reason_codes if code.value >= 0x80]  # the codec enums are not IntEnum
            if failed:
                log.error("MQTT subscription to %s refused: %s", self.filters, [c.name for c in failed])
            else:
                self.subscribed.set()
        elif isinstance(packet, mqtt5.DisconnectPacket):
            detail = f": {packet.reason_str}" if packet.reason_str else ""
            raise ConnectionResetError(f"broker sent DISCONNECT {packet.reason_code.name}{detail}")
        elif not isinstance(packet, mqtt5.PingRespPacket):
            log.debug("MQTT: ignoring %s", type(packet).__name__)


def _shutdown(sock: Link) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
