"""Closing an SQLite engine while another thread reads through it (a follower's poll at shutdown) waits for the read:
sqlite3 crashes the process when a connection in use is closed under it."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from registry.database import SqliteEngine


def test_close_waits_for_reads_under_way(tmp_path: Path) -> None:
    for round_ in range(20):
        engine = SqliteEngine(tmp_path / f"db-{round_}.sqlite")
        with engine.transaction() as db:
            db.execute("CREATE TABLE t (x INTEGER)")
            db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(2000)])
        closed = threading.Event()
        errors: list[BaseException] = []

        def read(
            engine: SqliteEngine = engine, closed: threading.Event = closed, errors: list[BaseException] = errors
        ) -> None:
            while not closed.is_set():
                try:
                    engine.read("SELECT sum(a.x) FROM t a, t b WHERE a.x < 30")
                except sqlite3.ProgrammingError:  # closed: what a read after close gets
                    return
                except BaseException as e:  # pragma: no cover - reported below
                    errors.append(e)
                    return

        reader = threading.Thread(target=read)
        reader.start()
        engine.close()
        closed.set()
        reader.join(timeout=30)
        assert not reader.is_alive() and not errors, errors
