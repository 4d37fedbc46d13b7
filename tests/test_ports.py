"""The test servers' port picker: below the ephemeral range, a slice per xdist worker, no repeats in a process."""

from __future__ import annotations

import contextlib
import itertools
import socket

import pytest

from tests import ports


def test_ports_are_below_the_ephemeral_range_and_not_repeated() -> None:
    start, end = ports._low_range()
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == len(picked)
    assert all(start <= port < end for port in picked)


def test_each_worker_picks_in_a_slice_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    bounds = (10000, 26000)
    slices = []
    for worker in range(ports.SLICES):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        slices.append(range(*ports._slice(bounds)))
    assert all(len(s) == 1000 for s in slices)
    assert all(a[-1] < b[0] for a, b in itertools.pairwise(slices))
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw16")
    assert range(*ports._slice(bounds)) == slices[0]
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert ports._slice(bounds) == bounds


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    start, _ = ports._slice(ports._low_range())
    busy = start + 10
    with socket.socket() as taken:
        with contextlib.suppress(OSError):  # busy already: all the better
            taken.bind(("127.0.0.1", busy))
        monkeypatch.setattr(ports, "_next", busy)
        assert ports.free_port() > busy


def test_ports_browsers_refuse_are_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chromium answers ERR_UNSAFE_PORT for 10080 without connecting: a UI server there fails its browser test."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setattr(ports, "_low_range", lambda: ports.LOW_PORTS)
    start, end = ports._slice(ports.LOW_PORTS)
    assert start <= 10080 < end
    monkeypatch.setattr(ports, "_next", 10080)
    assert ports.free_port() not in ports.BROWSER_BLOCKED_PORTS
