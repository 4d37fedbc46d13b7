"""Failed logins: per user and address, an address alone more loosely, forgotten after the window; in one process,
or shared by the replicas in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from registry.auth import ratelimit
from registry.auth.ratelimit import ADDRESS_FACTOR, FailedLogins, SharedLimiter
from registry.database_postgresql import PostgresEngine
from tests.postgres_server import PostgresServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(ratelimit.time, "monotonic", clock)
    return clock


def test_locked_after_the_limit_until_the_window_passes(clock: Clock) -> None:
    limiter = FailedLogins(failures=3, window=60)
    for _ in range(3):
        assert limiter.retry_after("alice", "10.0.0.1") is None
        limiter.failed("alice", "10.0.0.1")
    assert limiter.retry_after("alice", "10.0.0.1") == 60
    assert limiter.retry_after("alice", "10.0.0.2") is None  # another address
    assert limiter.retry_after("bob", "10.0.0.1") is None  # another user
    clock.now += 45
    assert limiter.retry_after("alice", "10.0.0.1") == 15
    clock.now += 15
    assert limiter.retry_after("alice", "10.0.0.1") is None


def test_success_clears_the_count(clock: Clock) -> None:
    limiter = FailedLogins(failures=2, window=60)
    limiter.failed("alice", "a")
    limiter.succeeded("alice", "a")
    limiter.failed("alice", "a")
    assert limiter.retry_after("alice", "a") is None


def test_one_address_guessing_many_users(clock: Clock) -> None:
    limiter = FailedLogins(failures=2, window=60)
    for i in range(2 * ADDRESS_FACTOR):
        limiter.failed(f"user{i}", "a")
    assert limiter.retry_after("someone-else", "a") is not None
    assert limiter.retry_after("someone-else", "b") is None


@pytest.fixture
def shared_url(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.new_database()
    yield url
    postgres_server.drop_database(url)


async def test_replicas_count_failed_logins_together(shared_url: str) -> None:
    a = SharedLimiter(lambda: PostgresEngine(shared_url), failures=3, window=60)
    b = SharedLimiter(lambda: PostgresEngine(shared_url), failures=3, window=60)
    try:
        await a.failed("alice", "10.0.0.1")
        await b.failed("alice", "10.0.0.1")
        assert await a.retry_after("alice", "10.0.0.1") is None
        await a.failed("alice", "10.0.0.1")  # the third, counted across both replicas
        for limiter in (a, b):
            assert 59 <= (await limiter.retry_after("alice", "10.0.0.1") or 0) <= 60
        assert await b.retry_after("alice", "10.0.0.2") is None
        await b.succeeded("alice", "10.0.0.1")
        assert await a.retry_after("alice", "10.0.0.1") is None
        for i in range(3 * ADDRESS_FACTOR):  # one address guessing many users, spread over the replicas
            await (a if i % 2 else b).failed(f"user{i}", "10.0.0.9")
        assert await a.retry_after("someone-else", "10.0.0.9") is not None
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_unreachable_database_counts_in_the_process(caplog: pytest.LogCaptureFixture) -> None:
    limiter = SharedLimiter(lambda: PostgresEngine("postgresql://moorage@127.0.0.1:9/none"), failures=2, window=60)
    for _ in range(2):
        await limiter.failed("alice", "a")
    assert await limiter.retry_after("alice", "a") == 60
    assert "counting in this process" in caplog.text
    await limiter.aclose()
