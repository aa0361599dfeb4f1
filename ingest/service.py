"""The ingest service: MQTT in, decode, batch, hand off durably, then ack.

Threads: the MQTT session's thread decodes and batches (about 1 µs a reading, so it keeps up with the
socket); the writer thread takes due batches and hands their points to the store, or to the fsynced spool
when the store is down or slow, writes dead letters and device status, and only then acks the batch's
messages. Two batches are in the store at once (PIPELINE): the next one is encoded and sent while InfluxDB
still writes the last, and acks stay in receive order (the oldest batch always completes first). While the
spool holds data, new batches queue behind it so replay stays in order; a batch the store took while an
earlier one went to the spool is spooled again behind it, so a replay never puts older values over newer
ones. A full spool stops the acks: the broker holds the rest (bounded by Receive Maximum), so nothing is ever
dropped. Points at or before their device's last reading time (resends, corrections, back-dated messages) are
looked up before their batch is written; a changed value is kept and recorded in the audit trail with its
batch's commit (ingest/rewrites.py, core/registry/audit.py).
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from smartpark.core.catalog import Catalog
from smartpark.core.clock import now_ms
from smartpark.core.errors import StoreError
from smartpark.core.mqtt import BrokerUnreachable, Endpoint, MessageSource, open_source, platform_filters
from smartpark.core.points import Point
from smartpark.core.registry import AuditTrail, Registry
from smartpark.core.settings import Settings
from smartpark.core.store.base import TimeSeriesStore
from smartpark.ingest.batch import Batch, Batcher
from smartpark.ingest.deadletter import DeadLetter, DeadLetterBox
from smartpark.ingest.decode import Bindings, MessageDecoder
from smartpark.ingest.rewrites import find_rewrites
from smartpark.ingest.spool import Spool, SpoolFull
from smartpark.ingest.stats import IngestStats

__all__ = ["IngestService", "NoBroker"]

log = logging.getLogger("smartpark.ingest")
REPLAY_MIN_S, REPLAY_MAX_S = 0.5, 30.0
REPLAY_SLICE_S = 1.0  # replay at most this long between two batches, so acks keep flowing
GC_YOUNG_THRESHOLD = 50_000  # allocations between two young collections (Python's default: 700)
PIPELINE = 2  # batches handed to the store at once: +10-15 % readings/s on 2 cores (bench/bench_ingest.py)


class NoBroker:
    """The source of an ingest that takes messages only from inside the process (`smartpark hj212`)."""

    endpoint = Endpoint("-", 0)  # what an error message names: no broker

    def __init__(self) -> None:
        self.subscribed = threading.Event()
        self.subscribed.set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def ack(self, acks: list[tuple[int, int]]) -> int:
        return 0


class IngestService:
    def __init__(self, settings: Settings, store: TimeSeriesStore, registry: Registry, catalog: Catalog,
                 *, endpoint: Endpoint | None, mqtt5: bool = True, spool_dir: str = "spool",
                 instance: str | None = None, quiet_s: float | None = None) -> None:
        """``endpoint`` None: no broker, messages come only through `batcher.add_local` (the HJ 212 gateway
        on its own). ``spool_dir`` (under the data dir) and ``instance`` (the `platform` points' device tag)
        keep two writers on one data dir apart; ``quiet_s``: see Batcher (None: SMARTPARK_INGEST_BATCH_QUIET_S)."""
        self.settings = settings
        self.store = store
        self.registry = registry
        self.stats = IngestStats()
        self.dead_letters = DeadLetterBox(settings.data_dir / "dead-letters.sqlite",
                                          max_bytes=settings.dead_letters_max_bytes,
                                          max_age_ms=int(settings.dead_letters_max_age_days * 86_400_000))
        self.stats.set_counter("dead_letters_pruned", self.dead_letters.pruned)  # at open: the age limit
        self.decoder = MessageDecoder(catalog, Bindings(registry.bindings), settings.retention_ms, settings.window_ms)
        self.batcher = Batcher(settings.ingest_batch_size, settings.ingest_batch_age_s,
                               settings.ingest_batch_quiet_s if quiet_s is None else quiet_s)
        # The mqtt5-codec session costs ~3 µs per message against paho's ~26 (core/mqtt/session.py).
        self.source: MessageSource | NoBroker = NoBroker() if endpoint is None else open_source(
            endpoint, client_id=settings.ingest_client_id, on_message=self._on_message, mqtt5=mqtt5,
            client=settings.ingest_mqtt_client, receive_maximum=2 * settings.ingest_batch_size,
            filters=platform_filters(settings.ingest_shared), max_packet_bytes=settings.ingest_max_packet_bytes)
        self.instance = instance or settings.ingest_client_id
        self.spool = Spool(settings.data_dir / spool_dir, settings.spool_max_bytes)
        self.audit = AuditTrail(registry.engine)
        self._next_replay = 0.0
        self._replay_delay = REPLAY_MIN_S
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._in_flight: deque[Batch] = deque()  # batches in the store's hands, oldest first
        self._store_writer = ThreadPoolExecutor(PIPELINE, thread_name_prefix="ingest-store")

    # --- lifecycle
    def start(self, wait_s: float = 30.0) -> None:
        # Everything built so far (modules, registry, settings) lives as long as the process: kept out of the
        # collector's scans, and young collections made rarer. Decoding allocates a dict or two per reading,
        # and the collector's passes over a large heap cost ~1 µs a reading (bench/bench_ingest.py). Process-wide:
        # under `smartpark up` the other services' objects are frozen and collected less often too.
        self.audit.init()
        self._seed_last_seen()
        gc.collect()  # what is garbage now would never be freed once frozen
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self._writer.start()
        try:
            self.source.start()
        except Exception:
            self._stop.set()
            self._writer.join(timeout=10)
            self.dead_letters.close()
            raise
        if not self.source.subscribed.wait(wait_s):
            endpoint = self.source.endpoint
            self.stop()
            raise BrokerUnreachable(endpoint.host, endpoint.port,
                                    f"not subscribed within {wait_s:.0f} s (credentials or ACL refused?)",
                                    tls=endpoint.tls is not None)

    def stop(self) -> None:
        """Stop taking messages, write what is batched, ack it, disconnect."""
        self._stop.set()
        self._writer.join(timeout=60)
        self.source.stop()
        self._store_writer.shutdown(wait=True)
        self.dead_letters.close()

    def _seed_last_seen(self) -> None:
        """Each device's newest stored reading within the window, so that a rewrite arriving right after a
        restart is checked too (best effort: with the store away, the first message of each device is not)."""
        try:
            latest = self.store.latest_many([s.id for s in self.registry.sites()],
                                            lookback_ms=self.settings.window_ms)
        except Exception as exc:  # StoreError, odd stored data: the ingest starts all the same
            log.warning("could not read the devices' last readings (%s); rewrites of a device's first "
                        "message after this start go unchecked", exc, exc_info=not isinstance(exc, StoreError))
            return
        last = self.decoder.last_ts
        for values in latest.values():
            for v in values:
                if v.ts_ms > last.get(v.device, -1):
                    last[v.device] = v.ts_ms

    # --- MQTT thread
    def _on_message(self, topic: str, payload: bytes, mid: int, generation: int) -> None:
        msg = self.decoder.decode(topic, payload, now_ms())
        self.batcher.add(msg, (generation, mid))

    # --- writer thread
    def _write_loop(self) -> None:
        every = self.settings.ingest_stats_interval_s
        next_stats = time.monotonic() + every
        delay = REPLAY_MIN_S
        while not self._stop.is_set():
            try:
                self._advance(min(0.5, every))
                delay = REPLAY_MIN_S
                if self.spool and time.monotonic() >= self._next_replay:
                    self._replay()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + every
                    self._write_own_stats()
            except Exception:  # the metadata DB restarting, a driver error: retry, don't die silently
                log.exception("ingest writer failed; retrying in %.1f s (nothing of that batch is acked)", delay)
                self.stats.add("writer_errors")
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, REPLAY_MAX_S)
        self._final_commit()

    def _advance(self, timeout: float) -> None:
        """Start the next due batch while the pipeline has room; complete the oldest once its write is done
        (or at once when the pipeline is full or nothing else is due). A batch that fails to complete stays
        at the head and is retried: nothing behind it is acked first."""
        if len(self._in_flight) < PIPELINE:
            wait = 0.0 if self._in_flight and self._in_flight[0].write is None else timeout
            batch = self.batcher.take(timeout=wait, until=self._head_done)
            if batch is not None and batch.messages:
                self._start_write(batch)
                self._in_flight.append(batch)
                if len(self._in_flight) < PIPELINE and not self._head_done():
                    return
        if self._in_flight and self._complete(self._in_flight[0]):
            self._in_flight.popleft()

    def _head_done(self) -> bool:
        return bool(self._in_flight) and (self._in_flight[0].write is None or self._in_flight[0].write.done())

    def _start_write(self, batch: Batch) -> None:
        """Start the batch's store write in the background; not while the spool holds data (the batch then
        queues behind it, written when completed) nor without points."""
        batch.taken = time.perf_counter()
        if batch.late:
            self._find_rewrites(batch)
        if self.spool or not batch.points:
            return
        batch.write = self._store_writer.submit(self.store.write, batch.points)
        batch.write.add_done_callback(lambda _: self.batcher.wake())

    def _find_rewrites(self, batch: Batch) -> None:
        """Before its write: which stored values the batch's late points change (the earlier batches still in
        the store's hands count as stored). With the store unable to answer, the points are stored unchecked,
        counted and logged (a spooled batch's values are not seen by the look-up either)."""
        late, batch.late = batch.late, []
        try:
            batch.rewrites = find_rewrites(late, [b.points for b in self._in_flight], batch.points,
                                           self.store.stored_fields)
        except Exception as exc:  # StoreError, or anything else: the check must never cost the batch itself
            log.warning("could not check %d late points for changed values (%s); stored unchecked", len(late), exc,
                        exc_info=not isinstance(exc, StoreError))
            self.stats.add("rewrite_checks_failed", len(late))
        self.stats.add("late_points_checked", len(late))

    def _complete(self, batch: Batch) -> bool:
        """Wait for the batch's write; when it failed (or never started), the synchronous path decides:
        store again, spool, or dead-letter what the store refuses. Then dead letters, status, ack.

        A write that succeeded after an earlier batch went to the spool is done again behind it (rewrite),
        so the replay cannot put the earlier batch's values over this one's (a corrected reading)."""
        if batch.write is not None:
            write, batch.write = batch.write, None  # a retry of this commit writes synchronously
            try:
                write.result()
                batch.written = not batch.rewrite
            except StoreError:
                pass  # _commit retries it: spools it if the store is down, bisects if it refuses points
            except Exception:  # anything else (a driver bug, MemoryError): _commit writes again
                log.exception("store write failed unexpectedly; writing the batch again")
        return self._commit(batch)

    def _final_commit(self) -> None:
        try:
            while self._in_flight:
                if not self._complete(self._in_flight[0]):
                    return  # left unacked: so are the batches behind it (acks stay in receive order)
                self._in_flight.popleft()
            self._commit(self.batcher.drain())
        except Exception:
            log.exception("final commit failed; its messages stay unacked and the broker redelivers them")

    def _commit(self, batch: Batch) -> bool:
        """Make the batch durable, record its dead letters and status, ack it; False if it stays unacked."""
        if not batch.messages:
            return True
        if batch.late:  # a batch that never went through _start_write (the final drain)
            self._find_rewrites(batch)
        if not batch.written and not self._write_points(batch):
            log.warning("stopping with the store down: %d messages left unacked for redelivery", batch.messages)
            return False
        batch.written = True  # a retry after a failure below must not write (or spool) the points again
        if batch.rewrites and not batch.audited:
            self.audit.record(batch.rewrites)
            self.stats.add("rewrites_recorded", len(batch.rewrites))
            batch.audited = True
        if not batch.recorded:
            self._record_dead(batch.dead)
            batch.recorded = True
        for s in batch.status.values():
            self.registry.set_device_status(s.device, s.online, datetime.fromtimestamp(s.ts_ms / 1000, UTC))
        self.source.ack(batch.acks)
        for on_durable in batch.done:
            on_durable()
        batch.done = []  # a retried commit must not answer twice
        self._count(batch, time.perf_counter() - (batch.taken or time.perf_counter()))
        return True

    def _write_points(self, batch: Batch) -> bool:
        """Hand the points off durably (store or spool); False if stopped before that was possible."""
        delay = REPLAY_MIN_S
        while batch.points:
            if not self.spool and self._try_store(batch):
                return True
            try:
                self.spool.append(batch.points)
                for later in self._in_flight:  # batches the store already took must follow it into the spool
                    later.rewrite = later.rewrite or later is not batch
                self.stats.add("points_spooled", len(batch.points))
                self.stats.gauge("spool_bytes", self.spool.bytes)
                return True
            except SpoolFull as exc:
                log.error("SPOOL FULL (%s) and the store is down: not acking; the broker holds the rest", exc)
                self.stats.add("spool_full_waits")
            if self._stop.wait(delay * random.uniform(0.8, 1.2)):
                return False
            delay = min(delay * 2, REPLAY_MAX_S)
            self._replay()
        return True

    def _try_store(self, batch: Batch) -> bool:
        """Write to the store; False when it is unavailable (the caller spools the batch)."""
        try:
            self.store.write(batch.points)
            return True
        except StoreError as exc:
            if not exc.retryable and self._write_accepted(batch, exc):
                return True
            log.warning("store unavailable (%s); spooling %d points", exc, len(batch.points))
            self.stats.add("write_failures")
            self._next_replay = time.monotonic() + self._replay_delay
            return False

    def _write_accepted(self, batch: Batch, first: StoreError) -> bool:
        """A batch the store refused: write what it accepts, dead-letter only what it refuses itself.

        False when the store became unavailable meanwhile: the caller then spools the whole batch (points
        already written overwrite themselves on replay).
        """
        log.error("store refused a batch (%s); finding the points it refuses", first)
        try:
            refused = self._refused_points(batch.points)
        except StoreError as exc:  # only retryable errors escape
            log.warning("store unavailable while isolating refused points: %s", exc)
            return False
        now = now_ms()
        batch.dead += [DeadLetter(now, "bad_schema", f"{p.site}/{p.device}", None, f"store refused: {why}",
                                  repr(p.fields).encode()) for p, why in refused]
        gone = {id(p) for p, _ in refused}
        batch.points = [p for p in batch.points if id(p) not in gone]
        return True

    def _refused_points(self, points: list[Point]) -> list[tuple[Point, str]]:
        """Bisect: a few writes find the refused points among thousands. Retryable errors propagate."""
        try:
            self.store.write(points)
            return []
        except StoreError as exc:
            if exc.retryable:
                raise
            if len(points) == 1:
                return [(points[0], str(exc))]
            half = len(points) // 2
            return self._refused_points(points[:half]) + self._refused_points(points[half:])

    def _replay(self) -> None:
        """Move spooled batches into the store, oldest first, for at most REPLAY_SLICE_S."""
        deadline = time.monotonic() + REPLAY_SLICE_S
        while time.monotonic() < deadline and (points := self.spool.peek()) is not None:
            try:
                self.store.write(points)
            except StoreError as exc:
                refused = Batch(points=points)
                if exc.retryable or not self._write_accepted(refused, exc):
                    self._replay_delay = min(self._replay_delay * 2, REPLAY_MAX_S)
                    self._next_replay = time.monotonic() + self._replay_delay * random.uniform(0.8, 1.2)
                    return
                self._record_dead(refused.dead)
            self.spool.pop()
            self.stats.add("points_replayed", len(points))
            self.stats.gauge("spool_bytes", self.spool.bytes)
        self._replay_delay = REPLAY_MIN_S

    def _record_dead(self, letters: list[DeadLetter]) -> None:
        if letters and self.dead_letters.add(letters):
            self.stats.set_counter("dead_letters_pruned", self.dead_letters.pruned)

    def _count(self, batch: Batch, seconds: float) -> None:
        self.stats.add("readings_stored", batch.readings)
        self.stats.add("points_written", len(batch.points))
        self.stats.add("batches")
        self.stats.add("messages_committed", batch.messages)
        for d in batch.dead:
            self.stats.reject(d.reason)
        self.stats.gauge("last_batch_points", len(batch.points))
        received = self.batcher.received  # counted under the batcher's lock, not per message here
        self.stats.set_counter("messages_received", received)
        self.stats.gauge("in_flight_messages", received - self.stats.counters["messages_committed"])
        self.stats.gauge("last_write_seconds", round(seconds, 6))

    def _write_own_stats(self) -> None:
        try:
            self.store.write(self.stats.points(self.instance, now_ms()))
        except StoreError as exc:
            log.warning("could not write the ingest's own figures: %s", exc)
