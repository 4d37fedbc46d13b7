"""A durable queue of deliveries (one event for one endpoint), in the metadata database (registry/database.py): a
local SQLite file (`notifications.queue_path`) or, with `database.url` naming PostgreSQL, the database every replica
shares.

Deliveries go out in the order they were queued, per endpoint, one batch at a time among all the processes and
replicas: a process claims the oldest ones for a lease before it sends them, and nobody claims that endpoint's
deliveries while a claim is in flight (PostgreSQL: under the endpoint's advisory lock, the rows taken `FOR UPDATE
SKIP LOCKED`). A delivery that failed waits for its retry, and those queued after it wait behind it. A process that
stops mid-send gives its claim back; one that dies lets the lease run out, and another sends the batch again (at
least once: receivers see Distribution's event ids to drop repeats).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from registry.database import Engine, SqliteEngine, postgres_engine

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (endpoint, due)
"""
POSTGRESQL_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id BIGSERIAL PRIMARY KEY,
    endpoint TEXT NOT NULL,
    event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_by_endpoint ON deliveries (endpoint, id)
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    event: str
    attempts: int


class DeliveryQueue:
    """Blocking calls: run them off the event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        schema = POSTGRESQL_SCHEMA if engine.dialect == "postgresql" else SQLITE_SCHEMA
        with engine.transaction(lock="moorage-deliveries-schema") as db:
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)

    @classmethod
    def open(cls, path: Path, url: str | None = None) -> DeliveryQueue:
        """The queue in the PostgreSQL database `url` when given, else in the SQLite file at `path`."""
        if url is not None:
            return cls(postgres_engine(url))
        return cls(SqliteEngine(path))

    def add(self, deliveries: list[tuple[str, str]]) -> None:
        """(endpoint, event JSON) pairs, due now."""
        now = time.time()
        with self.engine.transaction() as db:
            db.executemany(
                "INSERT INTO deliveries (endpoint, event, due) VALUES (?, ?, ?)",
                [(endpoint, event, now) for endpoint, event in deliveries],
            )

    def claim(self, endpoint: str, limit: int, lease: float) -> list[Delivery]:
        """The oldest deliveries for `endpoint` that are due, up to the first that is not (order is kept), claimed
        for `lease` seconds; none while another claim for the endpoint is in flight."""
        now = time.time()
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.engine.dialect == "postgresql" else ""
        with self.engine.transaction(lock=f"deliveries:{endpoint}") as db:
            busy = db.execute(
                "SELECT 1 FROM deliveries WHERE endpoint = ? AND claimed_until > ? LIMIT 1", (endpoint, now)
            ).fetchone()
            if busy is not None:
                return []
            rows = db.execute(
                f"SELECT id, event, attempts, due FROM deliveries WHERE endpoint = ? ORDER BY id LIMIT ?{skip_locked}",
                (endpoint, limit),
            ).fetchall()
            taken: list[Delivery] = []
            for row in rows:
                if float(row[3]) > now:
                    break  # waiting for its retry: what was queued after it waits too
                taken.append(Delivery(int(row[0]), str(row[1]), int(row[2])))
            db.executemany("UPDATE deliveries SET claimed_until = ? WHERE id = ?", [(now + lease, d.id) for d in taken])
        return taken

    def delivered(self, ids: list[int]) -> None:
        with self.engine.transaction() as db:
            db.executemany("DELETE FROM deliveries WHERE id = ?", [(i,) for i in ids])

    def retry_later(self, ids: list[int], delay: float) -> None:
        due = time.time() + delay
        with self.engine.transaction() as db:
            db.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, due = ?, claimed_until = 0 WHERE id = ?",
                [(due, i) for i in ids],
            )

    def release(self, ids: list[int]) -> None:
        """Give claimed deliveries back unsent (a process stopping mid-send): due again at once, anywhere."""
        with self.engine.transaction() as db:
            db.executemany("UPDATE deliveries SET claimed_until = 0 WHERE id = ?", [(i,) for i in ids])

    def pending(self, endpoint: str | None = None) -> int:
        if endpoint is None:
            rows = self.engine.read("SELECT count(*) FROM deliveries")
        else:
            rows = self.engine.read("SELECT count(*) FROM deliveries WHERE endpoint = ?", (endpoint,))
        return int(rows[0][0])

    def close(self) -> None:
        self.engine.close()
