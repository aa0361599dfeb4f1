"""Dead letters: every rejected message or reading, with its reason, kept in SQLite in the data dir.

A message is stored once (topic, receive time, payload truncated to 4 KiB) and each of its rejections is a
small row pointing at it: a batch of 1,000 bad readings costs one payload, not 1,000 (it used to cost 4 MB).
The file is bounded: rows older than ``max_age_ms`` go, and past ``max_bytes`` the oldest messages go
first; what is pruned is counted (the ingest's ``dead_letters_pruned`` counter).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from smartpark.core.clock import now_ms

__all__ = ["PAYLOAD_KEEP", "DeadLetter", "DeadLetterBox"]

PAYLOAD_KEEP = 4096  # contract: payload truncated to 4 KiB
DETAIL_KEEP = 500
ROW_BYTES = 40  # a letter's row beside its detail, roughly
AGE_CHECK_S = 60.0  # the age limit is applied at most this often (and when the box opens)
PRUNE_TO = 0.9  # past the size cap, prune down to this share of it (not one message per write)

SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_messages (
    id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id INTEGER NOT NULL, n INTEGER NOT NULL, reason TEXT NOT NULL, item INTEGER, detail TEXT NOT NULL,
    PRIMARY KEY (message_id, n)) WITHOUT ROWID;
"""
# Before: one row per rejection, each with the message's payload.
V1_UPGRADE = """
ALTER TABLE dead_letters RENAME TO dead_letters_v1;
DROP INDEX IF EXISTS dead_letters_reason;
{schema}
INSERT INTO dead_messages (id, received_ms, topic, payload) SELECT id, received_ms, topic, payload FROM dead_letters_v1;
INSERT INTO dead_letters (message_id, n, reason, item, detail) SELECT id, 0, reason, item, detail FROM dead_letters_v1;
DROP TABLE dead_letters_v1;
"""


class DeadLetter(NamedTuple):
    received_ms: int
    reason: str
    topic: str
    item: int | None  # index in a batch; None: the whole message
    detail: str
    payload: bytes  # the letters of one message share the one bytes object: it is stored once


class DeadLetterBox:
    """Append-only record of rejections, bounded in size and age; written in the same step that acks."""

    def __init__(self, path: Path, *, max_bytes: int = 256 << 20, max_age_ms: int = 30 * 86_400_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.max_age_ms = max_bytes, max_age_ms
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._page = self._conn.execute("PRAGMA page_size").fetchone()[0]
        wal_pages = max(100, min(1000, max_bytes // self._page // 8))  # the WAL beside it: an eighth of the cap
        self._conn.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        self._conn.execute(f"PRAGMA journal_size_limit={wal_pages * self._page}")
        self._upgrade()
        self._lock = threading.Lock()
        self.pruned = 0  # letters dropped by the limits since the box opened
        self._aged = 0.0
        self._prune_age()

    def _upgrade(self) -> None:
        cols = {r[1] for r in self._conn.execute("PRAGMA table_info(dead_letters)")}
        script = V1_UPGRADE.format(schema=SCHEMA) if "payload" in cols else SCHEMA
        self._conn.executescript(f"BEGIN; {script} COMMIT;")

    def add(self, letters: Sequence[DeadLetter]) -> int:
        """Record the letters (one transaction); how many older ones the limits pruned meanwhile."""
        if not letters:
            return 0
        with self._lock:
            pruned = self._prune_age() if time.monotonic() - self._aged > AGE_CHECK_S else 0
            for part, size in _parts(letters, self.max_bytes // 10):  # a flood of rejections is a big batch
                pruned += self._prune_size(size)  # room first: the file never outgrows the cap
                self._conn.execute("BEGIN")
                try:
                    self._insert(part)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            return pruned

    def _insert(self, letters: Sequence[DeadLetter]) -> None:
        ids: dict[tuple[int, str, int], int] = {}  # (id(payload), topic, received_ms) -> message row
        rows = []
        for n, d in enumerate(letters):
            key = (id(d.payload), d.topic, d.received_ms)
            if (msg := ids.get(key)) is None:
                cur = self._conn.execute("INSERT INTO dead_messages (received_ms, topic, payload) VALUES (?, ?, ?)",
                                         (d.received_ms, d.topic, d.payload[:PAYLOAD_KEEP]))
                msg = ids[key] = cur.lastrowid  # type: ignore[assignment]
            rows.append((msg, n, d.reason, d.item, d.detail[:DETAIL_KEEP]))
        self._conn.executemany("INSERT INTO dead_letters (message_id, n, reason, item, detail) VALUES (?, ?, ?, ?, ?)",
                               rows)

    def used_bytes(self) -> int:
        """Bytes of the file in use (pages not on the free list): what the size cap bounds."""
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page)

    def _prune_age(self) -> int:
        """Drop messages (and their letters) received before the age limit; the number of letters dropped."""
        self._aged = time.monotonic()
        cutoff = now_ms() - self.max_age_ms
        # Rows are appended in receive order: the oldest are the first ids (a walk that stops at the first
        # young row, not a scan of the table).
        first_young = self._conn.execute("SELECT id FROM dead_messages WHERE received_ms >= ? ORDER BY id LIMIT 1",
                                         (cutoff,)).fetchone()
        if first_young is None:
            last = self._conn.execute("SELECT max(id) FROM dead_messages").fetchone()[0]
            return 0 if last is None else self._drop_through(last)
        return self._drop_through(first_young[0] - 1)

    def _prune_size(self, incoming: int) -> int:
        """Make room for ``incoming`` bytes under the size cap: drop the oldest tenth of the messages at a time
        until back under 90 % of the cap, less the room needed."""
        dropped = 0
        while self.used_bytes() + incoming > self.max_bytes * (PRUNE_TO if dropped else 1):
            lo, hi = self._conn.execute("SELECT min(id), max(id) FROM dead_messages").fetchone()
            if lo is None:
                break
            dropped += self._drop_through(lo + max((hi - lo) // 10, 0))
        return dropped

    def _drop_through(self, last_id: int) -> int:
        """Delete messages up to ``last_id`` with their letters; the number of letters deleted."""
        self._conn.execute("BEGIN")
        letters = self._conn.execute("DELETE FROM dead_letters WHERE message_id <= ?", (last_id,)).rowcount
        self._conn.execute("DELETE FROM dead_messages WHERE id <= ?", (last_id,))
        self._conn.execute("COMMIT")
        self.pruned += letters
        return letters

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason"))

    def recent(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT m.received_ms, l.reason, m.topic, l.item, l.detail, m.payload FROM dead_letters l "
                "JOIN dead_messages m ON m.id = l.message_id ORDER BY l.message_id DESC, l.n DESC LIMIT ?",
                (limit,)).fetchall()
        return [DeadLetter(*r) for r in rows]

    def close(self) -> None:
        self._conn.close()


def _parts(letters: Sequence[DeadLetter], budget: int) -> Iterator[tuple[Sequence[DeadLetter], int]]:
    """The letters in runs of about ``budget`` bytes each (as stored: payloads once, a row per letter), cut
    between messages only; with each run's estimated size."""
    start, size = 0, 0
    for i, d in enumerate(letters):
        new_message = i == 0 or d.payload is not letters[i - 1].payload
        if new_message and size >= budget:
            yield letters[start:i], size
            start, size = i, 0
        size += (min(len(d.payload), PAYLOAD_KEEP) + len(d.topic) if new_message else 0) + ROW_BYTES + len(d.detail)
    yield letters[start:], size
