"""Bounds on what one client can make a server process hold, applied where the bytes arrive.

uvicorn's httptools protocol keeps appending to a request head for as long as a client sends one, waits forever
for a head or a body that trickles in, and its connection cap answers plain text. `BoundedHttpToolsProtocol`:

- answers a request head (request line and headers) longer than `max_header_bytes` with 431;
- cuts a connection whose head is not complete `header_timeout` after the connection could send it (408 when
  part of it arrived);
- cuts a request body silent for `body_idle_timeout`, or averaging under `body_min_rate` bytes/s over the last
  `body_rate_window` seconds; time the server itself is not reading (back-pressure while the application is
  busy, a 100 Continue not yet sent) does not count against the client;
- cuts a response the client takes no bytes of for `send_timeout` (its buffers and the socket's full: a reader
  that stopped reading), or takes at under `send_min_rate` bytes/s over the last `send_rate_window` seconds (a
  slow-read attack), whether the transport holds the rest or a zero-copy send waits on the socket, and while a
  close waits for the transport to write what it holds;
- answers 503 UNAVAILABLE with Retry-After to connections beyond `max_connections`, and to upload requests
  beyond `max_uploads`; past a further allowance, surplus connections are closed without an answer, so that
  file descriptors never run out (`ensure_file_descriptors` sizes the process's limit to match).

Every answer is the spec's JSON error body. The cost is a comparison per read and at most one timer per
connection, re-armed when it fires, never per byte or per request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import math
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any, cast

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from registry.errors import ErrorCode, RegistryError
from registry.sendfile import offers_zero_copy, with_zero_copy
from registry.settings import HttpSettings

logger = logging.getLogger("moorage.http")

RETRY_AFTER_SECONDS = 5
# A client refused with a response gets this long to read it while what it still sends is discarded: closing at
# once, with its request unread, would make the kernel reset the connection and destroy the answer in transit.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024  # and at most this much of it, so that discarding costs little CPU
# A connection beyond max_connections is answered once its request head is in; it gets less time to send it.
OVER_CAPACITY_HEAD_TIMEOUT = 2.0
# Descriptors for everything but connections and upload files: storage pools, databases, logs, the event loop.
RESERVED_FILE_DESCRIPTORS = 256
DESCRIPTORS_PER_CONNECTION = 4
LOG_INTERVAL = 10.0
_UPLOAD_METHODS = frozenset({"POST", "PATCH", "PUT"})


# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 after 120 bytes of older fields (Linux 4.1+).
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
_TCP_INFO_SIZE = 256
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


def below_rate(samples: collections.deque[tuple[float, int]], at: float, count: int, window: float, rate: int) -> bool:
    """Record that a count (bytes received, or acknowledged) was `count` at `at`; whether it grew by less than
    `rate` per second over the last `window` seconds (once the samples span that long)."""
    samples.append((at, count))
    window_start = at - window
    while len(samples) > 2 and samples[1][0] <= window_start:
        samples.popleft()
    oldest_at, oldest_count = samples[0]
    span = at - oldest_at
    return span >= window and count - oldest_count < rate * span


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    header_timeout: float
    body_idle_timeout: float
    body_min_rate: int
    body_rate_window: float
    send_timeout: float
    send_min_rate: int
    send_rate_window: float
    max_connections: int
    max_uploads: int

    @classmethod
    def from_settings(cls, http: HttpSettings) -> HttpLimits:
        return cls(
            max_header_bytes=http.max_header_bytes,
            header_timeout=http.header_timeout,
            body_idle_timeout=http.body_idle_timeout,
            body_min_rate=http.body_min_rate,
            body_rate_window=http.body_rate_window,
            send_timeout=http.send_timeout,
            send_min_rate=http.send_min_rate,
            send_rate_window=http.send_rate_window,
            max_connections=http.max_connections,
            max_uploads=http.max_uploads,
        )

    @property
    def surplus_connections(self) -> int:
        """Connections beyond max_connections that still get their 503; past these, new ones are just closed."""
        return max(16, self.max_connections // 8)

    @property
    def body_check_interval(self) -> float:
        return max(0.05, min(1.0, self.body_idle_timeout / 4, self.body_rate_window / 4))

    @property
    def send_check_interval(self) -> float:
        return max(0.05, min(1.0, self.send_timeout / 4, self.send_rate_window / 4))

    @property
    def file_descriptors_needed(self) -> int:
        # A connection downloading a blob holds the blob's file too, and a zero-copy send two duplicates.
        return (
            self.max_connections * DESCRIPTORS_PER_CONNECTION
            + self.surplus_connections
            + self.max_uploads
            + RESERVED_FILE_DESCRIPTORS
        )


def ensure_file_descriptors(limits: HttpLimits) -> tuple[HttpLimits, str | None]:
    """Raise this process's open-file limit (inherited by worker processes) to what `limits` need.

    When the hard limit is lower, the connection and upload caps shrink to fit, with a warning to print: a
    refused connection is better than an accept() failing for every client, or a storage write failing mid-upload.
    """
    needed = limits.file_descriptors_needed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits, None
    share = max(0.0, (soft - RESERVED_FILE_DESCRIPTORS) / (needed - RESERVED_FILE_DESCRIPTORS))
    fitted = replace(
        limits,
        max_connections=max(1, int(limits.max_connections * share)),
        max_uploads=max(1, int(limits.max_uploads * share)),
    )
    warning = (
        f"the open-file limit is {soft} (hard limit {hard}), {needed} are needed for http.max_connections "
        f"{limits.max_connections} and http.max_uploads {limits.max_uploads}: serving at most "
        f"{fitted.max_connections} connections and {fitted.max_uploads} uploads per process"
    )
    return fitted, warning


class UploadSlots:
    """How many upload requests this process is serving, against a cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1

    def holding(self, app: ASGI3Application) -> ASGI3Application:
        """`app`, releasing a slot acquired for it when it returns."""

        async def run(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
            try:
                await app(scope, receive, send)
            finally:
                self.release()

        return run


class LimitTally:
    """Counts what the limits refused and logs each kind at most once per LOG_INTERVAL: a flood must not become a
    log flood, and the first of each kind is logged at once."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.next_report: dict[str, float] = {}

    def count(self, what: str, now: float) -> None:
        self.counts[what] += 1
        if now >= self.next_report.get(what, 0.0):
            logger.warning("request limits applied: %s x%d", what, self.counts.pop(what))
            self.next_report[what] = now + LOG_INTERVAL


_tally = LimitTally()


@dataclass(frozen=True)
class Refusal:
    """An error the protocol answers by itself, before (or instead of) the application."""

    tally_name: str
    status: int
    headers: bytes
    body: bytes

    @classmethod
    def of(cls, tally_name: str, error: RegistryError) -> Refusal:
        body = json.dumps(error.body(), separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
            (b"connection", b"close"),
        ]
        return cls(tally_name, error.status, b"".join(name + b": " + value + b"\r\n" for name, value in headers), body)

    def response(self, default_headers: list[tuple[bytes, bytes]], *, head_only: bool = False) -> bytes:
        status_line = f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\n".encode()
        defaults = b"".join(name + b": " + value + b"\r\n" for name, value in default_headers)  # uvicorn's Date
        return b"".join(
            (status_line, defaults, api_version_header(), self.headers, b"\r\n", b"" if head_only else self.body)
        )


@functools.cache
def api_version_header() -> bytes:
    # Imported when first needed, in a worker: the handlers pull in prometheus-client, which must not be imported
    # by the parent process before it has chosen the metrics directory (registry/server.py).
    from registry.handlers.common import API_VERSION_HEADER

    name, value = API_VERSION_HEADER
    return f"{name.lower()}: {value}\r\n".encode()


_retry_later = {"Retry-After": str(RETRY_AFTER_SECONDS)}
CONNECTIONS_FULL = Refusal.of(
    "connections over http.max_connections",
    RegistryError(
        ErrorCode.UNAVAILABLE,
        message="too many connections",
        detail="the server is at its connection limit (http.max_connections); retry later",
        headers=_retry_later,
    ),
)
UPLOADS_FULL = Refusal.of(
    "uploads over http.max_uploads",
    RegistryError(
        ErrorCode.UNAVAILABLE,
        message="too many uploads in progress",
        detail="the server is at its limit of concurrent uploads (http.max_uploads); retry later",
        headers=_retry_later,
    ),
)
HEAD_TOO_LARGE = Refusal.of(
    "request heads over http.max_header_bytes",
    RegistryError(
        ErrorCode.REQUEST_HEADERS_TOO_LARGE, detail="the request line and headers exceed http.max_header_bytes"
    ),
)
HEAD_TOO_SLOW = Refusal.of(
    "request heads over http.header_timeout",
    RegistryError(ErrorCode.REQUEST_TIMEOUT, detail="the request head did not arrive within http.header_timeout"),
)
MALFORMED = Refusal.of(
    "malformed requests", RegistryError(ErrorCode.REQUEST_INVALID, detail="not a valid HTTP/1.1 request")
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of this module. One instance per connection."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HttpLimits,
        upload_slots: UploadSlots,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.upload_slots = upload_slots
        self.zero_copy = False  # whether requests may be offered zero-copy sends (set once connected)
        self.header_timeout = limits.header_timeout
        self.over_capacity = False
        self.lingering = False
        self.linger_limit = 0  # `received` at which a lingering connection is closed
        self.watchdog: asyncio.TimerHandle | None = None
        self.watchdog_at = math.inf
        self.received = 0  # bytes, over the connection's life
        # The parser is between requests or inside a head; what that head may still take.
        self.in_head = True
        self.max_header_bytes = limits.max_header_bytes
        self.head_budget = limits.max_header_bytes
        self.head_clock: float | None = None  # when the wait for the current head began; None: not timed
        # Inside a body: when it last made progress, and (time, bytes received) samples over the rate window.
        self.in_body = False
        self.body_watched = False
        self.body_progress_at = 0.0
        self.body_progress_bytes = 0
        self.body_samples: collections.deque[tuple[float, int]] = collections.deque()
        # A response waiting on the client to take more: since when, and what the client had acknowledged and the
        # transport held at the last look (see `send_is_moving`); None: not looked at yet.
        self.send_waiting_since: float | None = None
        self.send_progress: tuple[int, int] | None = None
        # For send_min_rate: a clock that runs only while a response waits on the client (time the server is not
        # sending never counts against it), (that clock, bytes acknowledged) samples over the rate window, and the
        # time of the last look in the current wait. Kept across the waits of one request (a slow reader's sends
        # alternate with them), dropped when the next request starts.
        self.send_clock = 0.0
        self.send_samples: collections.deque[tuple[float, int]] = collections.deque()
        self.send_looked_at: float | None = None
        self.lost = False

    # Connection lifetime

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # sendfile writes to the socket itself: never under TLS, which encrypts in user space.
        info = transport.get_extra_info
        self.zero_copy = info("ssl_object") is None and info("socket") is not None
        open_connections = len(self.connections)
        if open_connections > self.limits.max_connections:
            if open_connections > self.limits.max_connections + self.limits.surplus_connections:
                _tally.count("connections closed unanswered over the surplus", self.loop.time())
                transport.abort()
                return
            self.over_capacity = True
            self.header_timeout = min(self.header_timeout, OVER_CAPACITY_HEAD_TIMEOUT)
        self.start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True  # a zero-copy send on a thread may still report a wait: nothing is timed any more
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        super().connection_lost(exc)

    # The per-request path: these run for every request, so they call the base class directly (super() costs
    # more than the rest of the checks) and do the least they can.

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.lingering or (self.in_head and len(data) > self.head_budget):
            self.receive_carefully(data)
            return
        if self.in_head:
            self.head_budget -= len(data)
        HttpToolsProtocol.data_received(self, data)
        if self.in_body and not self.body_watched:
            self.watch_body()

    def receive_carefully(self, data: bytes) -> None:
        """`data` while refusing, or when it may take the head over its budget."""
        while not self.lingering:
            if not self.in_head or len(data) <= self.head_budget:
                if self.in_head:
                    self.head_budget -= len(data)
                HttpToolsProtocol.data_received(self, data)
                if self.in_body and not self.body_watched:
                    self.watch_body()
                return
            # The head may end inside this chunk: give the parser only what the head may still take.
            allowed, self.head_budget = self.head_budget, 0
            if allowed:
                HttpToolsProtocol.data_received(self, data[:allowed])
            if self.transport.is_closing() or self.lingering:
                return
            if self.in_head and self.head_budget == 0:  # no new request began: this head is still unfinished
                self.refuse(HEAD_TOO_LARGE)
                return
            data = data[allowed:]
        if self.received > self.linger_limit:
            self.transport.abort()

    def send_400_response(self, msg: str) -> None:
        self.refuse(MALFORMED)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_clock = None
        self.in_body = True
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self.in_body = False
        self.body_watched = False
        self.in_head = True
        self.head_budget = self.max_header_bytes
        HttpToolsProtocol.on_message_complete(self)
        # Answered before its body was all in (an early error): uvicorn armed its keep-alive timer then, and the
        # body's bytes cancelled it. The next head is due now.
        if self.cycle.response_complete and self.head_clock is None and not self.lingering:
            self.start_head_clock()

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        if self.transport.is_closing():  # `Connection: close`, or shutdown: the close waits for the buffer
            self.watch_close()
        # From now on the client may send its next request: its head is timed (uvicorn's keep-alive timer is
        # cancelled by any byte, even a lone CRLF that begins nothing). A pipelined head, sent before this
        # response, is timed from here too; its size is bounded all along.
        if self.in_head and self.head_clock is None and not self.lingering:
            self.start_head_clock()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if self.lingering:  # refused: what the parser still finds in the last chunk read is not served
            return
        self.send_samples.clear()
        if self.over_capacity:
            self.refuse(CONNECTIONS_FULL, cycle)
            return
        scope = cycle.scope
        if scope["method"] in _UPLOAD_METHODS and "/blobs/uploads" in scope["path"]:
            if not self.upload_slots.try_acquire():
                self.refuse(UPLOADS_FULL, cycle)
                return
            app = self.upload_slots.holding(app)
        elif self.zero_copy and offers_zero_copy(scope):
            app = with_zero_copy(app, cycle, self.send_waiting)
        HttpToolsProtocol._start_asgi_task(self, cycle, app)

    # Responses: the transport's flow control (and a zero-copy send, through `send_waiting`) says when the client
    # is not taking what is sent.

    def pause_writing(self) -> None:
        HttpToolsProtocol.pause_writing(self)
        self.send_waiting(True)

    def resume_writing(self) -> None:
        HttpToolsProtocol.resume_writing(self)
        self.send_waiting(False)

    def send_waiting(self, waiting: bool) -> None:
        """Whether the response being sent waits for the client to take more (False: it took some)."""
        if not waiting:
            self.send_waiting_since = None
            return
        if self.lost:
            return
        now = self.loop.time()
        if self.send_waiting_since is None:
            self.start_send_clock(now)
        self.wake_at(now + self.limits.send_check_interval)  # (nothing to do when the watchdog is due sooner)

    def start_send_clock(self, now: float) -> None:
        """A wait on the client begins: what it has taken is looked at by the watchdog (so that a pause of the
        transport costs no system call), and the rate floor's clock resumes from there."""
        self.send_waiting_since = now
        self.send_progress = None
        self.send_looked_at = None

    def watch_close(self) -> None:
        """The transport is closing: the close waits until it has written what it holds, which a client that
        stopped reading would make it do for ever. Timed like a send."""
        if self.buffered() and not self.lingering:
            self.send_waiting(True)

    def buffered(self) -> int:
        """Bytes the transport holds, not yet written. asyncio's TLS transport, closed a second time (uvicorn's
        shutdown does that to a connection still closing), lets go of its TLS protocol (Python 3.11), and every
        question to it raises AttributeError from then on: 0, since its first close is the one being watched."""
        try:
            return self.transport.get_write_buffer_size()
        except AttributeError:
            return 0

    def acknowledged(self) -> int:
        """Bytes of this connection the client's side has acknowledged (TCP_INFO's bytes_acked): what tells a slow
        reader from one that stopped. Neither the transport's buffer nor writability does: with the socket's send
        buffer grown to megabytes, the kernel says it is writable only once a third of it is free, which a
        reader taking a few KiB/s needs minutes for. -1 where the socket says nothing (not TCP, or no TCP_INFO)."""
        sock = self.transport.get_extra_info("socket")
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
        except (AttributeError, OSError, ValueError):  # ValueError: uvloop's socket of a closed connection
            return -1
        if len(info) < _BYTES_ACKED.size + _BYTES_ACKED_OFFSET:
            return -1
        acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
        return acked

    # Timing: one timer per connection, set for the earliest thing to check and re-armed when it fires

    def start_head_clock(self) -> None:
        now = self.loop.time()
        self.head_clock = now
        if self.watchdog is None:  # else it is due first (a body check: at most a second late) and re-arms
            self.wake_at(now + self.header_timeout)

    def watch_body(self) -> None:
        now = self.loop.time()
        self.body_watched = True
        self.restart_body_clock(now)
        self.wake_at(now + self.limits.body_check_interval)

    def restart_body_clock(self, now: float) -> None:
        self.body_progress_at = now
        self.body_progress_bytes = self.received
        self.body_samples.clear()
        self.body_samples.append((now, self.received))

    def wake_at(self, when: float) -> None:
        if self.lingering:  # the watchdog is the end of the linger now
            return
        if self.watchdog is not None:
            if self.watchdog_at <= when:
                return  # it fires first and re-arms for what is then due
            self.watchdog.cancel()
        self.watchdog = self.loop.call_at(when, self.check)
        self.watchdog_at = when

    def check(self) -> None:
        self.watchdog = None
        if self.lingering:
            return
        now = self.loop.time()
        if self.transport.is_closing():
            # A close (keep-alive timeout, `Connection: close`, shutdown, a head timeout) waits until the transport
            # has written what it holds, below the high-water mark too (no pause then, or a resume that ended the
            # clock): timed for as long as something is left.
            if self.buffered():
                if self.send_waiting_since is None:
                    self.start_send_clock(now)
                if self.send_is_moving(now):
                    self.wake_at(now + self.limits.send_check_interval)
            return
        next_check = math.inf
        if self.head_clock is not None:
            deadline = self.head_clock + self.header_timeout
            if now >= deadline:
                self.head_timed_out()
                return
            next_check = deadline
        if self.in_body and self.body_watched:
            if not self.body_is_moving(now):
                return
            next_check = min(next_check, now + self.limits.body_check_interval)
        if self.send_waiting_since is not None:  # (the head clock, when both run, may close first: see above)
            if not self.send_is_moving(now):
                return
            next_check = min(next_check, now + self.limits.send_check_interval)
        if next_check != math.inf:
            self.wake_at(next_check)

    def head_timed_out(self) -> None:
        if self.head_budget < self.limits.max_header_bytes:  # part of a head arrived: say why it is cut
            _tally.count(HEAD_TOO_SLOW.tally_name, self.loop.time())
            self.transport.write(HEAD_TOO_SLOW.response(self.server_state.default_headers))
        else:
            _tally.count("idle connections over http.header_timeout", self.loop.time())
        self.transport.close()
        self.watch_close()  # the last response (or the 408) may still be waiting on the client

    def timeout_keep_alive_handler(self) -> None:
        HttpToolsProtocol.timeout_keep_alive_handler(self)
        self.watch_close()

    def shutdown(self) -> None:
        HttpToolsProtocol.shutdown(self)
        if self.transport.is_closing():
            self.watch_close()

    def body_is_moving(self, now: float) -> bool:
        """Whether the body arrives fast enough; else the connection is cut."""
        if self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue):
            self.restart_body_clock(now)  # the client is waiting for us
            return True
        limits = self.limits
        received = self.received
        if received != self.body_progress_bytes:
            self.body_progress_bytes = received
            self.body_progress_at = now
        elif now - self.body_progress_at >= limits.body_idle_timeout:
            self.cut("request bodies over http.body_idle_timeout", now)
            return False
        if limits.body_min_rate and below_rate(
            self.body_samples, now, received, limits.body_rate_window, limits.body_min_rate
        ):
            self.cut("request bodies under http.body_min_rate", now)
            return False
        return True

    def send_is_moving(self, now: float) -> bool:
        """Whether the client took any of the response within send_timeout; else the connection is cut."""
        assert self.send_waiting_since is not None
        acknowledged, buffered = self.acknowledged(), self.buffered()
        last = self.send_progress
        self.send_progress = (acknowledged, buffered)
        # The first look, or the client is reading (if slowly); where TCP_INFO says nothing, the transport's buffer
        # shrinking says it, less soon.
        took = last is not None and (acknowledged != last[0] or buffered < last[1])
        if last is None or took:
            self.send_waiting_since = now
        elif now - self.send_waiting_since >= self.limits.send_timeout:
            # The application's send is left waiting: the connection lost wakes it (uvicorn's flow control, or
            # the zero-copy send's poll of the transport).
            self.cut("responses not read by the client over http.send_timeout", now)
            return False
        limits = self.limits
        if limits.send_min_rate and acknowledged >= 0:
            if self.send_looked_at is not None:
                self.send_clock += now - self.send_looked_at
            self.send_looked_at = now
            slow = below_rate(
                self.send_samples, self.send_clock, acknowledged, limits.send_rate_window, limits.send_min_rate
            )
            # Judged when the client has just taken bytes: a reader that takes none is send_timeout's (a pause
            # under it is the client's right), one that takes a few now and then is this floor's.
            if took and slow:
                self.cut("responses read under http.send_min_rate", now)
                return False
        return True

    # Ending a connection

    def cut(self, why: str, now: float) -> None:
        _tally.count(why, now)
        # A reset, not a close: the kernel would otherwise keep the socket, and up to its send buffer's megabytes,
        # for minutes, probing a window the client never opens (nginx's reset_timedout_connection).
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        # Not close(): that would wait to flush a response to a client that may not be reading either.
        self.transport.abort()

    def refuse(self, refusal: Refusal, cycle: RequestResponseCycle | None = None) -> None:
        """Answer `refusal` and close, after letting the client read it (see LINGER_SECONDS). While an earlier
        response is being written, the connection is cut instead: an answer now would land inside that body."""
        _tally.count(refusal.tally_name, self.loop.time())
        current = self.cycle
        if current is not None and current is not cycle and current.response_started and not current.response_complete:
            self.transport.abort()
            return
        head_only = cycle is not None and cycle.scope["method"] == "HEAD"
        if cycle is not None:
            cycle.response_complete = True  # the parser drops the rest of its body; shutdown may close at once
        self.transport.write(refusal.response(self.server_state.default_headers, head_only=head_only))
        self.lingering = True
        self.linger_limit = self.received + LINGER_BYTES
        self.in_body = False
        self.head_clock = None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.watchdog = self.loop.call_later(LINGER_SECONDS, self.transport.abort)


def bounded_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """What to pass to uvicorn as `http`: it calls it like a protocol class, with one UploadSlots per process
    (each worker process unpickles its own copy)."""
    factory: Callable[..., BoundedHttpToolsProtocol] = functools.partial(
        BoundedHttpToolsProtocol, limits=limits, upload_slots=UploadSlots(limits.max_uploads)
    )
    return cast("type[asyncio.Protocol]", factory)
