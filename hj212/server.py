"""The HJ 212 gateway: a TCP server for stack monitors' data acquisition units, feeding the ingest's writer.

One asyncio loop on its own thread holds every connection (a Protocol each: no task per connection, a few
KiB each). Per connection: a bounded `FrameReader`, split-packet reassembly bounded in parts and time, and a
write buffer that may not grow past WRITE_LIMIT (a unit that stops reading is dropped). A sweep closes idle
connections (half-open links), expires incomplete split packets and writes the gateway's own figures.
Nothing a connection does reaches another except through the shared writer's backpressure.

Accepted packets become readings checked by the contract and go to the SAME durable hand-off as MQTT
(`ingest.batch.Batcher.add_local`): store or spool, dead letters with reasons. A packet asking for an answer
(Flag A) gets its 9014 only from the writer thread's callback, once its readings are durable; a unit that
got no answer resends, and the device timestamp makes the resend overwrite itself.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgspec

from smartpark.core import clock
from smartpark.core.catalog import Catalog
from smartpark.core.clock import zone
from smartpark.core.contract import Reading, ReadingDecoder, telemetry_topic, to_points
from smartpark.core.errors import ConfigError
from smartpark.core.reference import Reference
from smartpark.hj212.codes import CodeMap
from smartpark.hj212.convert import convert, zs_disagreements
from smartpark.hj212.errors import PacketError
from smartpark.hj212.frame import Frame, FrameReader, Malformed
from smartpark.hj212.identities import Identities, Identity
from smartpark.hj212.parse import DATA_COMMANDS, HEARTBEAT, Packet, parse_segment
from smartpark.hj212.reply import data_answer, refusal
from smartpark.hj212.stats import gateway_stats
from smartpark.ingest.batch import Batcher
from smartpark.ingest.deadletter import DeadLetter
from smartpark.ingest.decode import DecodedMessage

__all__ = ["Gateway", "GatewayConfig"]

log = logging.getLogger("smartpark.hj212")
AIR_SOURCE_ST = frozenset({"31"})  # ST of air pollution sources, the stacks [C]
WRITE_LIMIT = 64 * 1024  # answers a unit has not read: past this it is not reading, and is dropped
SWEEP_S = 1.0
MAX_SPLITS = 16  # split packets being reassembled per connection
MAX_PW_FAILURES = 3  # wrong PWs on one connection before it is closed (each check costs a PBKDF2)
GARBAGE_LETTERS = 10  # garbage runs dead-lettered per connection (all are counted)
HASHERS = 2  # threads checking PWs (PBKDF2 releases the GIL): a reconnect storm never stalls the loop
WAIT = object()  # a frame that waits for its PW check


_PW = re.compile(rb"PW=[^;&]*")


def redact(raw: bytes) -> bytes:
    """A raw packet without its PW, for dead letters (the relay keeps the PW: the upstream checks it)."""
    return _PW.sub(b"PW=***", raw)


def _reading_json(r: Reading) -> bytes:
    body: dict[str, object] = {"ts": r.ts_ms, "metrics": r.metrics}
    if r.flags:
        body["flags"] = r.flags
    return msgspec.json.encode(body)


class GatewayConfig:
    """What the gateway needs besides the registry and the writer, validated before any socket opens."""

    def __init__(self, *, host: str, port: int, max_connections: int, idle_timeout_s: float, max_segment: int,
                 split_timeout_s: float, stats_interval_s: float, timezone: str, retention_ms: int) -> None:
        self.host, self.port = host, port
        self.max_connections, self.idle_timeout_s = max_connections, idle_timeout_s
        self.max_segment, self.split_timeout_s = max_segment, split_timeout_s
        self.stats_interval_s, self.retention_ms = stats_interval_s, retention_ms
        try:
            self.tz = zone(timezone)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"park time zone {timezone!r} is not known: {exc}") from exc


class _Split:
    __slots__ = ("first", "packets", "raws")

    def __init__(self) -> None:
        self.first = time.monotonic()
        self.packets: dict[int, Packet] = {}
        self.raws: list[bytes] = []


class _Connection(asyncio.Protocol):
    __slots__ = ("backlog", "gateway", "last", "letters", "peer", "pw_failures", "reader", "splits", "transport",
                 "verifying")

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.reader = FrameReader(gateway.config.max_segment)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.last = time.monotonic()
        self.splits: dict[tuple[str, str, str], _Split] = {}
        self.pw_failures = 0
        self.letters = 0
        self.backlog: deque[Frame | Malformed] = deque()  # in order; holds frames while a PW is checked
        self.verifying = False  # a PW check runs off the loop: reading paused, frames wait in the backlog

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.gateway._opened(self)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.backlog.extend(self.reader.feed(data))
        if not self.verifying:
            self.gateway._drain(self)

    def eof_received(self) -> bool:
        return False  # close our side too: a unit that half-closed sends nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway._closed(self)
        self.transport = None

    def send(self, frame: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        if t.get_write_buffer_size() > WRITE_LIMIT:
            self.gateway.stats.add("closed_slow_reader")
            t.abort()
            return False
        t.write(frame)
        return True

    def close(self, counter: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.gateway.stats.add(counter)
            self.transport.close()


class Gateway:
    """`start()` listens (on its own thread and loop) and returns once bound; `stop()` closes everything."""

    def __init__(self, config: GatewayConfig, sink: Batcher, identities: Identities, catalog: Catalog, *,
                 codes: CodeMap, reference: Reference, forward: Callable[[bytes], None] | None = None,
                 instance: str = "smartpark-hj212") -> None:
        self.config = config
        self.sink = sink
        self.identities = identities
        self.catalog = catalog
        self.codes = codes
        self.reference = reference
        self.forward = forward
        self.instance = instance
        # Told every durable reading as contract JSON on its telemetry topic (the alert engine's `offer`), so
        # alerts treat HJ 212 readings like any other.
        self.observers: list[Callable[[str, bytes], None]] = []
        self.closers: list[Callable[[], None]] = []  # run by stop() once the loop ended (the upstream relay)
        self.decoder = ReadingDecoder(catalog, retention_ms=config.retention_ms)
        self.stats = gateway_stats()
        self.connections: set[_Connection] = set()
        self.port = config.port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._next_stats = time.monotonic() + config.stats_interval_s
        self._hasher = ThreadPoolExecutor(HASHERS, thread_name_prefix="hj212-pw")
        self._answers: deque[tuple[_Connection, list[Packet]]] = deque()  # durable, to answer (writer -> loop)
        self._answers_due = False

    # --- lifecycle
    def start(self, wait_s: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="hj212-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(wait_s) or self._failure is not None:
            raise ConfigError(f"the HJ 212 gateway could not listen on {self.config.host}:{self.config.port}: "
                              f"{self._failure}; set SMARTPARK_HJ212_PORT to another port")

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        for close in self.closers:
            close()

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(loop.create_server(
                lambda: _Connection(self), self.config.host, self.config.port, backlog=4096))
        except OSError as exc:
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        sweeper = loop.create_task(self._sweep_loop(), name="hj212-sweep")
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            sweeper.cancel()
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
            self._hasher.shutdown(wait=False, cancel_futures=True)

    # --- connections
    def _opened(self, conn: _Connection) -> None:
        if len(self.connections) >= self.config.max_connections:
            self.stats.reject("too_many_connections")
            conn.transport.abort()  # type: ignore[union-attr]
            return
        self.connections.add(conn)
        self.stats.add("connections_opened")
        self.stats.gauge("connections", len(self.connections))

    def _closed(self, conn: _Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.stats.add("connections_closed")
            self.stats.gauge("connections", len(self.connections))
        for key in list(conn.splits):
            self._expire_split(conn, key, "connection closed")

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self._sweep()
            except Exception:  # a bug in the sweep must not end idle checks for good
                log.exception("HJ 212 sweep failed")

    def _sweep(self) -> None:
        now = time.monotonic()
        idle_before = now - self.config.idle_timeout_s
        for conn in list(self.connections):
            if conn.last < idle_before:
                conn.close("closed_idle")
            for key, split in list(conn.splits.items()):
                if split.first < now - self.config.split_timeout_s:
                    self._expire_split(conn, key, f"{len(split.packets)} parts in after "
                                                  f"{self.config.split_timeout_s:g} s")
        if now >= self._next_stats:
            self._next_stats = now + self.config.stats_interval_s
            points = self.stats.points(self.instance, clock.now_ms())
            if points:
                self.sink.add_local(DecodedMessage(points, 0, []))

    # --- frames
    def _drain(self, conn: _Connection) -> None:
        """Handle the connection's frames in order, until one waits for its PW check."""
        backlog = conn.backlog
        while backlog and not conn.verifying:
            if self._item(conn, backlog[0]) is WAIT:
                return
            backlog.popleft()

    def _item(self, conn: _Connection, item: Frame | Malformed) -> object:
        """Handle one frame or malformation; WAIT when the frame must wait for its PW check."""
        try:
            if isinstance(item, Malformed):
                self._malformed(conn, item)
                return None
            if self._frame(conn, item) is WAIT:
                return WAIT
        except PacketError as exc:
            self._reject(conn, exc.reason, exc.detail, item.raw)
        except Exception as exc:  # a bug costs one dead letter, never the connection or the others
            log.exception("HJ 212 frame from %s failed", conn.peer)
            self._reject(conn, "bad_segment", f"undecodable: {exc!r}"[:300], item.raw)
        self.stats.add("frames_received")
        return None

    def _malformed(self, conn: _Connection, bad: Malformed) -> None:
        if bad.reason == "garbage":
            conn.letters += 1
            self.stats.reject("garbage")
            if conn.letters <= GARBAGE_LETTERS:
                self._dead(conn, "garbage", bad.detail, bad.raw)
            return
        self.stats.add("frames_received")
        self._reject(conn, bad.reason, bad.detail, bad.raw)
        if bad.reason == "bad_crc" and bad.segment is not None:
            try:
                packet = parse_segment(bad.segment)
            except PacketError:
                return
            if packet.qn is not None:
                self._refuse(conn, packet, "bad_crc")

    def _frame(self, conn: _Connection, frame: Frame) -> object:
        try:
            packet = parse_segment(frame.segment)
        except PacketError as exc:
            self._reject(conn, exc.reason, exc.detail, frame.raw)
            return None
        identity = self._authenticate(conn, packet, frame.raw)
        if identity is None or identity is WAIT:
            return identity
        if packet.cn == HEARTBEAT:
            self.stats.add("heartbeats")
            return None
        if packet.st not in AIR_SOURCE_ST or packet.cn not in DATA_COMMANDS:
            reason = "bad_st" if packet.st not in AIR_SOURCE_ST else "bad_cn"
            self._reject(conn, reason, f"ST={packet.st} CN={packet.cn} is not data of an air source", frame.raw)
            if packet.flag.answer:
                self._refuse(conn, packet, reason)
            return None
        if self.forward is not None:
            self.forward(frame.raw)
        if packet.flag.split:
            self._split_part(conn, packet, frame.raw, identity)  # type: ignore[arg-type]
        else:
            self._data(conn, [packet], frame.raw, identity)  # type: ignore[arg-type]
        return None

    def _authenticate(self, conn: _Connection, packet: Packet, raw: bytes) -> Identity | object | None:
        """The packet's device; None (refused, counted) or WAIT (its PW is being checked off the loop)."""
        identity = self.identities.find(packet.mn)
        if identity is None:
            self._reject(conn, "unknown_mn", f"MN {packet.mn!r} is not bound to a device", raw)
            self._refuse(conn, packet, "unknown_mn")
            return None
        ok = self.identities.cached(packet.mn, identity, packet.pw)
        if ok is None:
            self._verify_later(conn, packet.mn, identity, packet.pw)
            return WAIT
        if not ok:
            self._reject(conn, "wrong_pw", f"wrong PW for MN {packet.mn!r} ({identity.device})", raw)
            self._refuse(conn, packet, "wrong_pw")
            conn.pw_failures += 1
            if conn.pw_failures >= MAX_PW_FAILURES:
                conn.close("closed_wrong_pw")
            return None
        return identity

    def _verify_later(self, conn: _Connection, mn: str, identity: Identity, pw: str) -> None:
        """A first login (or a new PW) costs a PBKDF2: run it in the hasher threads so the loop keeps serving
        every other connection; this one stops reading until it is done, then goes on in order."""
        conn.verifying = True
        if conn.transport is not None:
            conn.transport.pause_reading()
        future = self._loop.run_in_executor(self._hasher, self.identities.verify, mn, identity, pw)  # type: ignore[union-attr]
        future.add_done_callback(lambda _: self._verified(conn))

    def _verified(self, conn: _Connection) -> None:
        conn.verifying = False
        if conn.transport is None or conn.transport.is_closing():
            return
        conn.transport.resume_reading()
        self._drain(conn)

    def _split_part(self, conn: _Connection, packet: Packet, raw: bytes, identity: Identity) -> None:
        key = (packet.mn, packet.cn, packet.qn or packet.data_time or "")
        split = conn.splits.get(key)
        if split is None:
            if len(conn.splits) >= MAX_SPLITS:
                oldest = min(conn.splits, key=lambda k: conn.splits[k].first)
                self._expire_split(conn, oldest, f"more than {MAX_SPLITS} split packets open")
            split = conn.splits[key] = _Split()
        split.packets[packet.pno or 0] = packet
        split.raws.append(raw)
        self.stats.add("split_parts")
        if len(split.packets) == packet.pnum:
            del conn.splits[key]
            parts = [split.packets[n] for n in sorted(split.packets)]
            self._data(conn, parts, b"\r\n".join(split.raws), identity)

    def _expire_split(self, conn: _Connection, key: tuple[str, str, str], why: str) -> None:
        split = conn.splits.pop(key)
        self._reject(conn, "split_incomplete", f"MN {key[0]} CN {key[1]} QN {key[2]}: {why}",
                     b"\r\n".join(split.raws))

    def _data(self, conn: _Connection, parts: list[Packet], raw: bytes, identity: Identity) -> None:
        """Readings of one (possibly reassembled) data packet into the writer; answers once durable."""
        head = parts[0]
        packet = head._replace(cp=[item for p in parts for item in p.cp]) if len(parts) > 1 else head
        now_ms = clock.now_ms()
        done = convert(packet, (identity.site, identity.device), self.codes, self.decoder, tz=self.config.tz,
                       now_ms=now_ms)
        decoded = done.decoded
        topic = f"hj212/{packet.mn}/{packet.cn}"
        dead = [DeadLetter(now_ms, r.reason.value, topic, r.index, r.detail, redact(raw)) for r in decoded.rejections]
        for r in decoded.rejections:
            self.stats.reject(r.reason.value)
        if done.unmapped:
            self.stats.add("unmapped_items", done.unmapped)
        if done.sentinels:
            self.stats.add("zs_sentinels", done.sentinels)
        if decoded.readings:
            self.stats.add("readings", len(decoded.readings))
            self._compare(identity, done.metrics)
        answers = [p for p in parts if p.flag.answer]
        offers = [(telemetry_topic(r.site, r.device), _reading_json(r)) for r in decoded.readings
                  ] if self.observers else []
        on_durable = self._after_durable(conn, answers, offers) if answers or offers else None
        self.stats.add("packets_accepted")
        self.sink.add_local(DecodedMessage(to_points(decoded.readings, self.catalog), len(decoded.readings), dead),
                            on_durable)

    def _compare(self, identity: Identity, metrics: dict[str, float]) -> None:
        emissions = self.reference.emissions
        off = zs_disagreements(metrics, self.reference.source_type(identity.source_type),
                               emissions.o2_correction_max_pct)
        if off:
            self.stats.add("zs_disagreements", len(off))
            log.warning("%s: the monitor's O2-corrected %s disagree with the platform's correction",
                        identity.device, ", ".join(off))

    def _after_durable(self, conn: _Connection, packets: list[Packet], offers: list[tuple[str, bytes]]
                       ) -> Callable[[], None]:
        def on_durable() -> None:  # the writer thread: readings to the observers, answers over to the loop
            for topic, payload in offers:
                for observe in self.observers:
                    observe(topic, payload)
            if packets:
                self._answers.append((conn, packets))
                if not self._answers_due:  # one wake-up of the loop for a whole batch's answers
                    self._answers_due = True
                    try:
                        self._loop.call_soon_threadsafe(self._answer_all)  # type: ignore[union-attr]
                    except RuntimeError:  # the loop stopped: units resend, resends overwrite themselves
                        self.stats.add("answers_dropped", len(self._answers))
                        self._answers.clear()

        return on_durable

    def _answer_all(self) -> None:
        self._answers_due = False  # before draining: an answer queued from now on schedules another round
        answers = self._answers
        sent = dropped = 0
        while answers:
            conn, packets = answers.popleft()
            for packet in packets:
                if conn.send(data_answer(packet)):
                    sent += 1
                else:
                    dropped += 1
        self.stats.add("answers_sent", sent)
        if dropped:
            self.stats.add("answers_dropped", dropped)

    # --- rejections
    def _refuse(self, conn: _Connection, packet: Packet, reason: str) -> None:
        if conn.send(refusal(packet, reason)):
            self.stats.add("refusals_sent")

    def _reject(self, conn: _Connection, reason: str, detail: str, raw: bytes) -> None:
        self.stats.reject(reason)
        self._dead(conn, reason, detail, raw)

    def _dead(self, conn: _Connection, reason: str, detail: str, raw: bytes) -> None:
        letter = DeadLetter(clock.now_ms(), reason, f"hj212/{conn.peer}", None, detail, redact(raw))
        self.sink.add_local(DecodedMessage([], 0, [letter]))
