"""A real PostgreSQL for tests: Debian's server binaries, a throwaway cluster on 127.0.0.1, one per test process.

The cluster lives in a `tempfile.mkdtemp()` directory (not pytest's tmp_path: under /tmp/pytest-of-root it is mode 700,
and as root the server runs as the `postgres` user, since initdb refuses to run as root). Authentication is `trust`
for the superuser `moorage`; durability is off (fsync, synchronous_commit, full_page_writes): a crash loses nothing a
test needs.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from tests.ports import free_port

USER = "moorage"
SYSTEM_USER = "postgres"  # who runs the server when the tests run as root
BIN_GLOB_ROOT = Path("/usr/lib/postgresql")
PACKAGE = "postgresql"


def postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb, pg_ctl and postgres; None if there is none."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for candidate in BIN_GLOB_ROOT.glob("*/bin"):
        version = candidate.parent.name
        if not re.fullmatch(r"\d+(\.\d+)*", version):
            continue
        if all((candidate / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            found.append((tuple(int(part) for part in version.split(".")), candidate))
    return max(found)[1] if found else None


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as error:
        return f"(no server log: {error})"


class PostgresServer:
    """Start with `start()`, stop with `stop()`; each test takes a fresh database with `new_database()`."""

    def __init__(self, bin_dir: Path, log_path: Path) -> None:
        self.bin_dir = bin_dir
        self.log_path = log_path
        self.port = 0
        self.base_dir: Path | None = None
        self._as_root = os.geteuid() == 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "the server is not started"
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base_dir is not None, "the server is not started"
        return self.base_dir / "socket"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", SYSTEM_USER, "--", *command] if self._as_root else command

    def _run(self, tool: str, *args: str) -> None:
        assert self.base_dir is not None
        done = subprocess.run(
            self._command(tool, *args), cwd=self.base_dir, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        try:
            self._start(timeout, attempts)
        except BaseException:
            self.stop()  # no server or directory left behind by a failed start
            raise

    def _start(self, timeout: float, attempts: int) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="moorage-pg-"))
        self.socket_dir.mkdir()
        if self._as_root:
            try:
                owner = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, but there is no '{SYSTEM_USER}' user to run PostgreSQL as: "
                    f"install the {PACKAGE} package"
                ) from None
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            f"--username={USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        # A port taken between choosing it and the server binding it (another xdist worker) is retried on another.
        for attempt in range(attempts):
            self.port = free_port()
            try:
                self._start_server(timeout)
                return
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError(f"PostgreSQL could not bind a port: {_tail(self.log_path)}") from None

    def _start_server(self, timeout: float) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        options = [f"-c{name}={value}" for name, value in settings.items()]
        # Run `postgres` itself (not `pg_ctl start`), so an early exit shows at once; `pg_ctl stop` stops it.
        self._process = subprocess.Popen(
            self._command("postgres", "-D", str(self.data_dir), *options),
            cwd=self.base_dir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                self._log.close()
                self._log = None
                log = _tail(self.log_path)
                if "could not bind" in log or "Address already in use" in log:
                    raise _PortTaken
                raise RuntimeError(f"PostgreSQL exited at start; the end of its log ({self.log_path}):\n{log}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(
            f"PostgreSQL did not accept connections in {timeout:.0f} s; the end of its log ({self.log_path}):\n"
            f"{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        if self._process is not None:
            subprocess.run(
                self._command("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w"),
                cwd=self.base_dir,
                capture_output=True,
                check=False,
            )
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def _admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), autocommit=True)

    def new_database(self) -> str:
        """Create a database with a unique name; returns its URL."""
        name = f"moorage_{uuid.uuid4().hex[:16]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database (a name, or a URL from `new_database()`), terminating its connections first."""
        name = name.rsplit("/", 1)[-1]
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class _PortTaken(Exception):
    pass
