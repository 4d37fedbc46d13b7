"""Start and stop the two registries, and sample the memory and CPU of a server's whole process tree.

Each server runs in its own session (`start_new_session=True`), so every process it starts (uvicorn's worker
processes, multiprocessing helpers) carries the server's session id: that is how the sampler finds them, even if a
child were re-parented, and how `stop()` reaches all of them with one `killpg`.

Both registries can also run on S3: `Moto` starts moto's standalone S3 server (as the tests do, `tests/s3_server.py`:
`moto_server -H 127.0.0.1 -p PORT`, the test keys, path-style addressing) and hands out buckets (`S3Bucket`), which
`start_moorage(..., s3=bucket)` and `start_distribution(..., s3=bucket)` are pointed at. `Moto.requests` counts the
S3 requests moto logged for one bucket, by kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The environment without MOORAGE_* / REGISTRY_* settings that could leak into a server."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MOORAGE_", "REGISTRY_"))}


def log_tail(path: Path, limit: int = 2000) -> str:
    """The end of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return text if len(text) <= limit else "...\n" + text[-limit:]


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM to the process's group (it was started with start_new_session), SIGKILL after `timeout`, and whatever is
    left in the group after that. Idempotent. Returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


@dataclass
class Server:
    """A registry process (and its children) listening on 127.0.0.1:`port`, output in `log_path`."""

    kind: str
    port: int
    root: Path
    log_path: Path
    argv: list[str]
    proc: subprocess.Popen[bytes]
    _log_file: IO[bytes] | None = field(default=None, repr=False)
    # Distribution's debug listener (http.debug.addr: /metrics), when it was asked for.
    debug_port: int | None = None
    # Where the data is: "filesystem" (under `root`) or "s3" (`bucket`).
    storage: str = "filesystem"
    bucket: str | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log_tail(self, limit: int = 4000) -> str:
        return log_tail(self.log_path, limit)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after STOP_TIMEOUT. Idempotent. Returns the exit status."""
        stop_process_group(self.proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode


def autogroup_nice(pid: int | str = "self") -> int | None:
    """The nice value of the scheduler autogroup (one per session) that `pid` belongs to, if the kernel has them."""
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()
    except OSError:
        return None
    # "/autogroup-21 nice 0"
    return int(text.split()[-1])


def set_autogroup_nice(pid: int | str, nice: int) -> bool:
    """With autogroups (CONFIG_SCHED_AUTOGROUP), CPU is shared between sessions first, so a process's own nice value
    only ranks it within its session: to take priority over other sessions' work, the whole group's nice is set."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        return False
    return True


_server_nice: int | None = None


def set_server_nice(nice: int | None) -> None:
    """The CPU priority given to the session of every server started from now on (None: leave it)."""
    global _server_nice
    _server_nice = nice


def _start(kind: str, argv: list[str], *, env: dict[str, str], cwd: Path, port: int, root: Path) -> Server:
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
    server = Server(kind, port, root, log_path, argv, proc, log_file)
    if _server_nice is not None:
        set_autogroup_nice(proc.pid, _server_nice)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            code = server.proc.poll()
            if code is not None:
                raise ServerError(f"{server.kind} exited with status {code} before it was ready:\n{server.log_tail()}")
            try:
                response = client.get(f"{server.url}/v2/")
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return
                last = f"GET /v2/ answered {response.status_code}"
            time.sleep(0.05)
    raise ServerError(f"{server.kind} not ready after {READY_TIMEOUT:.0f}s ({last}):\n{server.log_tail()}")


def start_moorage(
    binary: str,
    root: Path,
    cwd: Path,
    workers: int | None,
    *,
    s3: S3Bucket | None = None,
    redirect: bool = True,
    env: dict[str, str] | None = None,
) -> Server:
    """`moorage serve` with filesystem storage at `root` (or, with `s3`, on that bucket), access log off, cwd with
    no config/moorage.yml. `redirect=False` streams blob GETs through Moorage instead of redirecting to S3; `env`
    adds settings (MOORAGE_...)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = clean_env()
    environment.update({"MOORAGE_HTTP__ACCESS_LOG": "false", "PYTHONUNBUFFERED": "1"})
    if s3 is None:
        environment["MOORAGE_STORAGE__FILESYSTEM__ROOT"] = str(root)
    else:
        environment.update(s3.moorage_env())
    if not redirect:
        environment["MOORAGE_STORAGE__REDIRECT__DISABLE"] = "true"
    environment.update(env or {})
    argv = [binary, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    server = _start("moorage", argv, env=environment, cwd=cwd, port=port, root=root)
    if s3 is not None:
        server.storage, server.bucket = "s3", s3.bucket
    return server


def wait_moorage_ready(server: Server, timeout: float = 120.0) -> float:
    """Wait until `/readyz` answers 200 (storage reachable, metadata index built); the seconds it took."""
    start = time.monotonic()
    last = "no answer yet"
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() - start < timeout:
            if not server.alive():
                raise ServerError(f"moorage exited with status {server.proc.poll()}:\n{server.log_tail()}")
            try:
                response = client.get(f"{server.url}/readyz")
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return time.monotonic() - start
                last = f"/readyz answered {response.status_code}: {response.text[:200]}"
            time.sleep(0.1)
    raise ServerError(f"moorage not ready after {timeout:.0f}s ({last})")


def distribution_config(
    root: Path, port: int, *, s3: S3Bucket | None = None, debug_port: int | None = None, health: bool = True
) -> dict[str, Any]:
    """Debian's /etc/docker/registry/config.yml, minus htpasswd auth, with our paths and the access log off.

    `s3`: the s3 storage driver on that bucket instead of the filesystem. `debug_port`: the debug listener on
    127.0.0.1 with Prometheus metrics at /metrics. `health=False` drops the storage-driver health check (a `Stat`
    every 10 s, which would show in the storage metrics)."""
    storage: dict[str, Any] = {
        "cache": {"blobdescriptor": "inmemory"},
        "delete": {"enabled": True},
        "maintenance": {"uploadpurging": {"enabled": False}},
    }
    if s3 is None:
        storage["filesystem"] = {"rootdirectory": str(root)}
    else:
        storage["s3"] = s3.distribution_params()
    http: dict[str, Any] = {
        "addr": f"127.0.0.1:{port}",
        "secret": "moorage-bench-distribution-secret",
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if debug_port is not None:
        http["debug"] = {"addr": f"127.0.0.1:{debug_port}", "prometheus": {"enabled": True, "path": "/metrics"}}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}, "fields": {"service": "registry"}},
        "storage": storage,
        "http": http,
    }
    if health:
        config["health"] = {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}}
    return config


def start_distribution(
    binary: str,
    root: Path,
    cwd: Path,
    *,
    s3: S3Bucket | None = None,
    debug: bool = False,
    health: bool = True,
) -> Server:
    """`docker-registry serve` on filesystem storage at `root` (or on the `s3` bucket); `debug`: with its debug
    listener and Prometheus metrics (`Server.debug_port`)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    debug_port = free_port() if debug else None
    config = cwd / f"distribution-{port}.yml"
    # JSON is YAML.
    settings = distribution_config(root, port, s3=s3, debug_port=debug_port, health=health)
    config.write_text(json.dumps(settings, indent=2))
    env = clean_env()
    if s3 is not None:
        # aws-sdk-go reads AWS_* from the environment; AWS_CA_BUNDLE in particular makes it panic at startup ("unable
        # to load custom CA bundle, HTTPClient's transport unsupported type"). The driver's parameters say it all.
        env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    server = _start("distribution", [binary, "serve", str(config)], env=env, cwd=cwd, port=port, root=root)
    server.debug_port = debug_port
    if s3 is not None:
        server.storage, server.bucket = "s3", s3.bucket
    return server


def export_source(revision: str, dest: Path) -> tuple[str, dict[str, str]]:
    """Moorage's code at `revision` (`git archive` of registry/ and storage_backends/ into `dest`, read from git's
    objects: the working tree and the index are not touched) and the environment that makes `moorage` run it
    (PYTHONPATH comes before the editable install's finder). Returns (the full commit, that environment)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "registry", "storage_backends"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return commit, {"PYTHONPATH": str(dest)}


def git_state(revision: str | None) -> dict[str, Any]:
    """What Moorage code a run measures: `revision`'s commit (see `export_source`) or, with None, the working tree:
    HEAD plus the files modified under registry/ and storage_backends/ (others edit the checkout concurrently)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    if revision is not None:
        return {"source": "commit", "commit": git("rev-parse", "--short", f"{revision}^{{commit}}"), "modified": []}
    dirty = git("status", "--porcelain", "--", "registry", "storage_backends")
    return {"source": "working tree", "commit": git("rev-parse", "--short", "HEAD"), "modified": dirty.splitlines()}


# -- S3 (moto) ----------------------------------------------------------------------------------------------------


def _s3_test_settings() -> tuple[str, str, str, str]:
    """(access key, secret key, region, moto_server binary) from tests/s3_server.py: one place for the test keys."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, moto_server_binary

    return ACCESS_KEY, SECRET_KEY, REGION, moto_server_binary()


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on an S3 endpoint reached by path-style addressing over plain HTTP (moto)."""

    endpoint_url: str
    bucket: str
    region: str
    access_key: str
    secret_key: str

    def moorage_env(self) -> dict[str, str]:
        return {
            "MOORAGE_STORAGE__BACKEND": "s3",
            "MOORAGE_STORAGE__S3__BUCKET": self.bucket,
            "MOORAGE_STORAGE__S3__ENDPOINT_URL": self.endpoint_url,
            "MOORAGE_STORAGE__S3__REGION": self.region,
            "MOORAGE_STORAGE__S3__ACCESS_KEY_ID": self.access_key,
            "MOORAGE_STORAGE__S3__SECRET_ACCESS_KEY": self.secret_key,
            "MOORAGE_STORAGE__S3__PATH_STYLE": "true",
        }

    def distribution_params(self) -> dict[str, Any]:
        """Distribution 2.8's `s3` driver. 2.8 has no `forcepathstyle` parameter: it always uses path-style
        addressing when `regionendpoint` is set (registry/storage/driver/s3-aws/s3.go, v2.8.2)."""
        return {
            "region": self.region,
            "bucket": self.bucket,
            "regionendpoint": self.endpoint_url,
            "accesskey": self.access_key,
            "secretkey": self.secret_key,
            "secure": False,
            "v4auth": True,
        }


# moto's request log (werkzeug): 127.0.0.1 - - [06/Dec/2026 04:11:44] "PUT /bucket/key HTTP/1.1" 200 -
# werkzeug colours some lines by status (206, 304, 4xx, 5xx) with ANSI escapes inside the quotes: removed first.
_MOTO_LOG_LINE = re.compile(r'"([A-Z]+) (/[^ "]*) HTTP/[0-9.]+" (\d{3})')
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def s3_request_kind(method: str, target: str, bucket: str) -> str | None:
    """What one request to `bucket` was ("GET", "HEAD", "PUT", "DELETE" of an object, "LIST", "PUT part",
    "POST ?uploads", ...); None if it is not about that bucket. The bucket's own HEAD (Moorage's availability probe)
    is "HEAD bucket"."""
    path, _, query = target.partition("?")
    if path != f"/{bucket}" and not path.startswith(f"/{bucket}/"):
        return None
    params = parse_qs(query, keep_blank_values=True)
    on_key = len(path) > len(bucket) + 2
    if not on_key:
        if method == "GET" and "uploads" in params:
            return "LIST uploads"
        if method == "GET" and "location" not in params and "versioning" not in params:
            return "LIST"
        if method == "POST" and "delete" in params:
            return "POST ?delete"
        return f"{method} bucket"
    if method == "POST":
        return "POST ?uploads" if "uploads" in params else "POST ?uploadId"
    if method == "PUT" and "partNumber" in params:
        return "PUT part"
    if method == "GET" and "uploadId" in params:
        return "LIST parts"
    if method == "DELETE" and "uploadId" in params:
        return "DELETE ?uploadId"
    return method


class Moto:
    """moto's standalone S3 server (`moto_server -H 127.0.0.1 -p P`) in its own session, so that stop() reaches
    every process it starts; its request log in `log_path` (one line per request, parsed by `requests`).

    moto keeps every object in memory; objects larger than its key buffer (~5 MiB) spill to temporary files: TMPDIR
    points them into `workdir`. Its ListObjects looks at every key of the bucket (moto/s3/models.py
    `list_objects`), so on moto a listing costs time in proportion to the bucket's size, prefix or not: real S3
    does not behave so."""

    READY_TIMEOUT = 30.0

    def __init__(self, workdir: Path) -> None:
        self.access_key, self.secret_key, self.region, self.binary = _s3_test_settings()
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"moto-{self.port}.log"
        self.tmpdir = workdir / "moto-tmp"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    def start(self) -> Moto:
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        env = clean_env()
        env.update(
            {
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "TMPDIR": str(self.tmpdir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [self.binary, "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        if _server_nice is not None:
            set_autogroup_nice(self.proc.pid, _server_nice)
        deadline = time.monotonic() + self.READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"moto_server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                httpx.get(f"{self.endpoint_url}/moto-api/", timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise ServerError(f"moto_server not ready after {self.READY_TIMEOUT:.0f}s: {self.log_tail()}")

    def log_tail(self, limit: int = 2000) -> str:
        return log_tail(self.log_path, limit)

    def stop(self) -> None:
        """SIGTERM to moto's process group, SIGKILL after STOP_TIMEOUT. Idempotent."""
        if self.proc is not None:
            stop_process_group(self.proc)

    def client(self) -> Any:
        """A boto3 S3 client for this server (one, made on first use; boto3 clients are thread-safe)."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
            )
        return self._client

    def new_bucket(self, name: str) -> S3Bucket:
        self.client().create_bucket(Bucket=name)
        return S3Bucket(self.endpoint_url, name, self.region, self.access_key, self.secret_key)

    def drop_bucket(self, name: str) -> int:
        """Delete every object of the bucket (and its multipart uploads), then the bucket: keeps moto small.
        Returns the number of objects deleted."""
        client = self.client()
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        deleted = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        client.delete_bucket(Bucket=name)
        return deleted

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object whose key starts with `prefix`; how many."""
        client = self.client()
        deleted = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        return deleted

    def log_offset(self) -> int:
        """Where moto's log ends now: pass it to `requests` later."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def requests(self, bucket: str, start: int, end: int | None = None) -> Counter[str]:
        """The requests to `bucket` that moto logged between two `log_offset`s, by kind (`s3_request_kind`)."""
        with self.log_path.open("rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
        kinds: Counter[str] = Counter()
        for match in _MOTO_LOG_LINE.finditer(_ANSI_ESCAPE.sub("", data.decode(errors="replace"))):
            kind = s3_request_kind(match.group(1), match.group(2), bucket)
            if kind is not None:
                kinds[kind] += 1
        return kinds


@dataclass
class _ProcInfo:
    pid: int
    ppid: int
    comm: str
    session: int
    cpu_ticks: int
    rss_pages: int
    start_time: int


def _read_proc(pid: int) -> _ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    close = data.rindex(b")")
    rest = data[close + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3].
    return _ProcInfo(
        pid=pid,
        ppid=int(rest[4 - 3]),
        comm=data[data.index(b"(") + 1 : close].decode(errors="replace"),
        session=int(rest[6 - 3]),
        cpu_ticks=int(rest[14 - 3]) + int(rest[15 - 3]),
        rss_pages=int(rest[24 - 3]),
        start_time=int(rest[22 - 3]),
    )


def session_processes(session: int) -> list[_ProcInfo]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _read_proc(int(name))
            if info is not None and info.session == session:
                out.append(info)
    return out


class TreeSampler:
    """Samples RSS (summed over the process tree) and CPU time (utime + stime, summed) every `interval` seconds.

    CPU time per process is the last value seen (keyed by pid and start time), so a child that exits keeps what it
    used up to its last sample. `mark(name)` closes a phase: the CPU seconds and the peak RSS since the last mark.
    """

    def __init__(self, session: int, interval: float = 0.1) -> None:
        self.session = session
        self.interval = interval
        self._cpu: dict[tuple[int, int], int] = {}
        self._procs: dict[tuple[int, int], dict[str, Any]] = {}
        self.peak_rss = 0
        self.peak_procs = 0
        self.samples = 0
        self._phase_peak = 0
        self._phase_cpu_start = 0.0
        self.phases: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        procs = session_processes(self.session)
        rss = sum(p.rss_pages for p in procs) * PAGE_SIZE
        with self._lock:
            for p in procs:
                key = (p.pid, p.start_time)
                self._cpu[key] = p.cpu_ticks
                info = self._procs.setdefault(key, {"pid": p.pid, "ppid": p.ppid, "comm": p.comm, "peak_rss": 0})
                info["peak_rss"] = max(info["peak_rss"], p.rss_pages * PAGE_SIZE)
            self.samples += 1
            self.peak_rss = max(self.peak_rss, rss)
            self._phase_peak = max(self._phase_peak, rss)
            self.peak_procs = max(self.peak_procs, len(procs))

    @property
    def cpu_seconds(self) -> float:
        with self._lock:
            return sum(self._cpu.values()) / CLOCK_TICKS

    def processes(self) -> list[dict[str, Any]]:
        """Every process seen: pid, parent, command name, its own peak RSS (MiB) and CPU seconds."""
        with self._lock:
            return [
                {
                    "pid": info["pid"],
                    "ppid": info["ppid"],
                    "comm": info["comm"],
                    "peak_rss_mib": round(info["peak_rss"] / MIB, 1),
                    "cpu_s": round(self._cpu[key] / CLOCK_TICKS, 2),
                }
                for key, info in self._procs.items()
            ]

    def mark(self, phase: str) -> dict[str, float]:
        """Close a phase: the server's CPU seconds and peak RSS (MiB) since the previous mark."""
        self.sample()
        cpu = self.cpu_seconds
        with self._lock:
            entry = {
                "server_cpu_s": round(cpu - self._phase_cpu_start, 3),
                "peak_rss_mib": round(self._phase_peak / MIB, 1),
            }
            self.phases[phase] = entry
            self._phase_cpu_start = cpu
            self._phase_peak = 0
        return entry

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sample()


# -- what else uses the machine -----------------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores; /proc/stat, iowait and idle excluded)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def harness_cpu_seconds() -> tuple[float, float]:
    """(this process, its reaped children: skopeo, curl, wrk, dd) CPU seconds so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _command(pid: int, comm: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return comm
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    return (text[:90] + "...") if len(text) > 90 else (text or f"[{comm}]")


@dataclass
class CpuSnapshot:
    """Machine busy time, the harness's own CPU and every process's CPU: who else used the machine in a window."""

    busy: float
    own: float
    children: float
    procs: dict[tuple[int, int], _ProcInfo]

    @classmethod
    def take(cls) -> CpuSnapshot:
        own, children = harness_cpu_seconds()
        procs = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                info = _read_proc(int(name))
                if info is not None:
                    procs[(info.pid, info.start_time)] = info
        return cls(machine_busy_seconds(), own, children, procs)

    def top_others(self, earlier: CpuSnapshot, exclude_session: int | None, limit: int = 3) -> list[str]:
        """The processes (not the server's, not the harness and its clients) that used the most CPU since."""
        me = os.getpid()
        used = []
        for key, info in self.procs.items():
            if info.pid == me or info.ppid == me or info.session == exclude_session:
                continue
            before = earlier.procs.get(key)
            seconds = (info.cpu_ticks - (before.cpu_ticks if before else 0)) / CLOCK_TICKS
            if seconds >= 0.05:
                used.append((seconds, info))
        used.sort(key=lambda x: -x[0])
        return [f"{sec:.2f}s pid {info.pid} {_command(info.pid, info.comm)}" for sec, info in used[:limit]]

    def since(self, earlier: CpuSnapshot, server_cpu: float, server_session: int | None = None) -> dict[str, Any]:
        busy = self.busy - earlier.busy
        own = self.own - earlier.own
        clients = self.children - earlier.children
        return {
            "machine_busy_cpu_s": round(busy, 2),
            "client_cpu_s": round(clients, 2),
            "harness_cpu_s": round(own, 2),
            # Everything else: other people's processes on this machine, and the kernel's threads.
            "background_cpu_s": round(max(0.0, busy - own - clients - server_cpu), 2),
            "top_others": self.top_others(earlier, server_session),
        }


def wait_for_idle(max_wait: float, threshold_cores: float, window: float = 1.0) -> dict[str, Any]:
    """Wait (at most `max_wait` s) until other processes use less than `threshold_cores` over `window` seconds."""
    start = time.monotonic()
    load = 0.0
    while True:
        before = CpuSnapshot.take()
        time.sleep(window)
        after = CpuSnapshot.take()
        acct = after.since(before, 0.0)
        load = acct["background_cpu_s"] / window
        waited = time.monotonic() - start
        if load < threshold_cores or waited >= max_wait:
            return {"waited_s": round(waited, 1), "background_cores": round(load, 2), "top_others": acct["top_others"]}
