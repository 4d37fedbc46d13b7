"""A TCP proxy on 127.0.0.1 that a test can switch between "up", "down" and "blackhole", for storage outages.

Point a client (moorage's `storage.s3.endpoint_url`) at `proxy.url` instead of the real server:

- up: every connection is forwarded to the upstream address, both ways;
- down: the store is stopped. Every open connection is cut (pooled keep-alive connections included, so nothing
  sneaks through on a connection opened earlier) and new connections are reset as soon as they arrive;
- blackhole: the store hangs. Open connections are cut, new ones are accepted and then never answered (what a
  dead host behind a load balancer looks like): only the client's read timeout ends the wait.

`down_after(n)` takes the store down once n more bytes went from clients to the upstream: in the middle of a transfer.
One thread accepts, one thread per connection pumps bytes; every thread is a daemon and every error in them is
contained (a proxy failure shows up as a storage outage in the test, never as an exception in a thread).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from types import TracebackType
from typing import Literal

Mode = Literal["up", "down", "blackhole"]
BUFFER = 256 * 1024
ACCEPT_POLL = 0.1


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN (SO_LINGER with a zero timeout)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Pipe:
    """One client connection and its upstream connection; `cut()` may be called from any thread."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.cut_requested = threading.Event()

    def cut(self) -> None:
        # shutdown() wakes the pump thread (its select sees EOF); only the pump thread closes the sockets.
        self.cut_requested.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def pump(self) -> None:
        peers = {self.client: self.upstream, self.upstream: self.client}
        open_reads = {self.client, self.upstream}
        try:
            with selectors.DefaultSelector() as selector:
                for peer in open_reads:
                    selector.register(peer, selectors.EVENT_READ, data=peer)
                while open_reads and not self.cut_requested.is_set():
                    for key, _ in selector.select(timeout=1.0):
                        sock: socket.socket = key.data
                        data = sock.recv(BUFFER)
                        if self.cut_requested.is_set():
                            break
                        if not data:
                            # Half-close: pass the EOF on, keep the other direction running.
                            selector.unregister(sock)
                            open_reads.discard(sock)
                            with contextlib.suppress(OSError):
                                peers[sock].shutdown(socket.SHUT_WR)
                            continue
                        peers[sock].sendall(data)
                        if sock is self.client:
                            self.proxy._count_up(len(data))
        except (OSError, ValueError):
            pass  # a reset or a cut: the pipe is over
        finally:
            self.proxy._forget(self)
            if self.cut_requested.is_set():
                _reset(self.client)
            else:
                with contextlib.suppress(OSError):
                    self.client.close()
            with contextlib.suppress(OSError):
                self.upstream.close()


class TcpProxy:
    """Listens on 127.0.0.1:`port` and forwards to `upstream_host:upstream_port` while up. Use as a context manager."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(ACCEPT_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._mode: Mode = "up"
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._held: list[socket.socket] = []
        self._bytes_up = 0
        self._connections = 0
        self._down_at: int | None = None
        self.went_down = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._bytes_up

    @property
    def connections(self) -> int:
        """How many connections clients have opened to the proxy (whatever happened to them)."""
        with self._lock:
            return self._connections

    def up(self) -> None:
        self._set_mode("up")

    def down(self) -> None:
        self._set_mode("down")

    def blackhole(self) -> None:
        self._set_mode("blackhole")

    def down_after(self, byte_count: int) -> None:
        """Go down as soon as `byte_count` more bytes have gone from clients to the upstream (`went_down` is set then).

        The switch happens on the forwarding thread, right after the bytes that cross the line: the upstream
        request under way at that moment is cut in the middle, as when a server dies.
        """
        with self._lock:
            self.went_down.clear()
            self._down_at = self._bytes_up + byte_count

    def _set_mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
            self._down_at = None
            if mode == "up":
                self.went_down.clear()
            else:
                self.went_down.set()
            pipes = list(self._pipes) if mode != "up" else []
            held, self._held = self._held, []
        for pipe in pipes:
            pipe.cut()
        for sock in held:
            _reset(sock)

    def _count_up(self, n: int) -> None:
        with self._lock:
            self._bytes_up += n
            trigger = self._down_at is not None and self._bytes_up >= self._down_at
        if trigger:
            self._set_mode("down")

    def _forget(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            try:
                self._handle(client)
            except OSError:
                _reset(client)

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(None)
        with self._lock:
            self._connections += 1
            mode = self._mode
            if mode == "blackhole":
                self._held.append(client)
                return
        if mode == "down":
            _reset(client)
            return
        upstream = socket.create_connection(self.upstream, timeout=5.0)
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = _Pipe(self, client, upstream)
        with self._lock:
            if self._mode != "up":  # switched while we were connecting
                upstream.close()
                _reset(client)
                return
            self._pipes.add(pipe)
        threading.Thread(target=pipe.pump, name=f"tcp-proxy-pipe-{self.port}", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5.0)  # the accept loop notices within ACCEPT_POLL
        with contextlib.suppress(OSError):
            self._listener.close()
        self._set_mode("down")

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
