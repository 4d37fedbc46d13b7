"""moto's S3 server, with its conditional writes decided atomically, as S3 decides them.

moto checks `If-None-Match`/`If-Match` and then writes: two steps that its threaded server interleaves between
concurrent requests, so two exclusive writes of one key could both succeed (the conformance test of exclusive copies
saw four winners out of six, about one run in six). One lock around every object write that carries a condition
(PutObject and CompleteMultipartUpload) makes the check and the write one step; other requests run as before.

And two costs of moto 5.x taken out of every request, found with py-spy on the server during the suite's S3 tests
(moto used a quarter of the suite's CPU): what they compute does not change, only how often.
- Routing each request lists moto's package directory and stats each of its ~170 entries, under the dispatcher's
  global lock (`list_of_moto_modules`, 28% of moto's samples): the list is read once.
- Listing objects parses each key's stored ISO timestamp again with dateutil before formatting it
  (`parse_to_aware_datetime`, 7% more): each distinct timestamp is parsed once.

Run as `python tests/moto_launcher.py -H HOST -p PORT` (moto_server's own arguments).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

import moto.backends
import moto.core.serialize
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

if __name__ == "__main__":
    sys.argv[0] = "moto_server"
    main()
