"""Zero-copy sends (the ASGI "Zero Copy Send" extension), the application's side: blob downloads use it when the
server offers it (registry/sendfile.py serves it).

A response that has a file sends `http.response.start` (with a Content-Length), then

    {"type": "http.response.zerocopysend", "file": <open file>, "offset": int, "count": int, "more_body": False}

and the server hands the range to the kernel, leaving in the message's "sent" how many bytes went (a Moorage
addition: fewer than `count` when the client went away). Where it is not offered (TLS, another ASGI server, the
test client) the application streams the same bytes itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, BinaryIO

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

ZERO_COPY_SEND = "http.response.zerocopysend"


def zero_copy_offered(scope: Scope) -> bool:
    extensions: Mapping[str, Any] | None = scope.get("extensions")
    return extensions is not None and ZERO_COPY_SEND in extensions


class ZeroCopyResponse(Response):
    """`count` bytes of `file` from `offset`, sent with the zero-copy extension (the caller checked it is offered).
    The response owns the file and closes it."""

    def __init__(
        self,
        file: BinaryIO,
        offset: int,
        count: int,
        status_code: int,
        headers: Mapping[str, str],
        media_type: str,
    ) -> None:
        super().__init__(
            status_code=status_code, headers={**headers, "Content-Length": str(count)}, media_type=media_type
        )
        self.file = file
        self.offset = offset
        self.count = count
        # Closed when the response goes unsent too (the request cancelled between the handler and the send).
        self._close_file = weakref.finalize(self, file.close)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send(
                {
                    "type": ZERO_COPY_SEND,
                    "file": self.file,
                    "offset": self.offset,
                    "count": self.count,
                    "more_body": False,
                }
            )
        finally:
            self._close_file()
