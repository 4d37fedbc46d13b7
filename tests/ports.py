"""Ports for the servers the tests start: picked so that nothing else takes one between the pick and the bind.

A port found free by binding port 0 comes from the kernel's ephemeral range, which every outgoing connection
draws from too. A test that picks a port and binds it later (a server started as a subprocess, a receiver started
after the registry that posts to it, a server paused and resumed) can find it taken by a client connection in
between; CI lost two runs that way (slapd's resume, a webhook receiver: `Address already in use`).

So ports are picked below the ephemeral range, where the kernel hands out nothing by itself; each pytest-xdist
worker picks in a slice of its own, and one process walks its slice in order, so that two picks made before either
port is bound do not collide.
"""

from __future__ import annotations

import os
import random
import socket
import threading

LOW_PORTS = (10000, 32768)
"""The range ports are picked in, cut short where the kernel's ephemeral range (ip_local_port_range) begins."""

BROWSER_BLOCKED_PORTS = frozenset({10080})
"""Ports in that range that Chromium (and Firefox) refuse to connect to, answering ERR_UNSAFE_PORT with an error page
of their own (net/base/port_util.cc: 10080 since Chromium 90, against NAT slipstreaming). A server of the UI browser
tests on one of them was never reached, its login form never found (CI run of e576ef6, 2026-12-07)."""

SLICES = 16
"""How many workers get a slice of their own (gw0..gw15); workers beyond share slices, as do unrelated processes."""

_lock = threading.Lock()
_next: int | None = None


def free_port() -> int:
    """A port on 127.0.0.1 free now, below the ephemeral range, not handed out before by this process lately."""
    global _next
    start, end = _slice(_low_range())
    with _lock:
        if _next is None:
            _next = random.randrange(start, end)
        for _ in range(end - start):
            port, _next = _next, start + (_next + 1 - start) % (end - start)
            if port not in BROWSER_BLOCKED_PORTS and _bindable(port):
                return port
    return _ephemeral_port()  # a slice with every port busy: an ephemeral one will do


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _low_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_start = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return LOW_PORTS
    end = min(LOW_PORTS[1], ephemeral_start)
    return (LOW_PORTS[0], end) if end - LOW_PORTS[0] >= 1000 else LOW_PORTS


def _slice(bounds: tuple[int, int]) -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not worker[2:].isdigit():
        return bounds
    start, end = bounds
    size = (end - start) // SLICES
    first = start + (int(worker[2:]) % SLICES) * size
    return first, first + size
