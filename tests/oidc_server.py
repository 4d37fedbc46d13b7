"""A real OpenID Connect provider for tests: panva's certified `oidc-provider` (Node) in tests/oidc_provider/.

One confidential client (`client_secret_basic`, `client_secret_post` accepted too; authorization code only, PKCE S256
required), the accounts given, its own login page and no consent page, on http://127.0.0.1:PORT (a free port, one
provider per test process or per test). The ID token carries `sub`, `preferred_username`, `name`, `email`,
`email_verified` and `groups`, as its scopes (`openid profile email groups`) grant. Every authorization request shows
the login page (`sso=True`: a second one in the same browser goes straight back). See tests/oidc_provider/provider.mjs.

The login page (GET /interaction/UID): a form with inputs `#login` / `name=login`, `#password` / `name=password` and
a button `#submit`; a refused sign-in shows the form again (200) with `#error`. `#cancel` aborts (access_denied).

It signs with an RSA key of its own (a JWK set file in its temporary directory); `restart(new_key=True)` starts it
again on the same port with a new key (a new `kid`), for key-rotation tests. Its state (sessions, codes) is in memory:
a restart forgets it. Node ≥ 20.12 and npm are needed; `ensure_node_modules()` runs `npm ci` once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NotRequired, TypedDict

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.ports import free_port

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
SCRIPT = PROVIDER_DIR / "provider.mjs"
NODE_MODULES = PROVIDER_DIR / "node_modules"
STAMP = NODE_MODULES / ".moorage-lock-sha256"  # the package-lock.json that node_modules was installed from
MIN_NODE = (20, 12)  # oidc-provider 9 uses crypto.hash (it prefers 22 LTS and says so on stderr, but runs on 20)
NPM_TIMEOUT = 600.0
SCOPE = "openid profile email groups"
HOST = "127.0.0.1"
EXIT_ADDRESS_IN_USE = 98  # provider.mjs's exit status when its port is taken


class Account(TypedDict):
    """One user: the key of `accounts` is the login (and, unless `sub` says otherwise, the `sub`)."""

    password: str
    email: NotRequired[str]
    email_verified: NotRequired[bool]  # true by default
    name: NotRequired[str]
    groups: NotRequired[list[str]]
    sub: NotRequired[str]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as error:
        return f"(no provider log: {error})"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name!r} not found: the OIDC provider for tests needs Node.js >= {'.'.join(map(str, MIN_NODE))} and npm"
        )
    return found


@functools.cache
def node_binary() -> str:
    """The path of `node`, checked to be recent enough; RuntimeError otherwise (Debian 12's own nodejs is 18)."""
    node = _tool("node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    found = re.match(r"v(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < MIN_NODE:
        raise RuntimeError(
            f"{node} is Node.js {version}: oidc-provider 9 needs >= {'.'.join(map(str, MIN_NODE))} (22 LTS preferred)"
        )
    return node


def _lock_digest() -> str:
    return hashlib.sha256((PROVIDER_DIR / "package-lock.json").read_bytes()).hexdigest()


def _installed() -> bool:
    try:
        return STAMP.read_text().strip() == _lock_digest()
    except OSError:
        return False


def ensure_node_modules() -> None:
    """`npm ci` in tests/oidc_provider, unless node_modules already holds what package-lock.json says.

    Test processes (pytest-xdist workers) take turns through a file lock: the first installs, the others wait for it
    and find it done. The lock file is in the temporary directory, not the tree.
    """
    if _installed():
        return
    npm = _tool("npm")
    node_binary()  # a clear message for a too old Node, rather than a failure at start
    path_hash = hashlib.sha256(str(PROVIDER_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"moorage-oidc-npm-{path_hash}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _installed():
                return
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=PROVIDER_DIR,
                env={**os.environ, "CI": "true", "npm_config_update_notifier": "false"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"npm ci in {PROVIDER_DIR} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}"
                )
            STAMP.write_text(_lock_digest() + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def new_signing_key() -> dict[str, Any]:
    """A fresh private RSA JWK (RS256, `use: sig`) with a random `kid`."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.pop("key_ops", None)  # PyJWT writes ["sign"]: oidc-provider would publish it and not verify with it itself
    jwk.update(kid=uuid.uuid4().hex, alg="RS256", use="sig")
    return jwk


class OidcProvider:
    """Start with `start()` (or `with`), stop with `stop()`; `restart(new_key=True)` rotates the signing key.

    `redirect_uris` may hold `*` in place of a port (`http://127.0.0.1:*/ui/auth/callback`: any port), or be given
    (replaced) at `start()` / `restart()`, once the relying party's port is known. `id_token_ttl` (seconds) is the
    lifetime of the ID tokens and access tokens.
    """

    def __init__(
        self,
        accounts: Mapping[str, Account],
        client_id: str = "moorage",
        client_secret: str = "moorage-oidc-test-secret",
        redirect_uris: Sequence[str] = (),
        *,
        post_logout_redirect_uris: Sequence[str] = (),
        id_token_ttl: int = 3600,
        sso: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.accounts = dict(accounts)
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        self.post_logout_redirect_uris = list(post_logout_redirect_uris)
        self.id_token_ttl = id_token_ttl
        self.sso = sso
        self.keys: list[dict[str, Any]] = []  # private JWKs, the signing one first
        self._port = 0
        self._log_path = log_path
        self._base_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        assert self._port, "the provider is not started"
        return self._port

    @property
    def issuer(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def kid(self) -> str:
        """The `kid` of the key the provider signs with now."""
        assert self.keys, "the provider is not started"
        kid: str = self.keys[0]["kid"]
        return kid

    @property
    def log_path(self) -> Path:
        if self._log_path is not None:
            return self._log_path
        assert self._base_dir is not None, "the provider is not started"
        return self._base_dir / "provider.log"

    def log(self) -> str:
        """The end of the provider's log (one line per request, and its errors)."""
        return _tail(self.log_path)

    def __enter__(self) -> OidcProvider:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, redirect_uris: Sequence[str] | None = None, timeout: float = 30.0, attempts: int = 3) -> None:
        """Install node_modules if needed, then start on a free port; `redirect_uris` replaces the client's list."""
        assert self._process is None, "the provider is already started"
        if redirect_uris is not None:
            self.redirect_uris = list(redirect_uris)
        ensure_node_modules()
        self._base_dir = Path(tempfile.mkdtemp(prefix="moorage-oidc-"))
        if not self.keys:
            self.keys = [new_signing_key()]
        try:
            # A port taken between choosing it and the provider binding it (another xdist worker): another one.
            for attempt in range(attempts):
                self._port = free_port()
                if self._launch(timeout):
                    return
                if attempt == attempts - 1:
                    raise RuntimeError(f"the OIDC provider could not bind a port: {self.log()}")
        except BaseException:
            self.stop()
            raise

    def restart(
        self, new_key: bool = False, *, keep_old_key: bool = False, redirect_uris: Sequence[str] | None = None
    ) -> None:
        """Stop and start again on the same port (sessions and codes are forgotten).

        `new_key`: sign with a new key (a new `kid`); `keep_old_key`: its JWKS still publishes the previous one too
        (the usual overlap during a rotation), otherwise only the new one.
        """
        assert self._port and self._base_dir is not None, "the provider is not started"
        if redirect_uris is not None:
            self.redirect_uris = list(redirect_uris)
        self._terminate()
        if new_key:
            self.keys = [new_signing_key(), *(self.keys if keep_old_key else [])]
        deadline = time.monotonic() + 10
        while not self._launch(30.0):  # the port was ours a moment ago: wait for it rather than move
            if time.monotonic() > deadline:
                raise RuntimeError(f"the OIDC provider could not bind its port {self._port} again: {self.log()}")
            time.sleep(0.2)

    def _environment(self) -> dict[str, str]:
        assert self._base_dir is not None
        jwks_file = self._base_dir / "jwks.json"
        jwks_file.write_text(json.dumps({"keys": self.keys}))
        client = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
        }
        return {
            **os.environ,
            "OIDC_HOST": HOST,
            "OIDC_PORT": str(self._port),
            "OIDC_CLIENT": json.dumps(client),
            "OIDC_ACCOUNTS": json.dumps(self.accounts),
            "OIDC_JWKS_FILE": str(jwks_file),
            "OIDC_ID_TOKEN_TTL": str(self.id_token_ttl),
            "OIDC_SSO": "1" if self.sso else "0",
        }

    def _launch(self, timeout: float) -> bool:
        """Start the process and wait for its READY line; False if its port was taken."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _terminate()
        self._process = subprocess.Popen(
            [node_binary(), str(SCRIPT)],
            cwd=PROVIDER_DIR,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self._process.stdout is not None
        line = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    self._terminate()
                    raise RuntimeError(f"the OIDC provider was not ready in {timeout:.0f} s: {self.log()}")
                if selector.select(left):
                    chunk = os.read(self._process.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    line += chunk
        if line.startswith(f"READY {self.issuer}".encode()):
            return True
        status = self._process.wait(timeout=10)
        self._terminate()
        if status == EXIT_ADDRESS_IN_USE:
            return False
        raise RuntimeError(f"the OIDC provider exited at start ({status}): {line.decode(errors='replace')}{self.log()}")

    def _terminate(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the provider and remove its temporary directory (its log too, unless `log_path` was given)."""
        self._terminate()
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
