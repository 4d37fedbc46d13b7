"""moto's S3 server, each request atomic, as S3's are.

moto's in-memory S3 is not safe for concurrent requests: it checks `If-None-Match`/`If-Match` and then writes, in two
steps another request can come between (the conformance test of exclusive copies saw four winners out of six), and its
dictionaries change under a listing or a multipart copy running beside a delete (KeyError, answered 500: seen in the
GC race test on S3, where a blob commit's UploadPartCopy failed through all its retries). One lock around every
request (the application call and its response body) makes each one a single step. moto's handlers are Python under
the GIL anyway: serialising them costs little; receiving and sending stay concurrent (waitress, below).

And two costs of moto 5.x taken out of every request, found with py-spy on the server during the suite's S3 tests
(moto used a quarter of the suite's CPU): what they compute does not change, only how often.
- Routing each request lists moto's package directory and stats each of its ~170 entries, under the dispatcher's
  global lock (`list_of_moto_modules`, 28% of moto's samples): the list is read once.
- Listing objects parses each key's stored ISO timestamp again with dateutil before formatting it
  (`parse_to_aware_datetime`, 7% more): each distinct timestamp is parsed once.

moto's application is served by waitress instead of werkzeug's development server, which closes the connection after
every response ("Connection: close", by design): each S3 request of the tests and of the servers they start cost a
new TCP connection and a new server thread (py-spy over the suite: ~70 CPU seconds of connection set-up in the test
processes alone). waitress keeps connections alive and serves them from a fixed pool of threads. The access log keeps
werkzeug's line format (tests/e2e/test_s3.py counts presigned GETs in it).

Run as `python tests/moto_launcher.py -H HOST -p PORT`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import moto.backends
import moto.core.serialize
import moto.s3.models
import moto.s3.responses
import waitress
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

THREADS = 16  # connections read and written at once; the S3 backend under test keeps up to 64 connections

_one_request_at_a_time = threading.Lock()


def _atomic(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """The application called, and its response body gathered, under one lock."""

    def atomic(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with _one_request_at_a_time:
            result = app(environ, start_response)
            try:
                return list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    return atomic


_MODULES = tuple(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: _MODULES

_serialize = vars(moto.core.serialize)  # botocore's function, imported there
_parse_to_aware_datetime = _serialize["parse_to_aware_datetime"]


@functools.lru_cache(maxsize=65536)
def _parse_text_once(value: str) -> Any:
    return _parse_to_aware_datetime(value)


def _parse_timestamp(value: Any) -> Any:
    return _parse_text_once(value) if isinstance(value, str) else _parse_to_aware_datetime(value)


_serialize["parse_to_aware_datetime"] = _parse_timestamp


# moto lists every multipart upload as initiated on 2010-11-10 (a constant in its ListMultipartUploads answer), so
# GC's purge of abandoned multipart uploads (StorageBackend.purge_abandoned_writes) took every upload still without a
# part for sixteen years old and aborted it: a blob commit's UploadPartCopy then failed through all its retries
# (KeyError, 500; CI's S3 GC race, 2026-12-07). Each upload's real start is kept, and listed.
_FAKE_INITIATED = b"<Initiated>2010-11-10T20:48:33.000Z</Initiated>"
_started: dict[str, str] = {}
_multipart_init = moto.s3.models.FakeMultipart.__init__


def _remember_start(self: Any, *args: Any, **kwargs: Any) -> None:
    _multipart_init(self, *args, **kwargs)
    _started[self.id] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


moto.s3.models.FakeMultipart.__init__ = _remember_start  # type: ignore[method-assign]
_list_uploads = moto.s3.responses.S3Response.list_multipart_uploads


def _listed_with_their_start(self: Any) -> Any:
    status, headers, body = _list_uploads(self)
    raw = body.encode() if isinstance(body, str) else body
    pieces = raw.split(_FAKE_INITIATED)
    if len(pieces) > 1:
        ids = [piece.rsplit(b"<UploadId>", 1)[-1].split(b"</UploadId>", 1)[0].decode() for piece in pieces[:-1]]
        stamps = [f"<Initiated>{_started.get(i, '2010-11-10T20:48:33.000Z')}</Initiated>".encode() for i in ids]
        raw = b"".join(piece + stamp for piece, stamp in zip(pieces, [*stamps, b""], strict=True))
        body = raw.decode() if isinstance(body, str) else raw
    return status, headers, body


moto.s3.responses.S3Response.list_multipart_uploads = _listed_with_their_start  # type: ignore[method-assign]


def _access_log(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """A line per request on stderr, as werkzeug writes it: `HOST - - [DATE] "METHOD PATH?QUERY PROTOCOL" STATUS -`."""

    def logged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            query = environ.get("QUERY_STRING", "")
            target = environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
            line = (
                f"{environ.get('REMOTE_ADDR', '-')} - - [{time.strftime('%d/%b/%Y %H:%M:%S')}] "
                f'"{environ.get("REQUEST_METHOD")} {target} {environ.get("SERVER_PROTOCOL")}" {status.split()[0]} -\n'
            )
            sys.stderr.write(line)
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return logged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))  # what moto_server's own main sets (URLs it generates)
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # type: ignore[attr-defined]  # as moto_server's main sets it
    waitress.serve(
        _access_log(_atomic(app)),
        host=args.host,
        port=args.port,
        threads=THREADS,
        connection_limit=1000,
        backlog=1024,
        asyncore_use_poll=True,  # select() stops at descriptor 1024
        max_request_body_size=1 << 34,
        channel_timeout=300,
        ident="moto",
        _quiet=True,
    )


if __name__ == "__main__":
    main()
