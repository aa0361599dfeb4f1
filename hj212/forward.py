"""Relay of accepted raw packets to upstream platforms (the authority's), store-and-forward.

Each packet is queued per upstream in SQLite in the data dir (WAL: a crash of the gateway loses nothing
queued), and one thread per upstream sends the queue in order over a long-lived TCP connection, deleting
rows only after they were written to the socket. While an upstream is down its queue grows on disk and the
thread retries with backoff and jitter; nothing is dropped. Upstreams' answers are read and discarded: the
park's gateway already answered the unit, and an upstream's 9014 cannot be matched to a resend [U].
"""

from __future__ import annotations

import logging
import random
import socket
import sqlite3
import threading
from pathlib import Path

from smartpark.ingest.stats import IngestStats

__all__ = ["Forwarder", "parse_targets"]

log = logging.getLogger("smartpark.hj212")
SEND_BATCH = 500
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 30.0
CONNECT_TIMEOUT_S = 5.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS forward_queue (
    id INTEGER PRIMARY KEY, target TEXT NOT NULL, frame BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS forward_queue_target ON forward_queue (target, id);
"""


def parse_targets(text: str) -> list[tuple[str, int]]:
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        host, _, port = item.rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


class Forwarder:
    def __init__(self, path: Path, targets: list[tuple[str, int]], stats: IngestStats) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)  # raw packets carry the units' PWs (SQLite's -wal follows the mode)
        path.chmod(0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self.targets = [f"{h}:{p}" for h, p in targets]
        self.stats = stats
        self._stop = threading.Event()
        self._wake = {t: threading.Event() for t in self.targets}
        self._threads = [threading.Thread(target=self._run, args=(t,), name=f"hj212-forward-{t}", daemon=True)
                         for t in self.targets]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for t in self._threads:
            t.join(timeout=10)
        self._db.close()

    def enqueue(self, raw: bytes) -> None:
        """Queue one raw packet for every upstream (the gateway's loop: one small SQLite insert)."""
        with self._lock:
            self._db.executemany("INSERT INTO forward_queue (target, frame) VALUES (?, ?)",
                                 [(t, raw) for t in self.targets])
        for event in self._wake.values():
            event.set()

    def queued(self, target: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM forward_queue WHERE target = ?", (target,)).fetchone()[0]

    def _take(self, target: str) -> list[tuple[int, bytes]]:
        with self._lock:
            return self._db.execute("SELECT id, frame FROM forward_queue WHERE target = ? ORDER BY id LIMIT ?",
                                    (target, SEND_BATCH)).fetchall()

    def _done(self, target: str, last_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM forward_queue WHERE target = ? AND id <= ?", (target, last_id))

    def _run(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        sock: socket.socket | None = None
        delay = BACKOFF_MIN_S
        while not self._stop.is_set():
            rows = self._take(target)
            if not rows:
                self._wake[target].wait(1.0)
                self._wake[target].clear()
                continue
            try:
                if sock is None:
                    sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
                _drain(sock)
                sock.sendall(b"".join(frame for _, frame in rows))
            except OSError as exc:
                log.warning("HJ 212 upstream %s unreachable (%s); %d+ packets wait", target, exc, len(rows))
                self.stats.add("forward_failures")
                if sock is not None:
                    sock.close()
                    sock = None
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            delay = BACKOFF_MIN_S
            self._done(target, rows[-1][0])
            self.stats.add("forwarded", len(rows))
        if sock is not None:
            sock.close()


def _drain(sock: socket.socket) -> None:
    """Read and drop whatever the upstream answered, so its answers never fill our receive buffer; a closed
    connection shows up here as an error before anything is sent on it."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("upstream closed the connection")
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
        sock.settimeout(CONNECT_TIMEOUT_S)
