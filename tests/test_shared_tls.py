"""The tests' httpx clients share one default SSL context (tests/shared_tls.py) and verify as before."""

from __future__ import annotations

import ssl

import httpx

from tests import shared_tls


def _context(client: httpx.Client | httpx.AsyncClient) -> ssl.SSLContext:
    transport = client._transport
    assert isinstance(transport, httpx.HTTPTransport | httpx.AsyncHTTPTransport)
    context = transport._pool._ssl_context
    assert context is not None
    return context


async def test_default_clients_share_one_verifying_context() -> None:
    shared_tls.install()  # conftest did; again is harmless
    with httpx.Client() as first, httpx.Client(timeout=3.0) as second:
        async with httpx.AsyncClient() as third:
            shared = _context(first)
            assert _context(second) is shared and _context(third) is shared
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    assert shared.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded


def test_clients_with_their_own_verification_keep_it() -> None:
    own = ssl.create_default_context()
    with httpx.Client(verify=own) as mine, httpx.Client(verify=False) as lax, httpx.Client() as default:
        assert _context(mine) is own
        assert _context(lax) is not _context(default)
        assert _context(lax).verify_mode == ssl.CERT_NONE
