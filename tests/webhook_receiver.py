"""A webhook receiver for the notification tests: a real HTTP server on 127.0.0.1 in a thread."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WAIT = 15.0


class Receiver:
    """A webhook receiver on 127.0.0.1: records each envelope; answers `status`."""

    def __init__(self, port: int = 0) -> None:
        self.envelopes: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.status == 200:
                    receiver.envelopes.append((dict(self.headers), json.loads(body)))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [event for _, envelope in self.envelopes for event in envelope["events"]]

    def found(self, action: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["action"] == action and f"/{kind}/" in e["target"].get("url", "")]

    async def wait_for(self, action: str, kind: str, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT
        while True:
            found = self.found(action, kind)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    def wait_for_blocking(self, action: str, kind: str, count: int = 1, wait: float = WAIT) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait
        while len(self.found(action, kind)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.found(action, kind)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
