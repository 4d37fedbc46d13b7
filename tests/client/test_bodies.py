"""Blob bodies read straight off the connection (registry/client/bodies.py), against a scripted HTTP/1.1 server on
127.0.0.1: the bytes are exactly the body's, however the server splits its writes; a body cut short, a stalled one
and a reset connection raise httpx's own errors; anything but a plain large body goes through httpx unchanged; and
a connection read past h11 is never reused; no body is decoded, and blob requests ask for none. The client's
connections send with room for a chunk queued, and go through a proxy the environment names."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from registry.client import bodies
from registry.client.api import RegistryClient
from registry.client.bodies import blob_body
from registry.client.errors import ClientError
from registry.client.transport import SEND_BUFFER, Transport
from tests.client.test_faults import self_signed_certificate

MIB = 1024 * 1024
BODY = hashlib.sha256(b"seed").digest() * (3 * MIB // 32 + 7)  # 3 MiB and a bit: not a multiple of any read
Script = Callable[[asyncio.StreamWriter, int], Awaitable[None]]


class ScriptedServer:
    """Answers every request on a connection with `script(writer, n)` (n counts requests on that connection); records
    how many connections were opened and how many requests each carried."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[int] = []
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, host, 0, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.connections)
        self.connections.append(0)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                self.connections[index] += 1
                self.heads.append(head)
                await self.script(writer, self.connections[index])
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def head(length: int, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


async def in_pieces(writer: asyncio.StreamWriter, data: bytes, sizes: tuple[int, ...] = (1, 4095, 70_000, MIB)) -> None:
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        writer.write(data[position : position + size])
        await writer.drain()
        position += size
        turn += 1


@contextlib.asynccontextmanager
async def serving(script: Script, **start: object) -> AsyncIterator[ScriptedServer]:
    server = await ScriptedServer(script).start(**start)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.stop()


async def read_all(client: httpx.AsyncClient, url: str) -> bytes:
    async with client.stream("GET", url) as response:
        return b"".join([chunk async for chunk in blob_body(response)])


async def test_the_body_is_exact_however_the_server_splits_it_and_the_connection_is_not_reused() -> None:
    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(len(BODY)) + BODY[:100_000])  # some of the body arrives with the headers
        await in_pieces(writer, BODY[100_000:])

    async with serving(script) as server, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{server.port}/blob"
        assert await read_all(client, url) == BODY
        assert await read_all(client, url) == BODY
        assert server.connections == [1, 1]  # h11 never saw the first body end: a new connection for the second


async def test_a_body_cut_short_stalled_or_reset_raises_httpx_errors_after_a_valid_prefix() -> None:
    async def cut(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(len(BODY)) + BODY[: 2 * MIB])
        await writer.drain()
        writer.close()

    async def stall(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(len(BODY)) + BODY[: 2 * MIB])
        await writer.drain()
        await asyncio.sleep(5)

    async def reset(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(len(BODY)) + BODY[: 2 * MIB])
        await writer.drain()
        writer.transport.abort()

    cases: list[tuple[Script, type[httpx.TransportError]]] = [
        (cut, httpx.RemoteProtocolError),
        (stall, httpx.ReadTimeout),
        (reset, httpx.TransportError),
    ]
    for script, error in cases:
        received = bytearray()
        async with serving(script) as server, httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.5)) as client:
            with pytest.raises(error):
                async with client.stream("GET", f"http://127.0.0.1:{server.port}/blob") as response:
                    async for chunk in blob_body(response):
                        received += chunk
        assert 0 < len(received) <= 2 * MIB and BODY.startswith(received), script.__name__


async def test_small_and_chunked_bodies_go_through_httpx_and_no_body_is_decoded() -> None:
    small = BODY[: bodies.RAW_MINIMUM - 1]
    noise = random.Random(1).randbytes(2 * MIB)
    packed = gzip.compress(noise)  # a stored .tar.gz that its storage serves with Content-Encoding: gzip

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        if n <= 2:  # two small answers on one kept-alive connection
            writer.write(head(len(small)) + small)
        elif n == 3:  # chunked, no length
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (BODY[:MIB], BODY[MIB:]):
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            writer.write(b"0\r\n\r\n")
        elif n == 4:  # small and encoded
            writer.write(head(len(packed[:1000]), "Content-Encoding: gzip\r\n") + packed[:1000])
        else:  # large and encoded
            writer.write(head(len(packed), "Content-Encoding: gzip\r\n") + packed)
        await writer.drain()

    async with serving(script) as server, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{server.port}/blob"
        assert await read_all(client, url) == small
        assert await read_all(client, url) == small
        assert await read_all(client, url) == BODY
        assert await read_all(client, url) == packed[:1000]  # the bytes as sent: a digest covers those
        assert await read_all(client, url) == packed
        assert server.connections == [5]  # each body but the last was read to its end by h11: the connection stayed


async def test_an_answer_without_a_body_is_not_read_past(tmp_path: Path) -> None:
    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2000000\r\n\r\n" if n == 1 else head(2) + b"{}")
        await writer.drain()

    async with serving(script) as server, httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=1.0)) as client:
        url = f"http://127.0.0.1:{server.port}/blob"
        assert await read_all(client, url) == b""
        assert await read_all(client, url) == b"{}"


class Streamed(httpx.AsyncByteStream):
    """A mock response's body that is streamed, as a real one is (`content=` would be read at once)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


async def test_blob_requests_ask_for_no_encoding_and_configs_are_kept_as_sent() -> None:
    config = gzip.compress(b'{"architecture": "amd64"}')  # stored compressed, served with Content-Encoding: gzip
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, stream=Streamed(config))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    registry = RegistryClient(Transport("r.example", client=client))
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    async with registry.open_blob("team/app", digest):
        pass
    async with registry.open_blob("team/app", digest, offset=1):
        pass
    assert await registry.get_blob_bytes("team/app", digest, len(config)) == config
    assert seen == ["identity"] * 3


async def test_a_proxy_in_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with serving(script) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
        transport = Transport("registry.example", attempts=1)
        try:
            with pytest.raises(ClientError):
                await transport.request("GET", "/v2/")
        finally:
            await transport.aclose()
        assert proxy.heads and proxy.heads[0].startswith(b"CONNECT registry.example:443 ")


async def test_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(len(BODY)))
        await in_pieces(writer, BODY)

    trusted = ssl.create_default_context(cafile=str(cert))
    async with serving(script, tls=context) as server, httpx.AsyncClient(verify=trusted) as client:
        assert await read_all(client, f"https://127.0.0.1:{server.port}/blob") == BODY


async def test_the_clients_connections_have_room_for_a_chunk_queued_behind_the_one_being_sent() -> None:
    """With the kernel's default send buffer the socket ran dry between the 1 MiB chunks of a push (see
    transport.SEND_BUFFER)."""

    async def script(writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(head(2) + b"{}")
        await writer.drain()

    async with serving(script) as server:
        transport = Transport(f"127.0.0.1:{server.port}")
        try:
            response = await transport.request("GET", "/v2/", stream=True)
            connection = response.extensions["network_stream"].get_extra_info("socket")
            assert connection.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 2 * SEND_BUFFER
            await response.aclose()
        finally:
            await transport.aclose()
