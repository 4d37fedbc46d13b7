"""Reading the files the `auth:` section names before the server starts (imports nothing of the app: the serving
process must not load prometheus-client before its multiprocess directory is set)."""

from __future__ import annotations

from pathlib import Path

from registry.auth.bearer import ExternalIssuer, KeyFileError, load_private_key, load_public_keys
from registry.auth.htpasswd import HtpasswdError, HtpasswdFile
from registry.settings import ConfigError, Settings


def preflight(settings: Settings) -> None:
    """Read every file the `auth:` section names, before the server starts: a mistake is one line naming the key,
    not a traceback from each worker. Raises ConfigError."""
    auth = settings.auth
    if auth is None:
        return
    try:
        if auth.htpasswd is not None:
            HtpasswdFile(auth.htpasswd.path).load()
        token = auth.token
        if token.signing_key is not None:
            load_private_key(_read(token.signing_key, "auth.token.signing_key"), str(token.signing_key))
        for path in token.previous_keys:
            load_public_keys(_read(path, "auth.token.previous_keys"), str(path))
        if token.external is not None:
            ExternalIssuer(token.external)
    except (HtpasswdError, KeyFileError) as e:
        raise ConfigError(str(e)) from None


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{key} {path}: {e.strerror or e}") from None
