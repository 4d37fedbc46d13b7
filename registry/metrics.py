"""Prometheus metrics: what the registry counts, and how `/metrics` is served.

With several worker processes, prometheus-client's multiprocess mode is on (PROMETHEUS_MULTIPROC_DIR, set by
`moorage serve` before any worker starts): every process writes its values to files there and whoever answers
`/metrics` adds them up. Label values are bounded: a route template, never a path with names or digests in it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import hmac
import os
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from registry.store.events import Event, EventBus, EventType

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


FLUSH_INTERVAL = 1.0


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class BufferedHistogram:
    """Observations of one labelled histogram, added up in plain Python and handed over by `flush`.

    prometheus-client takes a lock per value (and in multiprocess mode writes to a memory-mapped file) on every
    observation; a request observes several. Buffered, the hot path does a bisect and three additions. Only the
    event loop's thread touches it.
    """

    __slots__ = ("_bounds", "_buckets", "_child", "_count", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._buckets = [0] * len(self._bounds)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        self._buckets[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._count += 1

    def flush(self) -> None:
        if not self._count:
            return
        buckets, total = self._buckets, self._sum
        self._buckets, self._sum, self._count = [0] * len(self._bounds), 0.0, 0
        # The child's own values, as Histogram.observe updates them (one bucket per observation; cumulated when
        # collected).
        self._child._sum.inc(total)
        for index, count in enumerate(buckets):
            if count:
                self._child._buckets[index].inc(count)


class BufferedCounter:
    __slots__ = ("_child", "_value")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self._value += amount

    def flush(self) -> None:
        if self._value:
            value, self._value = self._value, 0.0
            self._child.inc(value)


class Metrics:
    """Every metric the registry keeps, registered on its own CollectorRegistry (one per app)."""

    def __init__(self, *, repository_names: bool = True) -> None:
        self.repository_names = repository_names  # else no series names a repository (MetricsSettings)
        self.registry = CollectorRegistry()
        r = self.registry
        http_labels = ("method", "route", "status")
        self.requests = Counter("moorage_http_requests", "HTTP requests answered.", http_labels, registry=r)
        self.request_duration = Histogram(
            "moorage_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            http_labels,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.received_bytes = Counter(
            "moorage_http_received_bytes", "Request body bytes received.", ("method", "route"), registry=r
        )
        self.sent_bytes = Counter(
            "moorage_http_sent_bytes", "Response body bytes sent.", ("method", "route"), registry=r
        )
        self.uploads_in_progress = Gauge(
            "moorage_uploads_in_progress",
            "Blob upload requests (POST, PATCH, PUT) being received now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.dedup_hits = Counter(
            "moorage_blob_dedup_hits", "Blob uploads whose blob already existed (the upload was dropped).", registry=r
        )
        self.dedup_saved_bytes = Counter(
            "moorage_blob_dedup_saved_bytes", "Bytes not stored again thanks to dedup hits.", registry=r
        )
        self.blobs_committed = Counter("moorage_blob_uploads_committed", "Blob uploads committed.", registry=r)
        self.store_events = Counter(
            "moorage_store_events",
            "What the store did (blob.pushed, manifest.pulled, tag.deleted, ...), whoever asked: API, GC, admin.",
            ("type",),
            registry=r,
        )
        self.storage_duration = Histogram(
            "moorage_storage_operation_duration_seconds",
            "Storage backend calls (streams: until the first chunk).",
            ("backend", "operation"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.storage_errors = Counter(
            "moorage_storage_operation_errors",
            "Storage backend calls that failed (a missing path is not a failure).",
            ("backend", "operation"),
            registry=r,
        )
        self.gc_runs = Counter("moorage_gc_runs", "Garbage collection runs, by outcome.", ("outcome",), registry=r)
        self.gc_blobs_removed = Counter("moorage_gc_blobs_removed", "Blobs deleted by garbage collection.", registry=r)
        self.gc_bytes_removed = Counter(
            "moorage_gc_removed_bytes", "Bytes of blobs deleted by garbage collection.", registry=r
        )
        self.gc_manifests_removed = Counter(
            "moorage_gc_manifests_removed", "Manifests removed by retention or untagged-manifest GC.", registry=r
        )
        self.gc_uploads_purged = Counter(
            "moorage_gc_uploads_purged", "Stale upload sessions removed by garbage collection.", registry=r
        )
        self.index_skipped_objects = Counter(
            "moorage_index_skipped_objects",
            "Manifests and image configs the metadata index could read only in part (indexed without the rest).",
            ("kind",),
            registry=r,
        )
        # Set by the storage probe (readiness checks, and every few seconds in the background): 0 while the store is
        # unreachable, gone or refusing us. With several workers, the lowest: one worker that cannot reach it is
        # enough to worry about.
        self.storage_up = Gauge(
            "moorage_storage_up",
            "Whether the storage backend answered its last probe (1) or not (0).",
            ("backend",),
            registry=r,
            multiprocess_mode="livemin",
        )
        self.storage_free_bytes = Gauge(
            "moorage_storage_free_bytes",
            "Space left for writes on the storage backend (filesystem only: statvfs of the root, unprivileged).",
            ("backend",),
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.index_refresh_failures = Counter(
            "moorage_index_refresh_failures",
            "Index updates that failed after a storage write (repaired from the change records later).",
            registry=r,
        )
        self.proxy_requests = Counter(
            "moorage_proxy_requests",
            "Requests for proxied repositories, by upstream and outcome: hit (from the cache), miss (fetched), stale "
            "(cached, served while the upstream could not answer), error.",
            ("upstream", "outcome"),
            registry=r,
        )
        self.proxy_upstream_received_bytes = Counter(
            "moorage_proxy_upstream_received_bytes", "Blob bytes received from upstreams.", ("upstream",), registry=r
        )
        self.quota_limit_bytes = Gauge(
            "moorage_quota_limit_bytes",
            "The quota of repositories that have one (set when their usage is checked: a push, the stats API).",
            ("repository",),
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.quota_used_bytes = Gauge(
            "moorage_quota_used_bytes",
            "Unique bytes a repository with a quota references, pushes in progress included.",
            ("repository",),
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self._http_children: dict[
            tuple[str, str, int], tuple[BufferedCounter, BufferedHistogram, BufferedCounter, BufferedCounter]
        ] = {}
        self._buffers: list[BufferedCounter | BufferedHistogram] = []
        self._flusher: asyncio.Task[None] | None = None

    def buffered_histogram(self, child: Any) -> BufferedHistogram:
        buffer = BufferedHistogram(child)
        self._buffers.append(buffer)
        return buffer

    def buffered_counter(self, child: Any) -> BufferedCounter:
        buffer = BufferedCounter(child)
        self._buffers.append(buffer)
        return buffer

    def flush(self) -> None:
        """Hand what the buffers hold to prometheus-client (so to the other processes, in multiprocess mode)."""
        for buffer in self._buffers:
            buffer.flush()

    async def start(self) -> None:
        """Flush every FLUSH_INTERVAL: what another process or the metrics port reads lags by at most that."""
        self._flusher = asyncio.create_task(self._flush_forever(), name="metrics-flush")

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.flush()

    def observe_request(self, method: str, route: str, status: int, duration: float, received: int, sent: int) -> None:
        if method not in METHODS:
            method = "other"
        key = (method, route, status)
        children = self._http_children.get(key)
        if children is None:
            children = (
                self.buffered_counter(self.requests.labels(method, route, str(status))),
                self.buffered_histogram(self.request_duration.labels(method, route, str(status))),
                self.buffered_counter(self.received_bytes.labels(method, route)),
                self.buffered_counter(self.sent_bytes.labels(method, route)),
            )
            self._http_children[key] = children
        requests, durations, received_bytes, sent_bytes = children
        requests.inc()
        durations.observe(duration)
        if received:
            received_bytes.inc(received)
        if sent:
            sent_bytes.inc(sent)

    def follow(self, events: EventBus) -> None:
        """Count every store event by type; blob uploads also by whether dedup dropped their bytes."""
        counters = {kind: self.buffered_counter(self.store_events.labels(kind.value)) for kind in EventType}

        def count(event: Event) -> None:
            counters[event.type].inc()
            if event.type is EventType.BLOB_PUSHED:
                self.blobs_committed.inc()
                if event.deduplicated:
                    self.dedup_hits.inc()
                    self.dedup_saved_bytes.inc(event.size or 0)

        events.subscribe(count)

    def gc_finished(self, blobs: int, removed_bytes: int, manifests: int, uploads: int) -> None:
        self.gc_runs.labels("ok").inc()
        self.gc_blobs_removed.inc(blobs)
        self.gc_bytes_removed.inc(removed_bytes)
        self.gc_manifests_removed.inc(manifests)
        self.gc_uploads_purged.inc(uploads)

    def gc_failed(self) -> None:
        self.gc_runs.labels("failed").inc()

    def index_object_skipped(self, kind: str) -> None:
        self.index_skipped_objects.labels(kind).inc()

    def index_refresh_failed(self) -> None:
        self.index_refresh_failures.inc()

    def proxy_request(self, upstream: str, outcome: str) -> None:
        self.proxy_requests.labels(upstream, outcome).inc()

    def quota(self, repository: str, limit: int, used: int) -> None:
        if not self.repository_names:
            return
        self.quota_limit_bytes.labels(repository).set(limit)
        self.quota_used_bytes.labels(repository).set(used)

    def exposition(self) -> bytes:
        """The text format of every metric; in multiprocess mode, summed over all processes.

        Call `flush` first, on the event loop's thread.
        """
        if multiprocess_mode():
            combined = CollectorRegistry()
            MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return generate_latest(combined)
        return generate_latest(self.registry)


def mark_process_dead(pid: int) -> None:
    """Drop a finished process's live gauges (its counters stay in the totals)."""
    if multiprocess_mode():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def basic_auth_ok(header: str | None, username: str, password: str) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, sep, secret = decoded.partition(":")
    # Compare both in full, whatever the first comparison says: no timing hint about which one was wrong.
    user_ok = hmac.compare_digest(user.encode(), username.encode())
    secret_ok = hmac.compare_digest(secret.encode(), password.encode())
    return bool(sep) and user_ok and secret_ok


CONTENT_TYPE = CONTENT_TYPE_LATEST
WWW_AUTHENTICATE = 'Basic realm="moorage metrics"'

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def metrics_wsgi_app(credentials: tuple[str, str] | None) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The separate metrics port: `/metrics` from the multiprocess files, behind basic auth when configured."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found; metrics are at /metrics\n"]
        if credentials and not basic_auth_ok(environ.get("HTTP_AUTHORIZATION"), *credentials):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", WWW_AUTHENTICATE)])
            return [b"authentication required\n"]
        combined = CollectorRegistry()
        MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE)])
        return [generate_latest(combined)]

    return app


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """`/metrics` on its own port, in a thread of the serving (supervisor) process."""

    def __init__(self, host: str, port: int, credentials: tuple[str, str] | None) -> None:
        self._server = make_server(
            host,
            port,
            metrics_wsgi_app(credentials),
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="moorage-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
