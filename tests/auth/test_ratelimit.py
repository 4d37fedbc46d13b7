"""Failed logins: per user and address, an address alone more loosely, forgotten after the window."""

from __future__ import annotations

import pytest

from registry.auth import ratelimit
from registry.auth.ratelimit import ADDRESS_FACTOR, FailedLogins


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
