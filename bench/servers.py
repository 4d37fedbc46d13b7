"""Start and stop the two registries, and sample the memory and CPU of a server's whole process tree.

Each server runs in its own session (`start_new_session=True`), so every process it starts (uvicorn's worker
processes, multiprocessing helpers) carries the server's session id: that is how the sampler finds them, even if a
child were re-parented, and how `stop()` reaches all of them with one `killpg`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

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

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after STOP_TIMEOUT. Idempotent. Returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT)
        # Anything left in the group (it should be empty) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
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


def start_moorage(binary: str, root: Path, cwd: Path, workers: int | None) -> Server:
    """`moorage serve` with filesystem storage at `root`, access log off, cwd with no config/moorage.yml."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = clean_env()
    env.update(
        {
            "MOORAGE_STORAGE__FILESYSTEM__ROOT": str(root),
            "MOORAGE_HTTP__ACCESS_LOG": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    argv = [binary, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return _start("moorage", argv, env=env, cwd=cwd, port=port, root=root)


def distribution_config(root: Path, port: int) -> dict[str, Any]:
    """Debian's /etc/docker/registry/config.yml, minus htpasswd auth, with our paths and the access log off."""
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}, "fields": {"service": "registry"}},
        "storage": {
            "cache": {"blobdescriptor": "inmemory"},
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            "secret": "moorage-bench-distribution-secret",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }


def start_distribution(binary: str, root: Path, cwd: Path) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = cwd / f"distribution-{port}.yml"
    # JSON is YAML.
    config.write_text(json.dumps(distribution_config(root, port), indent=2))
    return _start("distribution", [binary, "serve", str(config)], env=clean_env(), cwd=cwd, port=port, root=root)


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
