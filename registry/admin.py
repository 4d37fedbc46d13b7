"""What every admin command (`moorage token|gc|repo|du|index ...`) shares: `--config`, settings, an open registry.

Admin commands work on the storage directly (the source of truth every replica shares), so they run beside live
servers; each module registers its subcommands with `add_commands` and sets `admin_run` to its entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from registry.services import Service
from registry.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from registry.store.events import Origin, acting_as
from registry.store.registry import Registry

if TYPE_CHECKING:
    from registry.index.local import LocalIndex

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG_ERROR = 2

AdminMain = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"YAML config file (default: ${CONFIG_ENV}, else config/moorage.yml)"
    )


def set_main(parser: argparse.ArgumentParser, main: AdminMain) -> None:
    """Make `main(args, settings)` the entry point of an admin subcommand."""
    add_config_argument(parser)
    parser.set_defaults(admin_run=lambda args: run_admin(main, args))


def run_admin(main: AdminMain, args: argparse.Namespace) -> int:
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as e:
        print(f"moorage: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        return asyncio.run(main(args, settings))
    except KeyboardInterrupt:
        return 130


@contextlib.asynccontextmanager
async def open_registry(settings: Settings, actor: str = "moorage:admin") -> AsyncIterator[Registry]:
    """The registry over the configured storage, started, and closed afterwards. What it changes emits the same
    events as the API (as `actor`): the running servers' metadata index follows (through its change records), and
    webhooks are queued for them to deliver."""
    async with open_registry_and_index(settings, actor) as (registry, _):
        yield registry


@contextlib.asynccontextmanager
async def open_registry_and_index(
    settings: Settings, actor: str = "moorage:admin", *, start_index: bool = False
) -> AsyncIterator[tuple[Registry, LocalIndex | None]]:
    """`open_registry`, and the metadata index following it (None when the index is off); with `start_index`, the
    index is started too (opened, caught up with storage, following the change records), as a server's is."""
    registry = Registry.from_settings(settings)
    await registry.start()
    followers: list[Service] = []
    index: LocalIndex | None = None
    try:
        if settings.index.enabled:
            from registry.index.setup import open_index

            index = open_index(settings, registry)
            index.follow(registry.events)
            followers.append(index)
            if start_index:
                await index.start()
        if settings.notifications.endpoints:
            from registry.notifications import follow as follow_notifications

            notifier = follow_notifications(settings, registry, deliver=False)
            await notifier.start()
            followers.append(notifier)
        with acting_as(Origin(actor=actor)):
            yield registry, index
    finally:
        for follower in reversed(followers):
            await follower.aclose()
        await registry.aclose()
