"""A TCP proxy that adds network latency: simulates an S3 endpoint some milliseconds away in front of moto.

    .venv/bin/python bench/latency_proxy.py --listen-port 9001 --target-port 9000 --rtt-ms 10

What it simulates, for an added round-trip time of RTT ms:

- every byte from the client reaches the server RTT/2 ms after the client sent it, and every byte of the answer
  reaches the client RTT/2 ms after the server sent it: a request/response exchange on an open connection costs one
  extra RTT. The delay is a pipe's latency, not a per-chunk wait: bytes read while earlier ones are still in flight
  are not held up behind them (each chunk is due at the time it was read + RTT/2; only the order is kept). No
  bandwidth limit, no jitter, no loss.
- a new connection costs nothing more (no handshake RTT): moto closes the connection after every response
  (werkzeug answers `Connection: close`), so every S3 request, from either registry, comes on a new connection.
  Against real S3 the clients' keep-alive pools (boto3's, Go's) reuse connections, so a request costs one RTT;
  charging a handshake here would make it two. (No TLS either.)
- connections are independent: each has its own two pipes, each pipe its own timer, so N requests in flight at
  once on N connections take one RTT between them, not N. Nothing here waits on anything else: one asyncio loop,
  plain callbacks (`asyncio.Protocol`), no task per connection, a few microseconds of work per chunk.
- no back-pressure: a pipe holds what it has read until it is due (fine for S3 metadata requests and small blobs; not
  meant for streaming gigabytes).

Timer accuracy: the loop's timers fire late (epoll waits whole milliseconds, rounded up, then the wake-up), so each
pipe's timer is set `Lateness.early` sooner, adjusted as it goes. Measured on this 2-core VM, 150 sequential GETs to
moto, p50: direct 3.3-3.7 ms; through the proxy at 0 ms +0.2-0.5 ms; at 10 ms +10.7-11.0 ms; at 20 ms +21.0-21.2 ms
(the remainder is the client's and moto's own wake-ups after waiting, and noise).

It binds 127.0.0.1 only. `--rtt-ms 0` forwards without delay (its own overhead). `LatencyProxy` runs it as a child
process in its own session, as `servers.Moto` runs moto; `bench/tag_scaling.py --s3-latency` uses it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import log_tail, stop_process_group

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


async def sleep_overshoot(samples: int = 40) -> float:
    """How much later than asked `asyncio.sleep` returns here (median, seconds): `Lateness`'s starting point."""
    loop = asyncio.get_running_loop()
    late = []
    for _ in range(samples):
        started = loop.time()
        await asyncio.sleep(0.0043)
        late.append(loop.time() - started - 0.0043)
    late.sort()
    return late[len(late) // 2]


class _Pipe:
    """One direction of a proxied connection: what one end sends is written to the other end `delay` seconds after
    it arrived, in order. The pending chunks wait in a deque under one timer (`call_at` the first one's due time,
    `Lateness.early` seconds sooner)."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.out: asyncio.Transport | None = None  # the end written to; None until the upstream connection is made
        self.pending: deque[tuple[float, bytes | None]] = deque()  # (due, data); None is the EOF
        self.timer: asyncio.TimerHandle | None = None
        self.done = False  # EOF delivered, or the end written to is gone

    def feed(self, data: bytes | None) -> None:
        if self.done or (self.pending and self.pending[-1][1] is None):
            return
        c = self.connection
        if not c.delay and not self.pending and self.out is not None:
            self._write(data)
        else:
            self.pending.append((c.loop.time() + c.delay, data))
            self._schedule()

    def attach(self, out: asyncio.Transport) -> None:
        self.out = out
        self._schedule()

    def abandon(self) -> None:
        """The end written to is gone: drop what is pending."""
        self.pending.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._finish()

    def _schedule(self) -> None:
        if self.timer is None and self.pending and self.out is not None and not self.done:
            c = self.connection
            self.timer = c.loop.call_at(self.pending[0][0] - c.lateness.early, self._flush)

    def _flush(self) -> None:
        self.timer = None
        lateness = self.connection.lateness
        now = self.connection.loop.time()
        if self.pending and self.connection.delay:
            lateness.observe(now - self.pending[0][0])
        now += lateness.early
        while self.pending and self.pending[0][0] <= now and not self.done:
            self._write(self.pending.popleft()[1])
        self._schedule()

    def _write(self, data: bytes | None) -> None:
        assert self.out is not None
        if self.out.is_closing():
            self.abandon()
        elif data is None:
            if self.out.can_write_eof():
                self.out.write_eof()
            self._finish()
        else:
            self.out.write(data)

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.connection.pipe_done()


class Lateness:
    """How much sooner than a chunk's due time to ask the loop to wake up: its timers fire late (epoll waits whole
    milliseconds, rounded up, then the wake-up itself: ~0.5-1 ms). Starts from `sleep_overshoot` and follows what
    every flush sees (a small step towards zero lateness), so that on average a chunk waits `delay`, not more."""

    STEP = 0.05
    LIMIT = 0.003

    def __init__(self, early: float) -> None:
        self.early = early

    def observe(self, late: float) -> None:
        self.early = min(self.LIMIT, max(0.0, self.early + self.STEP * late))


class _Connection:
    """A client's connection to the proxy and the proxy's to the server: two pipes, closed when both are done."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, lateness: Lateness) -> None:
        self.loop = loop
        self.delay = delay
        self.lateness = lateness
        self.to_server = _Pipe(self)
        self.to_client = _Pipe(self)
        self.transports: list[asyncio.Transport] = []

    def pipe_done(self) -> None:
        if self.to_server.done and self.to_client.done:
            for transport in self.transports:
                transport.close()  # after what is buffered is written


class _End(asyncio.Protocol):
    """One end of a proxied connection: reads into `inbound`, is written to by `outbound`."""

    def __init__(self, connection: _Connection, inbound: _Pipe, outbound: _Pipe) -> None:
        self.connection = connection
        self.inbound = inbound
        self.outbound = outbound

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.connection.transports.append(transport)
        self.outbound.attach(transport)

    def data_received(self, data: bytes) -> None:
        self.inbound.feed(data)

    def eof_received(self) -> bool:
        self.inbound.feed(None)
        return True  # keep the transport open: the other direction may still have bytes to deliver

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbound.feed(None)
        self.outbound.abandon()


class Proxy:
    def __init__(self, target_host: str, target_port: int, rtt_ms: float, early: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay = rtt_ms / 2000
        self.lateness = Lateness(early)

    def client_end(self) -> _End:
        """A new client connection (the protocol factory of the listening server): connect to the server now."""
        loop = asyncio.get_running_loop()
        connection = _Connection(loop, self.delay, self.lateness)
        client = _End(connection, connection.to_server, connection.to_client)
        server = _End(connection, connection.to_client, connection.to_server)
        task = loop.create_task(loop.create_connection(lambda: server, *self.target))
        task.add_done_callback(lambda t: self._connected(t, connection))
        return client

    @staticmethod
    def _connected(task: asyncio.Task[Any], connection: _Connection) -> None:
        if task.cancelled() or task.exception() is not None:
            for transport in connection.transports:
                transport.abort()


async def serve(listen_port: int, target_host: str, target_port: int, rtt_ms: float) -> None:
    early = await sleep_overshoot() if rtt_ms else 0.0
    proxy = Proxy(target_host, target_port, rtt_ms, early)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(proxy.client_end, "127.0.0.1", listen_port, backlog=256)
    print(
        f"listening on 127.0.0.1:{listen_port} -> {target_host}:{target_port}, +{rtt_ms:g} ms RTT "
        f"(timers set {early * 1000:.2f} ms early to begin with: the loop's measured lateness)",
        flush=True,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


class LatencyProxy:
    """`latency_proxy.py` as a child process in its own session in front of `target_port`, listening on
    127.0.0.1:`port`; its output in `log_path`."""

    def __init__(self, workdir: Path, target_port: int, rtt_ms: float, port: int) -> None:
        self.target_port = target_port
        self.rtt_ms = rtt_ms
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"latency-proxy-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LatencyProxy:
        argv = [sys.executable, str(Path(__file__).resolve()), "--listen-port", str(self.port)]
        argv += ["--target-port", str(self.target_port), "--rtt-ms", str(self.rtt_ms)]
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"latency proxy exited with {self.proc.returncode}: {self.log_tail()}")
            if b"listening on" in self.log_path.read_bytes():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"latency proxy not ready after {READY_TIMEOUT:.0f}s: {self.log_tail()}")

    def log_tail(self, limit: int = 2000) -> str:
        return log_tail(self.log_path, limit)

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after STOP_TIMEOUT. Idempotent."""
        if self.proc is not None:
            stop_process_group(self.proc, STOP_TIMEOUT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen-port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, default=10.0, help="round-trip time added, ms (default 10)")
    args = parser.parse_args(argv)
    if args.rtt_ms < 0:
        parser.error("--rtt-ms must be >= 0")
    asyncio.run(serve(args.listen_port, args.target_host, args.target_port, args.rtt_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
