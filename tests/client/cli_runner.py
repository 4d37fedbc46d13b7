"""Run the `moorage` CLI as users do: a separate process, with its own docker config directory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.conftest import REPO_ROOT

CLI_TIMEOUT = 120.0


@dataclass
class CliResult:
    argv: list[str]
    code: int
    stdout: str
    stderr: str

    def ok(self) -> CliResult:
        assert self.code == 0, f"`moorage {' '.join(self.argv)}` exited {self.code}:\n{self.stderr}\n{self.stdout}"
        return self

    def failed(self) -> CliResult:
        assert self.code == 1, f"`moorage {' '.join(self.argv)}` exited {self.code}, expected 1:\n{self.stderr}"
        assert "Traceback" not in self.stderr, self.stderr
        return self


def client_env(docker_config: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOORAGE_", "DOCKER_"))}
    env["DOCKER_CONFIG"] = str(docker_config)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_cli(*argv: str, docker_config: Path, env: dict[str, str] | None = None, stdin: str | None = None) -> CliResult:
    proc = subprocess.run(
        [sys.executable, "-m", "registry", *argv],
        env=client_env(docker_config, env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    return CliResult(list(argv), proc.returncode, proc.stdout, proc.stderr)


async def run_cli_async(
    *argv: str, docker_config: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> CliResult:
    """For tests whose server runs in the test's own event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "registry",
        *argv,
        env=client_env(docker_config, env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), CLI_TIMEOUT)
    assert proc.returncode is not None
    return CliResult(list(argv), proc.returncode, out.decode(), err.decode())
