"""A hostile registry against the client (and the proxy's upstream client, which shares its transport): answers
that never end, or that decode to far more than they weigh, are refused at a bound instead of filling memory, a
blob is read no further than its size, and the registry's words reach the terminal with control characters shown.
The registry is a real HTTP server on 127.0.0.1 sending crafted answers; each test failed before its fix (read
whole, decoded whole, read for ever, or printed as sent)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from registry.client.api import RegistryClient
from registry.client.bodies import MAX_RESPONSE
from registry.client.errors import ClientError
from registry.client.mirror import warm_image
from registry.client.progress import QuietReporter
from registry.client.reference import parse_reference
from registry.client.transport import MAX_TOKEN_RESPONSE, Transport
from tests.client.cli_runner import run_cli

MIB = 1024 * 1024
Answer = Callable[[BaseHTTPRequestHandler], None]


def endless(handler: BaseHTTPRequestHandler) -> None:
    """A chunked body that never ends (until the client hangs up)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"\0" * MIB
    try:
        while True:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except OSError:
        return


def fixed(body: bytes, headers: dict[str, str] | None = None, status: int = 200) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            try:
                handler.wfile.write(body)
            except OSError:
                return

    return answer


class CraftedRegistry:
    def __init__(self) -> None:
        self.routes: dict[str, Answer] = {}
        self.accept_encodings: list[str | None] = []
        routes, seen = self.routes, self.accept_encodings

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen.append(self.headers.get("Accept-Encoding"))
                answer = routes.get(self.path.split("?", 1)[0])
                if answer is None:
                    fixed(b"{}", status=404)(self)
                else:
                    answer(self)

            do_HEAD = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client hanging up on an endless answer is what the tests expect

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def crafted() -> Iterator[CraftedRegistry]:
    registry = CraftedRegistry()
    yield registry
    registry.close()


def client(registry: CraftedRegistry) -> RegistryClient:
    return RegistryClient(Transport(registry.address, attempts=1))


def manifest_with_layer(layer_digest: str, size: int) -> bytes:
    config = b"{}"
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": size}],
        }
    ).encode()


async def within(seconds: float, work: asyncio.Future[object] | object) -> object:
    return await asyncio.wait_for(work, seconds)  # type: ignore[arg-type]


async def test_an_endless_manifest_is_refused_at_the_bound(crafted: CraftedRegistry) -> None:
    crafted.routes["/v2/team/app/manifests/v1"] = endless
    async with client(crafted) as registry:
        with pytest.raises(ClientError, match=f"over {MAX_RESPONSE} bytes"):
            await within(60, registry.get_manifest("team/app", "v1"))


async def test_an_endless_token_answer_is_refused_at_the_bound(crafted: CraftedRegistry) -> None:
    """The proxy's upstream client asks token servers the upstream names: one that never stops is cut off."""
    challenge = f'Bearer realm="http://{crafted.address}/token",service="crafted"'
    crafted.routes["/v2/team/app/manifests/v1"] = fixed(b"{}", {"WWW-Authenticate": challenge}, status=401)
    crafted.routes["/token"] = endless
    async with client(crafted) as registry:
        with pytest.raises(ClientError, match=f"over {MAX_TOKEN_RESPONSE} bytes"):
            await within(60, registry.get_manifest("team/app", "v1"))


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compression_bomb_is_decoded_no_further_than_the_bound(crafted: CraftedRegistry, coding: str) -> None:
    inflated = b"\0" * (MAX_RESPONSE + MIB)
    bomb = gzip.compress(inflated, 9) if coding == "gzip" else __import__("zlib").compress(inflated, 9)
    crafted.routes["/v2/team/app/manifests/v1"] = fixed(bomb, {"Content-Encoding": coding})
    async with client(crafted) as registry:
        with pytest.raises(ClientError, match="once decoded"):
            await within(60, registry.get_manifest("team/app", "v1"))


async def test_layered_codings_are_refused(crafted: CraftedRegistry) -> None:
    body = gzip.compress(gzip.compress(b'{"schemaVersion": 2}'))
    crafted.routes["/v2/team/app/manifests/v1"] = fixed(body, {"Content-Encoding": "gzip, gzip"})
    async with client(crafted) as registry:
        with pytest.raises(ClientError, match="does not read"):
            await registry.get_manifest("team/app", "v1")


async def test_an_honest_compressed_answer_is_read_and_identity_is_asked_for(crafted: CraftedRegistry) -> None:
    """A registry that compresses anyway (a misconfigured front proxy) still works: one coding, decoded."""
    data = manifest_with_layer("sha256:" + "a" * 64, 10)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    headers = {
        "Content-Encoding": "gzip",
        "Content-Type": "application/vnd.oci.image.manifest.v1+json",
        "Docker-Content-Digest": digest,
    }
    crafted.routes["/v2/team/app/manifests/v1"] = fixed(gzip.compress(data), headers)
    async with client(crafted) as registry:
        manifest = await registry.get_manifest("team/app", "v1")
    assert manifest.digest == digest
    assert manifest.data == data
    assert crafted.accept_encodings == ["identity"]


async def test_a_mirrored_blob_is_read_no_further_than_its_size(crafted: CraftedRegistry) -> None:
    layer_digest = "sha256:" + hashlib.sha256(b"0123456789").hexdigest()
    data = manifest_with_layer(layer_digest, 10)
    crafted.routes["/v2/team/app/manifests/v1"] = fixed(
        data, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    )
    crafted.routes[f"/v2/team/app/blobs/{layer_digest}"] = endless
    crafted.routes["/v2/team/app/blobs/sha256:" + hashlib.sha256(b"{}").hexdigest()] = fixed(b"{}")
    ref = parse_reference(f"{crafted.address}/team/app:v1")
    async with client(crafted) as registry:
        with pytest.raises(ClientError, match="more bytes than its size"):
            await within(30, warm_image(ref, registry, QuietReporter(), platform=None))


async def test_a_config_is_read_no_further_than_its_size(crafted: CraftedRegistry) -> None:
    digest = "sha256:" + hashlib.sha256(b"{}").hexdigest()
    crafted.routes[f"/v2/team/app/blobs/{digest}"] = endless
    async with client(crafted) as registry:
        with pytest.raises(ClientError, match="more bytes than its size"):
            await within(30, registry.get_blob_bytes("team/app", digest, 2))


async def test_an_endless_error_answer_for_a_blob_is_cut(crafted: CraftedRegistry) -> None:
    def endless_error(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(500)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            while True:
                handler.wfile.write(b"100000\r\n" + b"x" * MIB + b"\r\n")
        except OSError:
            return

    digest = "sha256:" + "b" * 64
    crafted.routes[f"/v2/team/app/blobs/{digest}"] = endless_error
    async with client(crafted) as registry:
        with pytest.raises(ClientError, match=f"over {MAX_RESPONSE} bytes"):
            await within(60, registry.get_blob_bytes("team/app", digest, 10))


def test_a_registrys_words_reach_the_terminal_with_control_characters_shown(
    crafted: CraftedRegistry, tmp_path: Path
) -> None:
    """Tag names and error messages are the registry's: an escape sequence in them is printed as text (a title
    set, a line hidden, a name reversed by a bidi override), never sent to the terminal as it is."""
    forged_line = "v2\nmoorage: login succeeded"
    odd = ["looks\\nlike", "zero\u200bwidth", "lone\ud800", "shaping\u206a", "\u3164filler"]
    tags = {
        "name": "team/app",
        "tags": ["v1", "evil\x1b]0;owned\x07", "x\x1b[2K\rfine", "\u202eexe.gpj", forged_line, *odd],
    }
    crafted.routes["/v2/team/app/tags/list"] = fixed(json.dumps(tags).encode(), {"Content-Type": "application/json"})
    refusal = {"errors": [{"code": "DENIED", "message": "go away\x1b[1A\x1b[2Kmoorage: all good", "detail": None}]}
    crafted.routes["/v2/team/other/tags/list"] = fixed(json.dumps(refusal).encode(), status=403)
    listed = run_cli("tags", f"{crafted.address}/team/app", docker_config=tmp_path).ok()
    assert listed.stdout.splitlines() == [
        "v1",
        "evil\\x1b]0;owned\\x07",
        "x\\x1b[2K\\rfine",
        "\\u202eexe.gpj",
        "v2\\nmoorage: login succeeded",  # one tag, one line: no line of the registry's making
        "looks\\\\nlike",  # a backslash shown as an escape: never mistaken for one
        "zero\\u200bwidth",
        "lone\\ud800",  # printed, not a crash (no terminal encoding takes it)
        "shaping\\u206a",  # any format character, by category
        "\\u3164filler",  # a look-alike filler
    ]
    refused = run_cli("tags", f"{crafted.address}/team/other", docker_config=tmp_path).failed()
    assert "\x1b" not in refused.stderr and "go away\\x1b[1A\\x1b[2Kmoorage: all good" in refused.stderr
    as_json = run_cli("tags", "--json", f"{crafted.address}/team/app", docker_config=tmp_path).ok()
    assert json.loads(as_json.stdout)["tags"] == tags["tags"]  # JSON carries them exactly, escaped by JSON itself
    assert "\x1b" not in as_json.stdout


async def test_a_head_with_an_unreadable_encoding_and_no_body_is_read(crafted: CraftedRegistry) -> None:
    """A HEAD has no body to decode, whatever Content-Encoding it names."""
    digest = "sha256:" + "c" * 64
    headers = {"Content-Encoding": "br", "Docker-Content-Digest": digest}
    crafted.routes["/v2/team/app/manifests/v1"] = fixed(b"", headers)
    async with client(crafted) as registry:
        assert await registry.manifest_digest("team/app", "v1") == digest


async def test_a_digest_header_that_is_no_exact_digest_never_reaches_a_url(crafted: CraftedRegistry) -> None:
    """`moorage rm` resolves a tag with a HEAD, then DELETEs by the digest: a header holding a path went into the
    DELETE's URL. Only an exact digest is taken; else the manifest's own is computed."""
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
    headers = {"Docker-Content-Digest": "sha256:x/../../victim/manifests/latest"}
    crafted.routes["/v2/team/app/manifests/v1"] = fixed(body, headers)
    async with client(crafted) as registry:
        with pytest.raises(ClientError):  # the GET's header does not match the bytes: refused, not followed
            await registry.manifest_digest("team/app", "v1")
    honest = {"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}
    crafted.routes["/v2/team/app/manifests/v2"] = fixed(body, {**honest, "Content-Encoding": "identity"})
    async with client(crafted) as registry:
        assert await registry.manifest_digest("team/app", "v2") == honest["Docker-Content-Digest"]
