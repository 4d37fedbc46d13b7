"""Transfer progress: rich bars on a terminal, one line per blob otherwise, JSON lines for machines, or nothing."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from registry.client.terminal import printable


class BlobProgress(Protocol):
    def advance(self, n: int) -> None: ...
    def restart(self, completed: int) -> None: ...


class Reporter(Protocol):
    """What push, pull and cp report: one `blob()` per blob transferred, `done()` when it is finished."""

    def blob(self, digest: str, size: int, action: str) -> BlobProgress: ...
    def done(self, digest: str, size: int, outcome: str) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


def short_digest(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


class NoProgress:
    def advance(self, n: int) -> None:
        pass

    def restart(self, completed: int) -> None:
        pass


class QuietReporter:
    def blob(self, digest: str, size: int, action: str) -> BlobProgress:
        return NoProgress()

    def done(self, digest: str, size: int, outcome: str) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineReporter(QuietReporter):
    """`pushed sha256:0123456789ab 12.0 MiB` once per blob: logs of CI jobs stay readable."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def done(self, digest: str, size: int, outcome: str) -> None:
        print(printable(f"{outcome} {short_digest(digest)} {human_size(size)}"), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(printable(text), file=self.stream, flush=True)


class JsonReporter(QuietReporter):
    """One JSON object per line on stdout for every finished blob; the command prints its result last."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def done(self, digest: str, size: int, outcome: str) -> None:
        event: dict[str, Any] = {"event": outcome, "digest": digest, "size": size}
        print(json.dumps(event), file=self.stream, flush=True)


class _RichBar:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress = progress
        self.task = task

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def restart(self, completed: int) -> None:
        self.progress.update(self.task, completed=completed)


class RichReporter(QuietReporter):
    """A bar per blob in flight; finished blobs stay as one line each."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}
        self.started = time.monotonic()
        self.progress.start()

    def blob(self, digest: str, size: int, action: str) -> BlobProgress:
        task = self.progress.add_task(printable(f"{action} {short_digest(digest)}"), total=size)
        self.tasks[digest] = task
        return _RichBar(self.progress, task)

    def done(self, digest: str, size: int, outcome: str) -> None:
        task = self.tasks.pop(digest, None)
        if task is not None:
            self.progress.remove_task(task)
        line = printable(f"{outcome} {short_digest(digest)} {human_size(size)}")
        self.progress.console.print(line, highlight=False, markup=False)

    def message(self, text: str) -> None:
        self.progress.console.print(printable(text), highlight=False, markup=False)

    def close(self) -> None:
        self.progress.stop()


def make_reporter(*, quiet: bool = False, json_output: bool = False, stream: TextIO | None = None) -> Reporter:
    if json_output:
        return JsonReporter()
    if quiet:
        return QuietReporter()
    err = stream or sys.stderr
    if err.isatty():
        return RichReporter(Console(file=err))
    return LineReporter(err)
