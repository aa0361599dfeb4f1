"""Dead letters: every rejected message or reading, with its reason, kept in SQLite in the data dir."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ["PAYLOAD_KEEP", "DeadLetter", "DeadLetterBox"]

PAYLOAD_KEEP = 4096  # contract: payload truncated to 4 KiB

SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, reason TEXT NOT NULL, topic TEXT NOT NULL,
    item INTEGER, detail TEXT NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason, received_ms);
"""


class DeadLetter(NamedTuple):
    received_ms: int
    reason: str
    topic: str
    item: int | None  # index in a batch; None: the whole message
    detail: str
    payload: bytes


class DeadLetterBox:
    """Append-only record of rejections; written in the same step that acks the message."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def add(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = [(d.received_ms, d.reason, d.topic, d.item, d.detail[:500], d.payload[:PAYLOAD_KEEP])
                for d in letters]
        with self._lock:
            self._conn.executemany(
                "INSERT INTO dead_letters (received_ms, reason, topic, item, detail, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason"))

    def recent(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT received_ms, reason, topic, item, detail, payload FROM dead_letters "
                "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [DeadLetter(*r) for r in rows]

    def close(self) -> None:
        self._conn.close()
