"""What the store tells the rest of the registry: one event per fact, once the fact is in storage.

The store emits, features subscribe (wired once: the metadata index, webhooks, metrics). Whoever writes through the
store (the API, GC, retention, `moorage repo rm`, the admin API) therefore emits the same events; no caller has to
remember a side effect.

Two kinds of subscriber:

- a *listener* takes each event synchronously, after the write, and must not block (it queues work of its own);
- a *preparer* is awaited before a write with what the write is about to change (`Planned`): the metadata index
  records it there, so that a process that dies between the write and its events leaves a trace every replica
  reads (registry/index/changes.py); a *finisher* is told, after the write's last event, that the write it
  prepared completed (one that fails part-way is never finished: its trace is read back).

A listener or preparer that raises is logged and skipped: the write stands either way.

Who caused an event (`Origin`: actor, request id, client address, ...) is taken from a context variable that the
HTTP layer sets once per request (registry/routing.py) and admin commands set to a system actor. The store itself
knows nothing of HTTP.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

logger = logging.getLogger("moorage")


class EventType(StrEnum):
    BLOB_PUSHED = "blob.pushed"
    BLOB_MOUNTED = "blob.mounted"
    BLOB_DELETED = "blob.deleted"
    """A repository's link to the blob removed (the data stays for other repositories until GC)."""
    BLOB_PULLED = "blob.pulled"
    MANIFEST_PUSHED = "manifest.pushed"
    MANIFEST_DELETED = "manifest.deleted"
    MANIFEST_PULLED = "manifest.pulled"
    TAG_SET = "tag.set"
    """A tag created or moved (`previous` says from what)."""
    TAG_DELETED = "tag.deleted"
    REPOSITORY_DELETED = "repository.deleted"


BLOB_EVENTS = frozenset({EventType.BLOB_PUSHED, EventType.BLOB_MOUNTED, EventType.BLOB_DELETED, EventType.BLOB_PULLED})


@dataclass(frozen=True, slots=True)
class Origin:
    """Who caused an event. Empty fields are unknown (no request: GC on its schedule, an admin command)."""

    actor: str = ""
    request_id: str = ""
    address: str = ""
    host: str = ""
    method: str = ""
    user_agent: str = ""
    base_url: str = ""
    """The URL the client used to reach the registry (webhook targets carry URLs under it)."""
    server_port: int = 0
    """The port of this registry process the request came in on."""


SYSTEM = Origin()
_ORIGIN: contextvars.ContextVar[Origin] = contextvars.ContextVar("moorage_event_origin", default=SYSTEM)


def current_origin() -> Origin:
    return _ORIGIN.get()


def set_origin(origin: Origin) -> None:
    """The origin of every event emitted from here on in this context (one request's task)."""
    _ORIGIN.set(origin)


@contextlib.contextmanager
def acting_as(origin: Origin) -> Iterator[None]:
    token = _ORIGIN.set(origin)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    repository: str
    digest: str = ""
    tag: str = ""
    media_type: str = ""
    size: int | None = None
    source: str = ""
    """blob.mounted: the repository the blob came from ("" when the registry found it)."""
    deduplicated: bool = False
    """blob.pushed: the bytes were stored already, so the upload's copy was dropped."""
    origin: Origin = field(default_factory=current_origin)
    timestamp: float = field(default_factory=time.time)


_SERIALS = itertools.count()


@dataclass(frozen=True, slots=True)
class Planned:
    """What one write is about to change in one repository: some tags and manifests, or (`whole`) anything."""

    repository: str
    tags: frozenset[str] = frozenset()
    manifests: frozenset[str] = frozenset()
    whole: bool = False
    serial: int = field(default_factory=_SERIALS.__next__)
    """This write, among every write of the process."""


Listener = Callable[[Event], None]
Preparer = Callable[[Planned], Awaitable[None]]
Finisher = Callable[[Planned, bool], None]
"""Called once a prepared write ends: completed (True), or abandoned part-way by an error (False)."""


class EventBus:
    def __init__(self) -> None:
        self._listeners: dict[EventType, list[Listener]] = {kind: [] for kind in EventType}
        self._preparers: list[Preparer] = []
        self._finishers: list[Finisher] = []

    def subscribe(self, listener: Listener, types: Iterable[EventType] | None = None) -> None:
        for kind in EventType if types is None else types:
            self._listeners[kind].append(listener)

    def on_prepare(self, preparer: Preparer, finisher: Finisher | None = None) -> None:
        self._preparers.append(preparer)
        if finisher is not None:
            self._finishers.append(finisher)

    def wants(self, kind: EventType) -> bool:
        """Whether anyone listens (hot paths skip building an event nobody takes)."""
        return bool(self._listeners[kind])

    def emit(self, event: Event) -> None:
        for listener in self._listeners[event.type]:
            try:
                listener(event)
            except Exception:
                logger.exception("events: a listener failed on %s of %s", event.type, event.repository)

    async def prepare(
        self, repository: str, tags: Iterable[str] = (), manifests: Iterable[str] = (), *, whole: bool = False
    ) -> Planned:
        """Announce a write; pass what this returns to `finished` once the write and its events are done."""
        planned = Planned(repository, frozenset(tags), frozenset(manifests), whole)
        for preparer in self._preparers:
            try:
                await preparer(planned)
            except Exception:
                logger.exception("events: preparing a change of %s failed", repository)
        return planned

    def finished(self, planned: Planned) -> None:
        """The write `prepare` announced completed, and its events are emitted."""
        self._end(planned, True)

    def abandoned(self, planned: Planned) -> None:
        """The write `prepare` announced stopped part-way (an error, or it found nothing to do after announcing):
        what it names may be anything between before and after, and its events may be missing."""
        self._end(planned, False)

    @contextlib.contextmanager
    def ending(self, planned: Planned) -> Iterator[None]:
        """Around the rest of a write announced by `prepare`: `finished` when the block completes, `abandoned` when
        it raises (storage failing half-way, a cancelled request)."""
        try:
            yield
        except BaseException:
            self.abandoned(planned)
            raise
        self.finished(planned)

    def _end(self, planned: Planned, completed: bool) -> None:
        for finisher in self._finishers:
            try:
                finisher(planned, completed)
            except Exception:
                logger.exception("events: ending a change of %s failed", planned.repository)
