"""The dead-letter file on its own: the age limit, and an upgrade of a file written by an older version."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from smartpark.ingest.deadletter import DeadLetter, DeadLetterBox

TOPIC = "smartpark/v1/steel/steel-meter/telemetry"
DAY_MS = 86_400_000


def letters(received_ms: int, n: int, payload: bytes = b'{"readings": []}') -> list[DeadLetter]:
    return [DeadLetter(received_ms, "out_of_range", TOPIC, i, f"reading {i}", payload) for i in range(n)]


def test_letters_older_than_the_age_limit_are_pruned_and_counted(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    box = DeadLetterBox(tmp_path / "dl.sqlite", max_age_ms=7 * DAY_MS)
    box.add(letters(now - 9 * DAY_MS, 3) + letters(now - 8 * DAY_MS, 2, b"{}"))
    box.add(letters(now, 4))
    box.close()
    reopened = DeadLetterBox(tmp_path / "dl.sqlite", max_age_ms=7 * DAY_MS)  # the limit applies at open too
    try:
        assert reopened.pruned == 5
        assert reopened.counts() == {"out_of_range": 4}
        assert {d.received_ms for d in reopened.recent()} == {now}
    finally:
        reopened.close()


def test_a_file_of_the_previous_layout_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "dl.sqlite"
    with sqlite3.connect(path) as old:  # the layout before: the payload on every letter
        old.executescript("""
            CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, reason TEXT NOT NULL,
                topic TEXT NOT NULL, item INTEGER, detail TEXT NOT NULL, payload BLOB NOT NULL);
            CREATE INDEX dead_letters_reason ON dead_letters (reason, received_ms);""")
        now = int(time.time() * 1000)
        old.executemany("INSERT INTO dead_letters (received_ms, reason, topic, item, detail, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?)", [(now, "bad_json", TOPIC, None, "oops", b"{oops"),
                                                      (now, "non_finite", TOPIC, 2, "NaN", b"[...]")])
    old.close()
    box = DeadLetterBox(path)
    try:
        assert box.counts() == {"bad_json": 1, "non_finite": 1}
        box.add(letters(now, 1))
        assert [(d.reason, d.payload) for d in box.recent()] == [
            ("out_of_range", b'{"readings": []}'), ("non_finite", b"[...]"), ("bad_json", b"{oops")]
    finally:
        box.close()
