"""The CLI's contract: one readable error line and exit status 1, never a traceback; help for every command."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from registry.cli import build_parser, main
from registry.client.cli import parse_size
from registry.client.progress import JsonReporter, LineReporter, RichReporter, make_reporter
from tests.client.cli_runner import run_cli
from tests.e2e.conftest import free_port
from tests.e2e.images import OciLayout, small_image

COMMANDS = ["push", "pull", "cp", "tag", "rm", "inspect", "tags", "catalog", "search", "login", "logout"]


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    help_text = parser.format_help()
    for command in [*COMMANDS, "serve"]:
        assert command in help_text
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    assert "--platform" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "localhost:5000/Bad/Name:1"], "moorage: invalid repository name in"),
        (
            ["push", "/nonexistent/layout", "localhost:5000/a:1"],
            "moorage: /nonexistent/layout: no such file or directory",
        ),
        (["pull", "localhost:5000/a:1", "/nonexistent/dir/dest"], "moorage: /nonexistent/dir: no such directory"),
        (["push", ".", "localhost:5000/a:1", "--concurrency", "0"], "moorage: --concurrency must be at least 1"),
        (["tag", "localhost:5000/a:1", "bad tag"], "moorage: invalid tag: 'bad tag'"),
    ],
)
def test_usage_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "size"), [("4096", 4096), ("64KiB", 65536), ("16M", 16 << 20), ("1GiB", 1 << 30), ("2mb", 2 << 20)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "MiB", "1.5MiB", "12XB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_unreachable_registry(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = run_cli("tags", f"127.0.0.1:{port}/team/app", "--retries", "0", docker_config=tmp_path).failed()
    assert result.stderr.startswith(f"moorage: GET http://127.0.0.1:{port}/v2/team/app/tags/list"), result.stderr
    assert "cannot connect" in result.stderr
    assert result.stderr.count("\n") == 1


def test_pull_refuses_an_existing_dest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "exists"
    dest.mkdir()
    assert main(["pull", "localhost:1/a:1", str(dest)]) == 1
    assert capsys.readouterr().err == f"moorage: {dest} already exists\n"


def test_logout_without_login(tmp_path: Path) -> None:
    result = run_cli("logout", "r.example:5000", docker_config=tmp_path).ok()
    assert "Not logged in to r.example:5000" in result.stderr


def test_reporters() -> None:
    lines = io.StringIO()
    reporter = LineReporter(lines)
    reporter.blob("sha256:" + "ab" * 32, 2048, "pushing").advance(2048)
    reporter.done("sha256:" + "ab" * 32, 2048, "pushed")
    assert lines.getvalue() == "pushed abababababab 2.0 KiB\n"

    out = io.StringIO()
    JsonReporter(out).done("sha256:" + "cd" * 32, 5, "exists")
    assert json.loads(out.getvalue()) == {"event": "exists", "digest": "sha256:" + "cd" * 32, "size": 5}

    terminal = io.StringIO()
    rich = RichReporter(Console(file=terminal, force_terminal=True, width=100))
    bar = rich.blob("sha256:" + "ef" * 32, 1 << 20, "pulling")
    bar.advance(1 << 19)
    bar.restart(0)
    bar.advance(1 << 20)
    rich.done("sha256:" + "ef" * 32, 1 << 20, "pulled")
    rich.close()
    assert "pulled efefefefefef 1.0 MiB" in terminal.getvalue()

    assert isinstance(make_reporter(stream=io.StringIO()), LineReporter)  # not a terminal


def test_a_failed_push_prints_nothing_on_stdout(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "src")
    small_image(layout, name="quiet", tag="1")
    argv = ["push", str(layout.path), f"127.0.0.1:{free_port()}/a:1", "-q", "--retries", "0"]
    result = run_cli(*argv, docker_config=tmp_path).failed()
    assert result.stdout == ""
    assert result.stderr.startswith("moorage: HEAD http://127.0.0.1:")


def test_client_commands_do_not_load_the_server_or_the_admin_commands() -> None:
    """Their imports (pydantic settings, Starlette, psycopg, ...) took ~0.35 s of every `moorage push` or `pull`."""
    import subprocess
    import sys

    heavy = ("starlette", "pydantic_settings", "psycopg", "registry.settings", "registry.admin", "uvicorn")
    code = (
        "import contextlib, sys\n"
        "from registry.cli import main\n"
        "with contextlib.suppress(SystemExit): main(['pull', '--help'])\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "usage: moorage pull" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
