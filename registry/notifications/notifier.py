"""Takes events from requests, keeps them in the durable queue, delivers them to each endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from registry.notifications.envelope import ACTIONS, envelope_event, media_type_of
from registry.notifications.queue import DeliveryQueue
from registry.settings import EndpointSettings, NotificationsSettings
from registry.store.events import BLOB_EVENTS, Event, EventBus

logger = logging.getLogger("moorage.notifications")
T = TypeVar("T")
EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
BATCH = 16
FLUSH_INTERVAL = 0.05
POLL_INTERVAL = 1.0
FIRST_RETRY = 0.2


class EndpointFilter:
    def __init__(self, endpoint: EndpointSettings) -> None:
        self.name = endpoint.name
        self.media_types = frozenset(endpoint.ignoredmediatypes) | frozenset(endpoint.ignore.mediatypes)
        self.actions = frozenset(endpoint.ignore.actions)

    def takes(self, action: str, media_type: str) -> bool:
        return action not in self.actions and media_type not in self.media_types


class Notifier:
    """Follows the store's events (registry/store/events.py). Nothing here runs on the request path but a list
    append. With `deliver` off (admin commands), events are only queued, and a running server delivers them."""

    def __init__(
        self, settings: NotificationsSettings, *, deliver: bool = True, database_url: str | None = None
    ) -> None:
        """`database_url`: a PostgreSQL database to keep the queue in, shared by every replica (else the SQLite file
        `queue_path`)."""
        self.settings = settings
        self.deliver = deliver
        self.database_url = database_url
        self.endpoints = [e for e in settings.endpoints if not e.disabled]
        self.filters = [EndpointFilter(e) for e in self.endpoints]
        self._pending: list[tuple[str, str]] = []
        self._queue: DeliveryQueue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moorage-notifications")
        self._tasks: list[asyncio.Task[None]] = []
        self._adding: list[tuple[asyncio.Future[None], list[tuple[str, str]]]] = []  # flushes stopped mid-way
        self._flushed = asyncio.Event()
        self._wake: dict[str, asyncio.Event] = {}

    # -- following the store -------------------------------------------------------------------------

    def follow(self, events: EventBus) -> None:
        """Subscribe to the events some endpoint takes (blob events only with `notifications.blobs`)."""
        types = [t for t in ACTIONS if t not in BLOB_EVENTS or self.settings.blobs]
        events.subscribe(self._take, [t for t in types if any(ACTIONS[t] not in f.actions for f in self.filters)])

    def _take(self, event: Event) -> None:
        action, media_type = ACTIONS[event.type], media_type_of(event)
        takers = [f.name for f in self.filters if f.takes(action, media_type)]
        if not takers:
            return
        encoded = json.dumps(envelope_event(event), separators=(",", ":"))
        self._pending.extend((name, encoded) for name in takers)

    # -- lifetime ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = await self._run(DeliveryQueue.open, self.settings.queue_path, self.database_url)
        self._tasks.append(asyncio.create_task(self._flush_forever(), name="notifications-flush"))
        for endpoint in self.endpoints if self.deliver else []:
            self._wake[endpoint.name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._deliver_forever(endpoint), name=f"notify-{endpoint.name}"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for adding, batch in self._adding:  # a flush stopped while its batch was on its way to the queue
            try:
                await adding
            except Exception:
                logger.exception("could not queue %d notification(s); trying again", len(batch))
                self._pending[:0] = batch
        self._adding.clear()
        # What requests emitted while we were stopping is kept for the next start.
        await self._flush()
        if self._queue is not None:
            await self._run(self._queue.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- queueing ------------------------------------------------------------------------------------

    async def _flush(self) -> None:
        if not self._pending or self._queue is None:
            return
        batch, self._pending = self._pending, []
        # Shielded: stopping (aclose cancels this task) must not cancel the addition before the executor has begun
        # it, which would drop the batch (seen under load: an admin command's GC events never delivered).
        adding = asyncio.ensure_future(self._run(self._queue.add, batch))
        try:
            await asyncio.shield(adding)
        except asyncio.CancelledError:
            self._adding.append((adding, batch))  # aclose waits for it
            raise
        except Exception:
            logger.exception("could not queue %d notification(s); keeping them in memory", len(batch))
            self._pending[:0] = batch
            return
        for name in {endpoint for endpoint, _ in batch}:
            if name in self._wake:
                self._wake[name].set()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self._flush()

    # -- delivery ------------------------------------------------------------------------------------

    async def _deliver_forever(self, endpoint: EndpointSettings) -> None:
        assert self._queue is not None
        queue = self._queue
        wake = self._wake[endpoint.name]
        headers = {"Content-Type": EVENTS_MEDIA_TYPE, "User-Agent": "moorage-notifications"}
        extra = [
            (k, v) for k, values in endpoint.headers.items() for v in ([values] if isinstance(values, str) else values)
        ]
        failures = 0
        async with httpx.AsyncClient(timeout=endpoint.timeout) as client:
            while True:
                # The lease outlasts one send (the endpoint's timeout) with room to record the outcome.
                claim = asyncio.get_running_loop().run_in_executor(
                    self._executor, queue.claim, endpoint.name, BATCH, endpoint.timeout * 2 + 5.0
                )
                try:
                    deliveries = await asyncio.shield(claim)
                except asyncio.CancelledError:
                    # Stopping while the claim runs: what it claimed goes back, or it would wait out its lease.
                    with contextlib.suppress(Exception):
                        await self._run(queue.release, [d.id for d in await claim])
                    raise
                except Exception:
                    logger.exception("notifications: cannot read the queue")
                    deliveries = []
                if not deliveries:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), POLL_INTERVAL)
                    continue
                ids = [d.id for d in deliveries]
                body = '{"events":[' + ",".join(d.event for d in deliveries) + "]}"
                try:
                    response = await client.post(
                        endpoint.url, content=body.encode(), headers=httpx.Headers([*headers.items(), *extra])
                    )
                    ok = 200 <= response.status_code < 300
                    problem = f"answered {response.status_code}"
                except httpx.HTTPError as e:
                    ok, problem = False, f"{type(e).__name__}: {e}"
                except asyncio.CancelledError:
                    # Stopping mid-send: unsent as far as we know; the next process (or start) sends them at once
                    # instead of after the lease (at least once, as always).
                    await self._run(queue.release, ids)
                    raise
                if ok:
                    failures = 0
                    await self._run(queue.delivered, ids)
                    continue
                failures += 1
                delay = endpoint.backoff if failures >= endpoint.threshold else FIRST_RETRY * 2 ** (failures - 1)
                delay = min(delay, endpoint.backoff)
                logger.warning(
                    "notifications: endpoint %s %s; %d event(s) retried in %.1fs",
                    endpoint.name,
                    problem,
                    len(ids),
                    delay,
                )
                await self._run(queue.retry_later, ids, delay)
                await asyncio.sleep(delay)
