"""Admin subcommands of this feature (see registry/admin.py for the shared parts)."""

from __future__ import annotations

from typing import Any


def add_commands(commands: Any) -> None:
    """Register subcommands on the `moorage` parser's subparsers."""
