"""One SSL context for every httpx client of a test process that asks for httpx's default verification.

httpx builds a new SSL context for each transport, and with it parses the whole CA bundle (tens of milliseconds of
CPU), even for a client that only ever speaks plain HTTP to 127.0.0.1. The tests create thousands of clients: py-spy
over the whole suite put `ssl.create_default_context` at 4% of its samples, ~100 CPU seconds. A shared context is
httpx's own advice for many clients ("SSL configuration" in its docs); verification is the same, the CA bundle read
once. Clients given their own context or `verify=False` keep theirs; the servers the tests start are not touched.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from typing import Any

import httpx

_installed = False


def _sharing(init: Callable[..., None], context: Callable[[], ssl.SSLContext]) -> Callable[..., None]:
    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, verify: Any = True, trust_env: bool = True, **kwargs: Any) -> None:
        if verify is True and trust_env:
            verify = context()
        init(self, *args, verify=verify, trust_env=trust_env, **kwargs)

    return wrapper


def install() -> None:
    """Make httpx's transports share one default context (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    shared = functools.cache(httpx.create_ssl_context)  # built at first use, with the environment of that moment
    for transport in (httpx.HTTPTransport, httpx.AsyncHTTPTransport):
        transport.__init__ = _sharing(transport.__init__, shared)  # type: ignore[method-assign]
