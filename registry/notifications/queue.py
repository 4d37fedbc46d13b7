"""A small durable queue of deliveries (one event for one endpoint) in a local SQLite file.

Several worker processes share the file: a delivery is claimed for a lease before it is sent, so one process sends
it; a process that dies mid-send lets its lease run out and another one sends it again (at least once).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (endpoint, due);
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    event: str
    attempts: int


class DeliveryQueue:
    """Blocking calls: run them off the event loop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def add(self, deliveries: list[tuple[str, str]]) -> None:
        """(endpoint, event JSON) pairs, due now."""
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT INTO deliveries (endpoint, event, due) VALUES (?, ?, ?)",
                [(endpoint, event, now) for endpoint, event in deliveries],
            )

    def claim(self, endpoint: str, limit: int, lease: float) -> list[Delivery]:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT id, event, attempts FROM deliveries WHERE endpoint = ? AND due <= ? AND claimed_until <= ?"
                    " ORDER BY id LIMIT ?",
                    (endpoint, now, now, limit),
                ).fetchall()
                self._db.executemany(
                    "UPDATE deliveries SET claimed_until = ? WHERE id = ?", [(now + lease, row[0]) for row in rows]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [Delivery(*row) for row in rows]

    def delivered(self, ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM deliveries WHERE id = ?", [(i,) for i in ids])

    def retry_later(self, ids: list[int], delay: float) -> None:
        due = time.time() + delay
        with self._lock:
            self._db.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, due = ?, claimed_until = 0 WHERE id = ?",
                [(due, i) for i in ids],
            )

    def release(self, ids: list[int]) -> None:
        """Give claimed deliveries back unsent (a process stopping mid-send): due again at once, anywhere."""
        with self._lock:
            self._db.executemany("UPDATE deliveries SET claimed_until = 0 WHERE id = ?", [(i,) for i in ids])

    def pending(self, endpoint: str | None = None) -> int:
        with self._lock:
            if endpoint is None:
                row = self._db.execute("SELECT count(*) FROM deliveries").fetchone()
            else:
                row = self._db.execute("SELECT count(*) FROM deliveries WHERE endpoint = ?", (endpoint,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
