"""Batches of decoded messages: filled by the MQTT thread, taken whole by the writer.

A batch carries the broker message ids to acknowledge once its points and dead letters are durable, so
the ack can never run ahead of the write.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from smartpark.core.points import Point
from smartpark.core.registry.audit import Rewrite
from smartpark.ingest.deadletter import DeadLetter
from smartpark.ingest.decode import DecodedMessage, StatusUpdate

__all__ = ["Batch", "Batcher"]


@dataclass(slots=True)
class Batch:
    points: list[Point] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    status: dict[str, StatusUpdate] = field(default_factory=dict)
    acks: list[tuple[int, int]] = field(default_factory=list)  # (connection, MQTT mid), receive order
    readings: int = 0
    messages: int = 0
    opened: float = 0.0  # monotonic time of the first message
    last: float = 0.0  # monotonic time of the last message (the quiet rule)
    taken: float = 0.0  # perf_counter time the writer took it
    write: Future[None] | None = None  # its background store write, until the writer has its outcome
    written: bool = False  # points durable (store or spool): a retried commit must not write them again
    rewrite: bool = False  # written to the store while an earlier batch went to the spool: write again after it
    recorded: bool = False  # dead letters recorded: a retried commit must not record them twice
    late: list[tuple[int, Point]] = field(default_factory=list)  # (received ms, point) that may change history
    rewrites: list[Rewrite] = field(default_factory=list)  # stored values these points change (audit trail)
    audited: bool = False  # rewrites recorded: a retried commit must not record them twice
    done: list[Callable[[], None]] = field(default_factory=list)  # run once durable (other sources' acks)

    def add(self, msg: DecodedMessage, ack: tuple[int, int] | None, on_durable: Callable[[], None] | None) -> None:
        """A message and how to acknowledge it: its broker (connection, mid), or a callback run once durable."""
        self.last = time.monotonic()
        if not self.messages:
            self.opened = self.last
        self.points += msg.points
        self.dead += msg.dead
        if msg.status is not None:
            self.status[msg.status.device] = msg.status
        if msg.late:
            self.late += msg.late
        if ack is not None:
            self.acks.append(ack)
        if on_durable is not None:
            self.done.append(on_durable)
        self.readings += msg.readings
        self.messages += 1


class Batcher:
    """Collects messages until ``max_points``, ``max_age_s`` or ``quiet_s``; `take()` blocks until a batch is due.

    `add()` blocks while the open batch holds 3 x ``max_points`` (the writer is behind): Receive Maximum
    bounds messages, not points, and one message may carry 1,000 readings. A blocked reader stops reading
    the socket, which is backpressure the broker understands. Three batches waiting (beside the two with the
    store) keep the writer busy; four cost a drained backlog 5-6 MiB more peak RSS for no more msg/s.
    """

    def __init__(self, max_points: int, max_age_s: float, quiet_s: float = 0.0) -> None:
        """``quiet_s`` > 0: a batch is also due once no message came for that long: a burst that ended (devices
        publishing on the same tick, a gateway's flush, the last messages before a lull) need not wait out
        ``max_age_s``, and senders that wait for their answer (HJ 212 units) send nothing more until the batch
        is written. A dense stream never pauses that long and still fills its batches to ``max_points``; a sparse
        one writes at most one batch per ``quiet_s``."""
        self.max_points = max_points
        self.high_water = 3 * max_points
        self.max_age_s = max_age_s
        self.quiet_s = quiet_s
        self._batch = Batch()
        self._lock = threading.Lock()  # add() takes it directly: a Condition's with-block costs two Python calls
        self._cond = threading.Condition(self._lock)
        self.received = 0  # messages ever added

    def add(self, msg: DecodedMessage, ack: tuple[int, int] | None,
            on_durable: Callable[[], None] | None = None) -> None:
        """A message from the broker, acked by its (connection, MQTT mid) once its batch is durable (called once
        a message: the body is here, not one call further)."""
        with self._lock:
            while len(self._batch.points) >= self.high_water:
                self._cond.wait(0.5)
            self._batch.add(msg, ack, on_durable)
            self.received += 1
            # The first message of a batch wakes the writer too, so that it waits out the batch's own age (or
            # quiet time) from now, not the rest of a wait begun when there was nothing to write.
            if len(self._batch.points) >= self.max_points or self._batch.messages == 1:
                self._cond.notify()

    def add_local(self, msg: DecodedMessage, on_durable: Callable[[], None] | None = None) -> None:
        """As add(), for a message another source received; ``on_durable`` runs on the writer thread once the
        batch is durable (store or spool) and its dead letters recorded."""
        self.add(msg, None, on_durable)

    def _due(self) -> bool:
        b = self._batch
        if len(b.points) >= self.max_points:
            return True
        if not b.messages:
            return False
        now = time.monotonic()
        return now - b.opened >= self.max_age_s or (self.quiet_s > 0 and now - b.last >= self.quiet_s)

    def wake(self) -> None:
        """Make a waiting take() look at its ``until`` again (the writer has something else to do)."""
        with self._cond:
            self._cond.notify_all()

    def take(self, timeout: float, until: Callable[[], bool] | None = None) -> Batch | None:
        """The due batch, or None when nothing became due within ``timeout`` seconds or ``until()`` became
        true first (checked on each wake())."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._due():
                if until is not None and until():
                    return None
                wait = deadline - time.monotonic()
                if self._batch.messages:
                    wait = min(wait, self._batch.opened + self.max_age_s - time.monotonic())
                    if self.quiet_s > 0:
                        wait = min(wait, self._batch.last + self.quiet_s - time.monotonic())
                if deadline - time.monotonic() <= 0:
                    return None
                self._cond.wait(max(wait, 0.001))
            batch, self._batch = self._batch, Batch()
            self._cond.notify_all()  # a reader waiting at the high-water mark
            return batch

    def drain(self) -> Batch:
        with self._cond:
            batch, self._batch = self._batch, Batch()
            self._cond.notify_all()
            return batch
