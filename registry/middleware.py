"""Pure ASGI middleware: request ids, the access log and HTTP metrics in one pass.

Both sit on the GET-manifest hot path, so they do the least they can: no Request objects, no extra tasks.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from registry.metrics import UNMATCHED_ROUTE, Metrics
from registry.zero_copy import ZERO_COPY_SEND

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}\Z")
_UPLOAD_METHODS = frozenset({"POST", "PATCH", "PUT"})
_BODY_MESSAGES = frozenset({"http.response.body", ZERO_COPY_SEND})
# Unique across processes and restarts without a uuid4 per request: a random prefix per process, then a counter.
_REQUEST_ID_PREFIX = secrets.token_hex(6)
_request_numbers = itertools.count(1)


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one."""
    for key, value in scope["headers"]:
        if key == REQUEST_ID_HEADER:
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return f"{_REQUEST_ID_PREFIX}-{next(_request_numbers):x}"


def _user_agent(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"user-agent":
            agent: str = value.decode("latin-1")
            return agent[:200]
    return ""


class RequestObserver:
    """Gives each request an id (echoed in X-Request-ID), then logs one line and updates the HTTP metrics.

    `headers` are added to every response too (the API version header: one layer instead of two).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None,
        access_log: logging.Logger | None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self.headers = headers or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_of(scope)
        scope["request_id"] = request_id
        extra_headers = [*self.headers, (REQUEST_ID_HEADER, request_id.encode())]
        method = scope["method"]
        status = 0
        received = 0
        sent = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        observed = False

        def observe() -> None:
            # Once per request: when the response's last byte is handed to the server (work the handler does
            # after that, e.g. background tasks, is not the client's wait), or when the app returns without it.
            nonlocal observed, status
            if observed:
                return
            observed = True
            # No response started: the exception goes on to the outermost handler, which answers 500.
            status = status or 500
            duration = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", UNMATCHED_ROUTE)
            if self.metrics is not None:
                self.metrics.observe_request(method, template, status, duration, received, sent)
            if self.access_log is not None:
                self._log(scope, request_id, template, status, duration, received, sent)

        async def send_observed(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *extra_headers]
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)
            if kind == ZERO_COPY_SEND:
                sent += message.get("sent", message.get("count") or 0)  # what went, where the server says
            if kind in _BODY_MESSAGES and not message.get("more_body", False):
                observe()

        metrics = self.metrics
        has_body = method in _UPLOAD_METHODS
        upload = metrics is not None and has_body and "/blobs/uploads" in scope["path"]
        if upload:
            metrics.uploads_in_progress.inc()  # type: ignore[union-attr]
        try:
            # GET and HEAD bodies are never read: no need to count them.
            await self.app(scope, receive_counted if has_body else receive, send_observed)
        finally:
            if upload:
                metrics.uploads_in_progress.dec()  # type: ignore[union-attr]
            observe()

    def _log(
        self, scope: Scope, request_id: str, route: str, status: int, duration: float, received: int, sent: int
    ) -> None:
        assert self.access_log is not None
        if not self.access_log.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        method = scope["method"]
        # A record made here and handed to the logger: logger.info() would also walk the stack for the caller.
        record = logging.LogRecord(
            self.access_log.name, logging.INFO, __file__, 0, "%s %s %d", (method, route, status), None
        )
        record.fields = {
            "request_id": request_id,
            "method": method,
            "route": route,
            # The path names what was touched (a digest, a tag); the query string is left out: the
            # signed upload state travels there.
            "path": scope["path"],
            "repository": scope.get("path_params", {}).get("name", ""),
            "status": status,
            "bytes_in": received,
            "bytes_out": sent,
            "duration_ms": round(duration * 1000, 3),
            "user": scope.get("user_name", ""),
            "remote": client[0] if client else "",
            "user_agent": _user_agent(scope),
        }
        self.access_log.handle(record)
