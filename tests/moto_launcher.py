"""moto's S3 server, with its conditional writes decided atomically, as S3 decides them.

moto checks `If-None-Match`/`If-Match` and then writes: two steps that its threaded server interleaves between
concurrent requests, so two exclusive writes of one key could both succeed (the conformance test of exclusive copies
saw four winners out of six, about one run in six). One lock around every object write that carries a condition
(PutObject and CompleteMultipartUpload) makes the check and the write one step; other requests run as before.

Run as `python tests/moto_launcher.py -H HOST -p PORT` (moto_server's own arguments).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

from moto.s3.responses import S3Response
from moto.server import main

_conditional_writes = threading.Lock()
CONDITIONS = ("If-None-Match", "If-Match")


def _atomic_when_conditional(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def write(self: S3Response, *args: Any, **kwargs: Any) -> Any:
        if any(self.headers.get(name) for name in CONDITIONS):
            with _conditional_writes:
                return method(self, *args, **kwargs)
        return method(self, *args, **kwargs)

    return write


S3Response.put_object = _atomic_when_conditional(S3Response.put_object)  # type: ignore[method-assign]
S3Response._key_response_post = _atomic_when_conditional(S3Response._key_response_post)  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    main()
