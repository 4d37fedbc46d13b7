"""End-to-end fixtures: real `moorage serve` processes, Debian's `docker-registry` (CNCF Distribution), and skopeo.

Nothing here is mocked: every fixture starts a real server on a free local port, and the tests talk to it with real
clients. A missing tool is a failure (with the package to install), never a skip: CI must run these tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import yaml

from tests.ports import free_port
from tests.s3_server import MotoServer

REPO_ROOT = Path(__file__).resolve().parents[2]
APT_PACKAGES_FILE = ".ci/apt-packages.txt"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
SKOPEO_TIMEOUT = 120.0
LOG_TAIL = 8000
PORT_ATTEMPTS = 3
DISTRIBUTION_BINARY = "/usr/bin/docker-registry"
PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so that fixtures can tell at teardown whether the test failed."""
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(PHASE_REPORTS, {})
    return any(r.failed for r in reports.values())


def _stop_all(servers: list[RunningServer], request: pytest.FixtureRequest) -> None:
    """Stop the servers; after a failed test, print their logs (pytest shows them with the failure)."""
    failed = _test_failed(request)
    for server in reversed(servers):
        server.stop()
        if failed:
            print(f"\n===== {server.describe()}")


def require_tool(name: str, package: str) -> str:
    """The absolute path of `name`, or a test failure saying which Debian package provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name!r} is not installed (not on PATH). The e2e tests need it: install the Debian package "
            f"{package!r} (`apt-get install {package}`; CI installs everything listed in {APT_PACKAGES_FILE}).",
            pytrace=False,
        )
    return path


def tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    if len(text) <= limit:
        return text
    # What went wrong is rarely in the last lines of a busy server's log: its warnings, errors and 5xx answers first.
    alarms = [line for line in text.splitlines() if _ALARM.search(line)]
    shown = "\n".join(alarms[:ALARM_LINES]) + (
        f"\n... and {len(alarms) - ALARM_LINES} more" if len(alarms) > ALARM_LINES else ""
    )
    return (f"warnings, errors and 5xx answers:\n{shown}\n" if alarms else "") + "last lines:\n...\n" + text[-limit:]


_ALARM = re.compile(r'"level":"(warning|error|critical)"|"status":5\d\d|Traceback|^(WARNING|ERROR|CRITICAL)')
ALARM_LINES = 60


@dataclass
class RunningServer:
    """A registry process listening on 127.0.0.1:`port` whose output goes to `log_path`."""

    kind: str
    port: int
    root: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    argv: list[str]
    _log_file: Any = field(repr=False, default=None)
    # The MOORAGE_* settings the server was started with (moorage only), e.g. to start a replica like it.
    moorage_env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """`host:port`, as used in image references (`docker://HOST/repo:tag`)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, repo: str, reference: str | None = None) -> str:
        """A skopeo `docker://` reference: `reference` is a tag, or a digest (`sha256:...`)."""
        base = f"docker://{self.host}/{repo}"
        if reference is None:
            return base
        return f"{base}@{reference}" if ":" in reference else f"{base}:{reference}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"{self.kind} ({' '.join(self.argv)}), log {self.log_path}:\n{tail(self.log_path)}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            return client.get(path, **kwargs)

    def get_json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}\n{self.describe()}"
        return response.json()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # The server runs in its own process group: this reaches uvicorn's worker processes too.
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # Still ours (not reaped yet), so is its process group: kill the leader and any workers.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class _PortTaken(Exception):
    """The server could not bind its port: another process took it between free_port() and the bind."""


def _start(
    kind: str, prepare: Callable[[int], list[str]], *, env: dict[str, str], cwd: Path, root: Path
) -> RunningServer:
    """Start `prepare(port)` on a free port and wait until it serves `GET /v2/`; retry if the port was taken."""
    for _attempt in range(PORT_ATTEMPTS):
        port = free_port()
        argv = prepare(port)
        log_path = cwd / f"{kind}-{port}.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = RunningServer(kind, port, root, log_path, proc, argv, log_file)
        try:
            _wait_ready(server)
        except _PortTaken:
            server.stop()
            continue
        except BaseException:
            server.stop()
            raise
        return server
    pytest.fail(f"{kind}: no free port after {PORT_ATTEMPTS} attempts (address already in use each time)")


def _wait_ready(server: RunningServer) -> None:
    """Poll `GET /v2/` until it answers 200 (401 with auth on); fail with the server's log if it exits or times out."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            code = server.proc.poll()
            if code is not None:
                if "address already in use" in server.log().lower():
                    raise _PortTaken()
                pytest.fail(f"{server.kind} exited with status {code} before it was ready: {server.describe()}")
            try:
                response = client.get(f"{server.url}/v2/")
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code in (200, 401):  # 401: authentication is on, and it is serving
                    return
                last = f"GET /v2/ answered {response.status_code}: {response.text[:500]}"
            time.sleep(0.1)
    pytest.fail(f"{server.kind} not ready after {READY_TIMEOUT:.0f}s ({last}): {server.describe()}")


def _clean_env() -> dict[str, str]:
    """The environment without any MOORAGE_* or REGISTRY_* settings that could leak into the servers."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MOORAGE_", "REGISTRY_"))}


def settings_env(section: str, values: Mapping[str, Any]) -> dict[str, str]:
    """`MOORAGE_<SECTION>__<KEY>...` variables for a nested settings mapping: {"s3": {"bucket": "b"}} with section
    "storage" gives MOORAGE_STORAGE__S3__BUCKET=b. Booleans become true/false; None values are left out."""
    env: dict[str, str] = {}
    for key, value in values.items():
        name = f"{section}__{key}".upper()
        if isinstance(value, Mapping):
            env.update(settings_env(name, value))
        elif value is None:
            continue
        elif isinstance(value, bool):
            env[f"MOORAGE_{name}"] = "true" if value else "false"
        else:
            env[f"MOORAGE_{name}"] = str(value)
    return env


@pytest.fixture
def teardown_callbacks() -> Iterator[Callable[[Callable[[], None]], None]]:
    """Register callables to run at teardown, after every server has stopped (e.g. dropping an S3 bucket).

    The server factories depend on this fixture, so it is torn down after them. Callbacks run last first.
    """
    callbacks: list[Callable[[], None]] = []
    yield callbacks.append
    for callback in reversed(callbacks):
        callback()


@pytest.fixture
def cleanup_paths(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Register big directories to delete at teardown, so that tmp dirs stay small.

    The server factories depend on this fixture, so it is torn down after every server has stopped.
    """
    paths: list[Path] = []

    def register(path: Path) -> Path:
        paths.append(path)
        return path

    yield register
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


class MoorageFactory(Protocol):
    def __call__(
        self,
        root: Path | None = None,
        *,
        workers: int = 1,
        storage: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunningServer: ...


class DistributionFactory(Protocol):
    def __call__(self, root: Path | None = None) -> RunningServer: ...


@pytest.fixture
def moorage_factory(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cleanup_paths: Callable[[Path], Path],
    teardown_callbacks: Callable[[Callable[[], None]], None],
) -> Iterator[MoorageFactory]:
    """Start `python -m registry serve` processes; `root` defaults to a fresh directory under tmp_path.

    `storage` is a `storage` settings section (e.g. `s3_server.storage_settings(bucket)`), passed to the server as
    MOORAGE_STORAGE__... variables; without it the server stores on the filesystem under `root`. `env` adds or
    overrides MOORAGE_* variables (e.g. {"MOORAGE_STORAGE__REDIRECT__DISABLE": "true"}).
    (`cleanup_paths` and `teardown_callbacks` are requested only so that they are torn down after these servers.)
    Run with cwd=tmp_path so that no config/moorage.yml is picked up; settings come from MOORAGE_* variables only.
    """
    servers: list[RunningServer] = []

    def start(
        root: Path | None = None,
        *,
        workers: int = 1,
        storage: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RunningServer:
        if root is None:
            root = tmp_path / f"moorage-root-{len(servers)}"
        settings = {
            "MOORAGE_STORAGE__FILESYSTEM__ROOT": str(root),
            "MOORAGE_STORAGE__DELETE": "true",
            "MOORAGE_LOG__LEVEL": "info",
            "MOORAGE_HTTP__ACCESS_LOG": "true",
        }
        settings.update(settings_env("storage", storage or {}))
        settings.update(env or {})
        full_env = _clean_env()
        full_env.update(settings)
        full_env.update(
            {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                "PYTHONUNBUFFERED": "1",
            }
        )

        def prepare(port: int) -> list[str]:
            argv = [sys.executable, "-m", "registry", "serve", "--host", "127.0.0.1", "--port", str(port)]
            return [*argv, "--workers", str(workers)] if workers != 1 else argv

        server = _start("moorage", prepare, env=full_env, cwd=tmp_path, root=root)
        server.moorage_env = settings
        servers.append(server)
        return server

    yield start
    _stop_all(servers, request)


@pytest.fixture
def moorage(request: pytest.FixtureRequest, moorage_factory: MoorageFactory) -> RunningServer:
    """One moorage server on a fresh root. Parametrize indirectly with the worker count: `[1, 2]`."""
    workers: int = getattr(request, "param", 1)
    return moorage_factory(workers=workers)


@pytest.fixture
def distribution_factory(
    request: pytest.FixtureRequest, tmp_path: Path, cleanup_paths: Callable[[Path], Path]
) -> Iterator[DistributionFactory]:
    """Start Debian's CNCF Distribution 2.8 (`docker-registry serve CONFIG`) with filesystem storage at `root`."""
    binary = (
        DISTRIBUTION_BINARY
        if Path(DISTRIBUTION_BINARY).is_file()
        else require_tool("docker-registry", "docker-registry")
    )
    servers: list[RunningServer] = []

    def start(root: Path | None = None) -> RunningServer:
        if root is None:
            root = tmp_path / f"distribution-root-{len(servers)}"
        root.mkdir(parents=True, exist_ok=True)

        def prepare(port: int) -> list[str]:
            config = tmp_path / f"distribution-{port}.yml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "version": 0.1,
                        "log": {"level": "warn"},
                        "storage": {
                            "filesystem": {"rootdirectory": str(root)},
                            "delete": {"enabled": True},
                            "maintenance": {"uploadpurging": {"enabled": False}},
                        },
                        "http": {"addr": f"127.0.0.1:{port}", "secret": "e2e-tests-distribution-secret"},
                    },
                    sort_keys=False,
                )
            )
            return [binary, "serve", str(config)]

        server = _start("docker-registry", prepare, env=_clean_env(), cwd=tmp_path, root=root)
        servers.append(server)
        return server

    yield start
    _stop_all(servers, request)


class SkopeoError(AssertionError):
    pass


@dataclass
class Skopeo:
    """Runs skopeo against plain-HTTP local registries, with an accept-anything signature policy."""

    binary: str
    workdir: Path

    def run(self, *args: str, check: bool = True, timeout: float = SKOPEO_TIMEOUT) -> subprocess.CompletedProcess[str]:
        argv = [self.binary, "--insecure-policy", *args]
        env = dict(os.environ, TMPDIR=str(self.workdir))
        try:
            result = subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=timeout, cwd=self.workdir, env=env
            )
        except subprocess.TimeoutExpired as e:
            raise SkopeoError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s; stderr: {e.stderr!r}") from e
        if check and result.returncode != 0:
            raise SkopeoError(
                f"`{' '.join(argv)}` exited with {result.returncode}\n"
                f"stderr:\n{result.stderr}\nstdout:\n{result.stdout}"
            )
        return result

    @staticmethod
    def platform_flags(platform: str | None) -> list[str]:
        """Global flags choosing one platform (`os/arch`) out of an index, e.g. `linux/arm64`."""
        if platform is None:
            return []
        os_name, _, arch = platform.partition("/")
        return ["--override-os", os_name, "--override-arch", arch]

    def copy(
        self, src: str, dest: str, *extra: str, platform: str | None = None, timeout: float = SKOPEO_TIMEOUT
    ) -> None:
        flags = ["--preserve-digests", "--retry-times=0"]
        if src.startswith("docker://"):
            flags.append("--src-tls-verify=false")
        if dest.startswith("docker://"):
            flags.append("--dest-tls-verify=false")
        self.run(*self.platform_flags(platform), "copy", *flags, *extra, src, dest, timeout=timeout)

    def push(self, layout: Path, tag: str, dest: str, *extra: str, timeout: float = SKOPEO_TIMEOUT) -> None:
        self.copy(f"oci:{layout}:{tag}", dest, *extra, timeout=timeout)

    def pull(
        self,
        src: str,
        layout: Path,
        tag: str,
        *extra: str,
        platform: str | None = None,
        timeout: float = SKOPEO_TIMEOUT,
    ) -> None:
        self.copy(src, f"oci:{layout}:{tag}", *extra, platform=platform, timeout=timeout)

    def inspect(self, ref: str, *extra: str, platform: str | None = None) -> dict[str, Any]:
        result = self.run(*self.platform_flags(platform), "inspect", "--tls-verify=false", *extra, ref)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def inspect_fails(self, ref: str) -> str:
        """Assert that `skopeo inspect ref` fails; return its stderr."""
        result = self.run("inspect", "--tls-verify=false", ref, check=False)
        assert result.returncode != 0, f"`skopeo inspect {ref}` succeeded, expected a failure:\n{result.stdout}"
        return result.stderr

    def inspect_raw(self, ref: str, *extra: str) -> bytes:
        """`skopeo inspect --raw`: the manifest (or with `--config`, the config) exactly as the registry served it."""
        argv = [self.binary, "--insecure-policy", "inspect", "--raw", "--tls-verify=false", *extra, ref]
        result = subprocess.run(argv, check=False, capture_output=True, timeout=SKOPEO_TIMEOUT, cwd=self.workdir)
        assert result.returncode == 0, f"`{' '.join(argv)}` exited with {result.returncode}: {result.stderr!r}"
        return result.stdout

    def list_tags(self, ref: str) -> list[str]:
        result = self.run("list-tags", "--tls-verify=false", ref)
        tags: list[str] = json.loads(result.stdout)["Tags"]
        return tags

    def delete(self, ref: str) -> None:
        self.run("delete", "--tls-verify=false", ref)


@pytest.fixture(scope="session")
def skopeo_binary() -> str:
    return require_tool("skopeo", "skopeo")


@pytest.fixture
def skopeo(skopeo_binary: str, tmp_path: Path) -> Skopeo:
    workdir = tmp_path / "skopeo-tmp"
    workdir.mkdir(exist_ok=True)
    return Skopeo(skopeo_binary, workdir)


BLOBS_PREFIX = "docker/registry/v2/blobs/"
REPOSITORIES_PREFIX = "docker/registry/v2/repositories/"


@dataclass
class S3Bucket:
    """A fresh bucket on the session's moto server, and what tests need to look inside it."""

    server: MotoServer
    name: str

    def storage(self, **s3_extra: Any) -> dict[str, Any]:
        """The `storage` settings section for `moorage_factory(storage=...)`: this bucket, path-style, 5 MiB parts."""
        return self.server.storage_settings(self.name, **s3_extra)

    def client(self) -> Any:
        return self.server.client()

    def keys(self, prefix: str = "") -> list[str]:
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    def blob_data_keys(self) -> dict[str, list[str]]:
        """digest -> every `.../data` object stored for it under blobs/ (exactly one each, when all is well)."""
        found: dict[str, list[str]] = {}
        for key in self.keys(BLOBS_PREFIX):
            parts = key[len(BLOBS_PREFIX) :].split("/")
            if parts[-1] == "data" and len(parts) == 4:
                found.setdefault(f"{parts[0]}:{parts[2]}", []).append(key)
        return found

    @staticmethod
    def data_key(digest: str) -> str:
        algorithm, _, hexdigest = digest.partition(":")
        return f"{BLOBS_PREFIX}{algorithm}/{hexdigest[:2]}/{hexdigest}/data"

    def read(self, key: str) -> bytes:
        body = self.client().get_object(Bucket=self.name, Key=key)["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def hash_object(self, key: str, algorithm: str = "sha256") -> str:
        """`algorithm:hex` of an object's content, streamed."""
        h = hashlib.new(algorithm)
        body = self.client().get_object(Bucket=self.name, Key=key)["Body"]
        try:
            for chunk in iter(lambda: body.read(1024 * 1024), b""):
                h.update(chunk)
        finally:
            body.close()
        return f"{algorithm}:{h.hexdigest()}"

    def multipart_uploads(self) -> list[dict[str, Any]]:
        uploads: list[dict[str, Any]] = self.client().list_multipart_uploads(Bucket=self.name).get("Uploads", [])
        return uploads


@pytest.fixture
def s3_bucket(s3_server: MotoServer, teardown_callbacks: Callable[[Callable[[], None]], None]) -> S3Bucket:
    """A fresh bucket on the session's moto S3 server, dropped after the test's servers have stopped."""
    bucket = S3Bucket(s3_server, s3_server.new_bucket())

    def drop() -> None:
        # Only to keep the long-lived moto server small: a failure here must not fail the test.
        with contextlib.suppress(Exception):
            s3_server.drop_bucket(bucket.name)

    teardown_callbacks(drop)
    return bucket
