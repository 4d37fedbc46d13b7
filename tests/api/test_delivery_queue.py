"""The webhook delivery queue on SQLite and on PostgreSQL: order per endpoint, one claim in flight per endpoint
among all processes, leases, and each delivery sent once by concurrent senders."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry.notifications.queue import Delivery, DeliveryQueue
from tests.postgres_server import PostgresServer

Opener = Callable[[], DeliveryQueue]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's queue (each call another process's handle on the same queue)."""
    opened: list[DeliveryQueue] = []
    url: str | None = None
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.new_database()

    def open_one() -> DeliveryQueue:
        queue = DeliveryQueue.open(tmp_path / "queue.sqlite3", url)
        opened.append(queue)
        return queue

    yield open_one
    for queue in opened:
        queue.close()
    if url is not None:
        request.getfixturevalue("postgres_server").drop_database(url)


def events(deliveries: list[Delivery]) -> list[str]:
    return [d.event for d in deliveries]


def test_deliveries_go_in_order_and_wait_behind_a_retry(open_queue: Opener) -> None:
    queue = open_queue()
    queue.add([("hook", "e1"), ("hook", "e2"), ("other", "x1")])
    first = queue.claim("hook", 10, 60.0)
    assert events(first) == ["e1", "e2"]
    assert events(queue.claim("other", 10, 60.0)) == ["x1"]  # endpoints do not wait for one another
    queue.delivered([first[1].id])
    queue.retry_later([first[0].id], 3600.0)  # e1 failed: retried in an hour
    queue.add([("hook", "e3")])
    assert queue.claim("hook", 10, 60.0) == []  # e3 waits behind e1
    assert queue.pending("hook") == 2


def test_one_claim_in_flight_per_endpoint(open_queue: Opener) -> None:
    a, b = open_queue(), open_queue()
    a.add([("hook", "e1")])
    claimed = a.claim("hook", 10, 60.0)
    assert events(claimed) == ["e1"]
    b.add([("hook", "e2")])
    assert b.claim("hook", 10, 60.0) == []  # a's batch is on its way: e2 must not overtake it
    a.release([d.id for d in claimed])  # a stopped before sending
    assert events(b.claim("hook", 10, 60.0)) == ["e1", "e2"]


def test_an_expired_lease_lets_another_sender_take_over(open_queue: Opener) -> None:
    a, b = open_queue(), open_queue()
    a.add([("hook", "e1")])
    assert events(a.claim("hook", 10, -1.0)) == ["e1"]  # a died mid-send: its lease is over
    assert events(b.claim("hook", 10, 60.0)) == ["e1"]


def test_concurrent_senders_deliver_each_event_once(open_queue: Opener) -> None:
    senders = [open_queue() for _ in range(4)]
    senders[0].add([("hook", f"e{i:03d}") for i in range(200)])
    sent: list[str] = []
    lock = threading.Lock()

    def send(queue: DeliveryQueue) -> None:
        for _ in range(2000):
            batch = queue.claim("hook", 7, 60.0)
            if batch:
                with lock:
                    sent.extend(events(batch))
                queue.delivered([d.id for d in batch])
            elif queue.pending("hook") == 0:
                return

    threads = [threading.Thread(target=send, args=(queue,)) for queue in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sent == [f"e{i:03d}" for i in range(200)]  # each once, and in order
