"""A real docker daemon for the e2e tests: Debian's `docker.io` (dockerd 20.10 and its CLI), started once per session
as root with everything private (data, exec root, socket under a temp dir; no iptables, no bridge, the `vfs` driver so
that nothing is mounted), and a CLI wrapper that talks to that daemon only, with a private `DOCKER_CONFIG`.

A daemon that cannot start is a failure with its log, never a skip: CI must run these tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import require_tool, tail

# The package's CLI, not whatever `docker` comes first on PATH (/usr/local/bin/docker may be a newer, unrelated
# CLI): the package's matches its daemon's API version.
DOCKER_CLI = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
DAEMON_READY_TIMEOUT = 30.0
DAEMON_STOP_TIMEOUT = 15.0
DOCKER_TIMEOUT = 60.0


@dataclass
class DockerDaemon:
    cli: str
    socket: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    argv: list[str]
    config_file: Path  # daemon.json: what a reload (SIGHUP) reads again, registry-mirrors among them

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @contextlib.contextmanager
    def registry_mirror(self, url: str) -> Iterator[None]:
        """docker.io pulls go to `url` first while this lasts (a live reload of daemon.json, undone after)."""
        self._set_mirrors([url])
        try:
            yield
        finally:
            self._set_mirrors([])

    def _set_mirrors(self, mirrors: list[str]) -> None:
        self.config_file.write_text(json.dumps({"registry-mirrors": mirrors}))
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + DAEMON_READY_TIMEOUT
        while time.monotonic() < deadline:
            result = subprocess.run(
                [self.cli, "-H", self.host, "info", "--format", "{{json .RegistryConfig.Mirrors}}"],
                capture_output=True,
                text=True,
                timeout=DOCKER_TIMEOUT,
                env=_cli_env(self.host, None),
                check=False,
            )
            shown = json.loads(result.stdout or "null") or [] if result.returncode == 0 else None
            if shown is not None and [m.rstrip("/") for m in shown] == [m.rstrip("/") for m in mirrors]:
                return
            time.sleep(0.1)
        pytest.fail(f"dockerd did not take registry-mirrors {mirrors}: {self.describe()}", pytrace=False)

    def describe(self) -> str:
        return f"dockerd ({' '.join(self.argv)}), log {self.log_path}:\n{tail(self.log_path)}"

    def stop(self) -> None:
        """SIGTERM (dockerd then stops the containerd it started), then SIGKILL to the group. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=DAEMON_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=DAEMON_STOP_TIMEOUT)
        # containerd runs in dockerd's session (start_new_session below): whatever outlived dockerd goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _cli_env(daemon_host: str, config: Path | None) -> dict[str, str]:
    """The environment for the CLI: our daemon, our config dir, and nothing of the machine's docker settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = daemon_host
    if config is not None:
        env["DOCKER_CONFIG"] = str(config)
    return env


def _wait_ready(daemon: DockerDaemon, probe_config: Path) -> None:
    deadline = time.monotonic() + DAEMON_READY_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        code = daemon.proc.poll()
        if code is not None:
            pytest.fail(f"dockerd exited with status {code} before it was ready: {daemon.describe()}", pytrace=False)
        result = subprocess.run(
            [daemon.cli, "-H", daemon.host, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT,
            env=_cli_env(daemon.host, probe_config),
            check=False,
        )
        if result.returncode == 0 and result.stdout.strip():
            return
        last = (result.stderr or result.stdout).strip()
        time.sleep(0.2)
    pytest.fail(
        f"dockerd not ready after {DAEMON_READY_TIMEOUT:.0f}s (`docker info`: {last}): {daemon.describe()}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def docker_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerDaemon]:
    dockerd = DOCKERD if Path(DOCKERD).is_file() else require_tool("dockerd", "docker.io")
    cli = DOCKER_CLI if Path(DOCKER_CLI).is_file() else require_tool("docker", "docker.io")
    if os.geteuid() != 0:
        pytest.fail("dockerd needs root: run the e2e tests as root (CI does)", pytrace=False)
    logs = tmp_path_factory.mktemp("dockerd")
    # Unix socket paths are limited to 108 bytes, and containerd's live under the exec root: pytest's temp paths can
    # be longer, so the daemon's directories go under a short one (removed at teardown; the log stays in pytest's).
    root = Path(tempfile.mkdtemp(prefix="moorage-dockerd-"))
    socket_path = root / "docker.sock"
    config_file = root / "daemon.json"
    config_file.write_text("{}")
    argv = [
        dockerd,
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=vfs",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "pid"),
        "-H",
        f"unix://{socket_path}",
        # Implied for loopback; said anyway, so that a plain-HTTP registry on 127.0.0.1 is never a TLS question.
        "--insecure-registry",
        "127.0.0.0/8",
        "--config-file",
        str(config_file),
    ]
    log_path = logs / "dockerd.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
        )
    daemon = DockerDaemon(cli, socket_path, log_path, proc, argv, config_file)
    try:
        _wait_ready(daemon, logs / "probe-config")
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


class DockerError(AssertionError):
    pass


@dataclass
class Docker:
    """The docker CLI against the session's daemon, with this test's own `DOCKER_CONFIG` (credentials stay here)."""

    daemon: DockerDaemon
    config: Path

    def run(
        self, *args: str, check: bool = True, stdin: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.daemon.cli, "-H", self.daemon.host, *args]
        try:
            result = subprocess.run(
                argv,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=DOCKER_TIMEOUT,
                env=_cli_env(self.daemon.host, self.config),
                cwd=cwd,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise DockerError(f"`{' '.join(argv)}` did not finish within {DOCKER_TIMEOUT:.0f}s: {e.stderr!r}") from e
        if check and result.returncode != 0:
            raise DockerError(
                f"`{' '.join(argv)}` exited with {result.returncode}\n"
                f"stderr:\n{result.stderr}\nstdout:\n{result.stdout}"
            )
        return result

    def login(self, host: str, user: str, password: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        # --password-stdin: the password never appears in argv (nor in a failure message built from it).
        return self.run("login", host, "--username", user, "--password-stdin", stdin=password + "\n", check=check)

    def saved_auths(self) -> dict[str, Any]:
        """The `auths` section of this test's config.json (empty when there is none)."""
        path = self.config / "config.json"
        if not path.exists():
            return {}
        auths: dict[str, Any] = json.loads(path.read_text()).get("auths", {})
        return auths

    def image_id(self, ref: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


@pytest.fixture
def docker(docker_daemon: DockerDaemon, tmp_path: Path) -> Docker:
    config = tmp_path / "docker-config"
    config.mkdir()
    return Docker(docker_daemon, config)
