"""The parts of registry/http_limits.py that need no server: sizing the open-file limit, the refusals' bytes.
What the protocol does to real connections is tested against `moorage serve` in tests/e2e/test_limits.py."""

from __future__ import annotations

import json
import resource

import pytest

from registry.http_limits import (
    CONNECTIONS_FULL,
    RESERVED_FILE_DESCRIPTORS,
    HttpLimits,
    UploadSlots,
    ensure_file_descriptors,
)
from registry.settings import HttpSettings

LIMITS = HttpLimits.from_settings(HttpSettings())


class FakeFileLimit:
    def __init__(self, soft: int, hard: int) -> None:
        self.soft, self.hard = soft, hard

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if limits[0] > self.hard:
            raise ValueError("not allowed to raise maximum limit")
        self.soft = limits[0]


def use_file_limit(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> FakeFileLimit:
    fake = FakeFileLimit(soft, hard)
    monkeypatch.setattr(resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(resource, "setrlimit", fake.setrlimit)
    return fake


def test_the_soft_file_limit_is_raised_to_what_the_limits_need(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = use_file_limit(monkeypatch, 1024, 524288)
    limits, warning = ensure_file_descriptors(LIMITS)
    assert (limits, warning) == (LIMITS, None)
    assert fake.soft == LIMITS.file_descriptors_needed > LIMITS.max_connections + LIMITS.max_uploads


def test_a_higher_soft_limit_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = use_file_limit(monkeypatch, 65536, 65536)
    assert ensure_file_descriptors(LIMITS) == (LIMITS, None)
    assert fake.soft == 65536


def test_a_low_hard_limit_shrinks_the_caps_to_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    use_file_limit(monkeypatch, 1024, 1024)
    limits, warning = ensure_file_descriptors(LIMITS)
    assert limits.file_descriptors_needed <= 1024
    assert 0 < limits.max_uploads < limits.max_connections < LIMITS.max_connections
    assert warning is not None and "1024" in warning and "http.max_connections" in warning
    assert limits.max_connections + limits.surplus_connections + limits.max_uploads <= 1024 - RESERVED_FILE_DESCRIPTORS


def test_refusals_are_the_spec_error_body_and_close() -> None:
    date = [(b"date", b"Sun, 06 Dec 2026 00:00:00 GMT")]
    response = CONNECTIONS_FULL.response(date)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["connection"] == "close" and headers["retry-after"].isdigit()
    assert headers["date"] == "Sun, 06 Dec 2026 00:00:00 GMT"
    assert headers["docker-distribution-api-version"] == "registry/2.0"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    # HEAD: the same head, no body.
    assert CONNECTIONS_FULL.response(date, head_only=True) == head + b"\r\n\r\n"


def test_upload_slots_count_up_to_their_limit() -> None:
    slots = UploadSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release()
    assert slots.try_acquire()
