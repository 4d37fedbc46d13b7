"""A TCP proxy on 127.0.0.1 (asyncio, in the test's loop) that cuts one connection once, after a given number of
bytes went from the client to the server: a connection dropped in the middle of a layer upload."""

from __future__ import annotations

import asyncio
import contextlib

BUFFER = 256 * 1024


class CuttingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after: int | None = None
        self.cuts = 0
        self.port = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            return
        writers = (client_writer, up_writer)
        upstream = asyncio.create_task(self._pump(client_reader, up_writer, writers, count=True))
        downstream = asyncio.create_task(self._pump(up_reader, client_writer, writers, count=False))
        self.tasks.update((upstream, downstream))
        try:
            await asyncio.gather(upstream, downstream, return_exceptions=True)
        finally:
            self.tasks.difference_update((upstream, downstream))
            for w in writers:
                w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        count: bool,
    ) -> None:
        try:
            while data := await reader.read(BUFFER):
                if count and self.cut_after is not None:
                    if len(data) >= self.cut_after:
                        writer.write(data[: self.cut_after])
                        self.cut_after = None
                        self.cuts += 1
                        for w in both:
                            w.transport.abort()
                        return
                    self.cut_after -= len(data)
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()
        except (ConnectionError, OSError):
            for w in both:
                w.transport.abort()
