"""Running the server: uvicorn with our logging, the metrics directory its workers share, the metrics port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from types import FrameType

from registry.http_limits import HttpLimits, bounded_protocol, ensure_file_descriptors
from registry.logs import logging_config
from registry.settings import ConfigError, Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus-client when it is first imported


@contextlib.contextmanager
def metrics_directory(settings: Settings) -> Iterator[None]:
    """Several processes count into one set of files: a fresh directory per start, removed at exit.

    Needed with several workers, and with a separate metrics port (served by this process, not by a worker).
    A directory the operator chose (PROMETHEUS_MULTIPROC_DIR already set) is used as it is.
    """
    needed = settings.metrics.enabled and (settings.http.workers > 1 or settings.metrics.port is not None)
    if not needed or os.environ.get(MULTIPROC_ENV):
        yield
        return
    directory = tempfile.mkdtemp(prefix="moorage-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def metrics_port(settings: Settings) -> Iterator[None]:
    metrics = settings.metrics
    if not metrics.enabled or metrics.port is None:
        yield
        return
    from registry.metrics import MetricsServer  # only now: prometheus-client reads MULTIPROC_ENV at import

    credentials = None
    if metrics.username is not None and metrics.password is not None:
        credentials = (metrics.username, metrics.password.get_secret_value())
    server = MetricsServer(metrics.host or settings.http.host, metrics.port, credentials)
    server.start()
    try:
        yield
    finally:
        server.close()


class _Stopped(Exception):
    """SIGTERM or SIGINT, after uvicorn has drained its connections."""


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


@contextlib.contextmanager
def exit_quietly_on_stop_signals() -> Iterator[None]:
    """uvicorn drains on SIGTERM/SIGINT, then raises the signal again for whatever handler was there before. With
    the default one the process would die at once, skipping our cleanup; with this one it unwinds and exits 0."""
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_files(settings: Settings) -> None:
    """The TLS and auth files the settings name, read once before uvicorn starts. Raises ConfigError."""
    tls = settings.http.tls
    if tls is not None:
        for key, path in (("http.tls.certificate", tls.certificate), ("http.tls.key", tls.key)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise ConfigError(f"{key} {path}: {e.strerror or e}") from None
    from registry.auth.preflight import preflight

    preflight(settings)


def run(settings: Settings) -> None:
    import uvicorn

    try:
        check_files(settings)
    except ConfigError as e:
        print(f"moorage: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    tls = settings.http.tls
    limits, warning = ensure_file_descriptors(HttpLimits.from_settings(settings.http))
    if warning:
        print(f"moorage: warning: {warning}", file=sys.stderr)
    trusted_proxies = settings.http.trusted_proxies
    with exit_quietly_on_stop_signals(), metrics_directory(settings), metrics_port(settings):
        uvicorn.run(
            "registry.app:create_app",
            factory=True,
            host=settings.http.host,
            port=settings.http.port,
            workers=settings.http.workers,
            loop="uvloop",
            http=bounded_protocol(limits),
            ws="none",  # no WebSocket routes: an upgrade must not hand the connection to a protocol without limits
            # uvicorn's default trusts X-Forwarded-For from 127.0.0.1, so any local client could pick its address.
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies),
            log_config=logging_config(settings.log.format, settings.log.level),
            log_level=settings.log.level,
            access_log=False,  # ours replaces it (http.access_log): it knows routes, repositories, request ids
            server_header=False,
            timeout_graceful_shutdown=settings.http.drain_timeout,
            ssl_certfile=str(tls.certificate) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
