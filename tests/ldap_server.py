"""A real LDAP directory for tests: Debian's OpenLDAP `slapd`, a throwaway database on 127.0.0.1, one per instance.

Choices, and why:

- Configuration is an old-style `slapd.conf` run with `slapd -f` (not cn=config): one file written at start, nothing
  to load over LDAP before the directory can be used. The database is `mdb` with `dbnosync` (a crash of the machine
  loses nothing a test needs; a killed slapd loses nothing either, the pages are in the OS's cache).
- Everything lives in a `tempfile.mkdtemp()` directory, removed by `stop()` (not pytest's tmp_path: under
  /tmp/pytest-of-root it is mode 700). slapd runs as whoever runs the tests, root included: it needs no port below
  1024 and no file outside that directory, so it is given no `-u`/`-g` and the directory needs no chown.
- slapd runs in the foreground (`-d none`: no detaching, and only the messages of level "any" go to its log: start,
  stop and errors, none per operation; `-d 0` would hide even why it could not start), so `stop()` and `pause()`
  signal that very process and wait for it. It listens on 127.0.0.1 only, on free ports: `url` (plain LDAP,
  StartTLS offered) and `ldaps_url` (TLS from the first byte). A port taken between choosing it and slapd binding it
  (another xdist worker) is retried with other ports; the root password is random per instance, so the readiness
  check (a bind as the root DN) cannot be answered by another instance that took the port.
- TLS: a throwaway CA and a server certificate (EC P-256, for 127.0.0.1 and localhost) are made with `cryptography`;
  clients verify against `ca_file`.
- Passwords are stored as `{SSHA}` hashes (made here, the way `slappasswd` makes them), so a simple bind with the
  right password succeeds and a wrong one fails with invalidCredentials (49).
- Locking is the ppolicy overlay's: a default policy (`cn=default,ou=policies,...`, `pwdLockout: TRUE`) applies to
  every account, and an account with `pwdAccountLockedTime: 000001010000Z` (the "locked until an administrator
  unlocks it" value) cannot bind, whatever the password: slapd answers invalidCredentials (49), the same as for a
  wrong password (it tells "account locked" only in a password-policy response control, if the client asked for
  one: `ppolicy_use_lockout`). `max_failures` > 0 also locks an account after that many wrong passwords in a row.
- Groups come in both usual shapes, with the same memberships: `groupOfNames` entries (`member: <user DN>`) under
  `groups_dn`, and `posixGroup` entries (`memberUid: <uid>`) of the same cn under `posix_groups_dn` (the two object
  classes are both structural, so one entry cannot be both). The memberof overlay also keeps `memberOf: <group DN>`
  (groupOfNames groups only) on each user, for clients that read group membership from the user's entry. A
  groupOfNames must have a member: an empty group holds the one value `member:` (the empty DN), which matches no
  user.
- The directory is changed while it runs through the methods here (`add_user`, `add_member`, `lock`, ...), which
  run `ldapmodify` as the root DN; they keep the memberships in this object too, so change group memberships only
  through them. `modify()` applies any other LDIF change.
- `pause()` stops slapd and `resume()` starts it again on the same ports with the same data (a refused connection
  meanwhile); `freeze()`/`thaw()` stop and continue the process instead (connections are accepted by the kernel but
  never answered: a hung server).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import ports

PACKAGES = "slapd ldap-utils"  # what to apt-get install when the tools are missing
SLAPD_CANDIDATES = ("/usr/sbin/slapd",)
MODULE_DIR = Path("/usr/lib/ldap")
SCHEMA_DIR = Path("/etc/ldap/schema")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
CLIENT_TOOLS = ("ldapadd", "ldapmodify", "ldapwhoami")

BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
PEOPLE_DN = f"ou=people,{BASE_DN}"
GROUPS_DN = f"ou=groups,{BASE_DN}"
POSIX_GROUPS_DN = f"ou=posixgroups,{BASE_DN}"
POLICIES_DN = f"ou=policies,{BASE_DN}"
DEFAULT_POLICY_DN = f"cn=default,{POLICIES_DN}"
LOCKED_FOREVER = "000001010000Z"  # ppolicy: locked until an administrator removes pwdAccountLockedTime

DEFAULT_USERS: dict[str, str] = {
    "alice": "alice-password",
    "bob": "bob-password",
    "carol": "carol-password",
    "dave": "dave-password",
}
# dave is a developer, but locked: the directory says he belongs, the bind says no.
DEFAULT_GROUPS: dict[str, list[str]] = {
    "developers": ["alice", "bob", "dave"],
    "admins": ["alice"],
    "readers": ["carol"],
}
DEFAULT_LOCKED: frozenset[str] = frozenset({"dave"})

FIRST_UID_NUMBER = 10000
USERS_GID_NUMBER = 10000  # every user's primary gidNumber (posixAccount needs one)
FIRST_GID_NUMBER = 20000


def slapd_binary() -> str | None:
    """The slapd executable (in /usr/sbin, which is not on every user's PATH); None if there is none."""
    for candidate in SLAPD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("slapd")


def missing_tools() -> list[str]:
    """What this module needs and cannot find; empty when it can run (`apt-get install` PACKAGES otherwise)."""
    missing = [] if slapd_binary() else ["slapd"]
    missing += [tool for tool in CLIENT_TOOLS if shutil.which(tool) is None]
    missing += [
        f"{MODULE_DIR}/{m}.so" for m in ("back_mdb", "ppolicy", "memberof") if not (MODULE_DIR / f"{m}.so").exists()
    ]
    missing += [str(SCHEMA_DIR / f"{s}.schema") for s in SCHEMAS if not (SCHEMA_DIR / f"{s}.schema").exists()]
    return missing


def ssha(password: str, salt: bytes | None = None) -> str:
    """An `{SSHA}` userPassword value, as `slappasswd -h {SSHA}` makes it."""
    salt = os.urandom(8) if salt is None else salt
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def escape_rdn_value(value: str) -> str:
    """A value escaped for use in a DN (RFC 4514), e.g. a uid holding a comma."""
    escaped = re.sub(r'([,+"\\<>;=])', r"\\\1", value).replace("\0", "\\00")
    if escaped.startswith((" ", "#")):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def _ldif(name: str, value: str) -> str:
    """One LDIF line; base64 when the value is not a SAFE-STRING (RFC 2849), e.g. non-ASCII or a leading space."""
    if value == "":
        return f"{name}:"
    safe = value.isascii() and value.isprintable() and not value.startswith((" ", ":", "<")) and not value.endswith(" ")
    return f"{name}: {value}" if safe else f"{name}:: {base64.b64encode(value.encode()).decode()}"


def _entry(dn: str, attributes: Iterable[tuple[str, str]]) -> str:
    return "\n".join([_ldif("dn", dn), *(_ldif(name, value) for name, value in attributes)]) + "\n"


def _modification(dn: str, *changes: tuple[str, str, Iterable[str]]) -> str:
    """An LDIF modify record: each change is (operation, attribute, values); replace with no values removes."""
    lines = [_ldif("dn", dn), "changetype: modify"]
    for operation, attribute, values in changes:
        lines += [f"{operation}: {attribute}", *(_ldif(attribute, value) for value in values), "-"]
    return "\n".join(lines) + "\n"


def _tail(path: Path, chars: int = 3000, offset: int = 0) -> str:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")[-chars:] or "(empty)"
    except OSError as error:
        return f"(no slapd log: {error})"


def _write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost: (ca, certificate, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Moorage test LDAP CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class LdapServer:
    """Start with `start()` (or `with LdapServer() as ldap:`), stop with `stop()`.

    `users` maps uid -> password, `groups` maps group cn -> member uids (every member must be a user), `locked` names
    the uids that cannot bind. The defaults are DEFAULT_USERS, DEFAULT_GROUPS and DEFAULT_LOCKED. Every user is
    `uid=<uid>,ou=people,dc=example,dc=org` (inetOrgPerson + posixAccount: cn "<Uid> Example", sn "Example", mail
    "<uid>@example.org", uidNumber from 10000, gidNumber 10000, homeDirectory /home/<uid>).

    Start-up takes about 50 ms (two cores), so a fresh server per test is affordable; a session-wide one is shared
    state: tests that change it should undo their changes or use their own.
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        groups: Mapping[str, Iterable[str]] | None = None,
        locked: Iterable[str] | None = None,
        *,
        max_failures: int = 0,
        log_path: Path | None = None,
    ) -> None:
        self._initial_users = dict(DEFAULT_USERS if users is None else users)
        self._initial_groups = {cn: list(uids) for cn, uids in (DEFAULT_GROUPS if groups is None else groups).items()}
        self._initial_locked = set(DEFAULT_LOCKED if locked is None else locked)
        for cn, uids in self._initial_groups.items():
            unknown = set(uids) - set(self._initial_users)
            if unknown:
                raise ValueError(f"group {cn!r} names unknown users: {sorted(unknown)}")
        if self._initial_locked - set(self._initial_users):
            raise ValueError(f"locked names unknown users: {sorted(self._initial_locked - set(self._initial_users))}")
        if max_failures < 0:
            raise ValueError("max_failures must be 0 (no lockout after failed binds) or more")
        self.max_failures = max_failures
        self._log_path_setting = log_path
        self._log_offset = 0
        self._admin_password = f"admin-{secrets.token_urlsafe(12)}"
        self.port = 0
        self.ldaps_port = 0
        self.base_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._frozen = False
        self._members: dict[str, list[str]] = {}
        self._uids: set[str] = set()
        self._gid_numbers: dict[str, int] = {}
        self._next_uid_number = FIRST_UID_NUMBER
        self._next_gid_number = FIRST_GID_NUMBER

    # ---- where things are

    @property
    def url(self) -> str:
        """Plain LDAP (StartTLS offered), e.g. ldap://127.0.0.1:38999/."""
        self._check_started()
        return f"ldap://127.0.0.1:{self.port}/"

    @property
    def ldaps_url(self) -> str:
        """LDAP over TLS from the first byte; verify with `ca_file`."""
        self._check_started()
        return f"ldaps://127.0.0.1:{self.ldaps_port}/"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def ca_file(self) -> Path:
        """The PEM file of the CA that signed the server's certificate (for 127.0.0.1 and localhost)."""
        return self._dir / "ca.pem"

    @property
    def log_path(self) -> Path:
        return self._log_path_setting or self._dir / "slapd.log"

    @property
    def base_dn(self) -> str:
        return BASE_DN

    @property
    def people_dn(self) -> str:
        return PEOPLE_DN

    @property
    def groups_dn(self) -> str:
        """Where the groupOfNames groups are (`member: <user DN>`)."""
        return GROUPS_DN

    @property
    def posix_groups_dn(self) -> str:
        """Where the posixGroup groups are (`memberUid: <uid>`), with the same cn and members as under groups_dn."""
        return POSIX_GROUPS_DN

    @property
    def admin_dn(self) -> str:
        return ADMIN_DN

    @property
    def admin_password(self) -> str:
        return self._admin_password

    def user_dn(self, uid: str) -> str:
        return f"uid={escape_rdn_value(uid)},{PEOPLE_DN}"

    def group_dn(self, cn: str) -> str:
        return f"cn={escape_rdn_value(cn)},{GROUPS_DN}"

    def posix_group_dn(self, cn: str) -> str:
        return f"cn={escape_rdn_value(cn)},{POSIX_GROUPS_DN}"

    @property
    def users(self) -> list[str]:
        """The uids in the directory, as this object made them."""
        return sorted(self._uids)

    def members(self, group: str) -> list[str]:
        """The uids in a group, as this object set them."""
        return list(self._members[group])

    @property
    def groups(self) -> list[str]:
        return list(self._members)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def _dir(self) -> Path:
        assert self.base_dir is not None, "the LDAP server is not started"
        return self.base_dir

    def _check_started(self) -> None:
        assert self.port, "the LDAP server is not started"

    # ---- life cycle

    def __enter__(self) -> LdapServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 15.0, attempts: int = 5) -> None:
        """Make a fresh directory with the users and groups given to the constructor, and serve it."""
        if self.base_dir is not None:
            raise RuntimeError("the LDAP server is already started: stop() it first")
        missing = missing_tools()
        if missing:
            raise RuntimeError(
                f"cannot run a test LDAP server, missing {', '.join(missing)}: apt-get install {PACKAGES}"
            )
        try:
            self._start(timeout, attempts)
        except BaseException:
            self.stop()  # no server or directory left behind by a failed start
            raise

    def _start(self, timeout: float, attempts: int) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="moorage-ldap-"))
        (self.base_dir / "data").mkdir()
        password_file = self.base_dir / "admin.pw"  # for the tools' -y: no password on a command line
        password_file.write_text(self._admin_password)
        password_file.chmod(0o600)
        _write_certificates(self.base_dir)
        (self.base_dir / "slapd.conf").write_text(self._config())
        for attempt in range(attempts):
            self.port, self.ldaps_port = ports.free_port(), ports.free_port()
            try:
                self._start_server(timeout)
                break
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError(f"slapd could not bind a port: {_tail(self.log_path)}") from None
        self._load()

    def _config(self) -> str:
        d = self._dir
        includes = "\n".join(f"include {SCHEMA_DIR / name}.schema" for name in SCHEMAS)
        return f"""\
{includes}

pidfile {d / "slapd.pid"}
argsfile {d / "slapd.args"}
modulepath {MODULE_DIR}
moduleload back_mdb
moduleload ppolicy
moduleload memberof

TLSCACertificateFile {d / "ca.pem"}
TLSCertificateFile {d / "server.pem"}
TLSCertificateKeyFile {d / "server.key"}
TLSVerifyClient never

database mdb
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ssha(self._admin_password)}
directory {d / "data"}
maxsize 268435456
dbnosync
index objectClass eq
index uid,cn,mail,member,memberUid eq

# Passwords: nobody reads them; anonymous may bind with them; the rest is readable by anyone, anonymous included.
access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to *
    by * read

overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint true

overlay ppolicy
ppolicy_default "{DEFAULT_POLICY_DN}"
ppolicy_use_lockout
"""

    def _start_server(self, timeout: float) -> None:
        slapd = slapd_binary()
        assert slapd is not None
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap()
        self._log_offset = self._log.tell()  # what this run wrote starts here
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        self._process = subprocess.Popen(
            [slapd, "-h", urls, "-f", str(self._dir / "slapd.conf"), "-d", "none"],
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        # "slapd starting" is logged once its listeners are bound (else it exits): only then is it sure that what
        # answers on these ports is this slapd, not another process that took one of them first.
        deadline = time.monotonic() + timeout
        listening = False
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._reap()
                log = _tail(self.log_path, offset=self._log_offset)
                if "Address already in use" in log:
                    raise _PortTaken
                raise RuntimeError(f"slapd exited at start; the end of its log ({self.log_path}):\n{log}")
            listening = listening or "slapd starting" in _tail(self.log_path, offset=self._log_offset)
            if listening and self._answers():
                return
            time.sleep(0.01)
        raise RuntimeError(
            f"slapd did not answer in {timeout:.0f} s; the end of its log ({self.log_path}):\n"
            f"{_tail(self.log_path, offset=self._log_offset)}"
        )

    def _answers(self) -> bool:
        try:
            return self._tool("ldapwhoami", "-o", "nettimeout=2", check=False, timeout=3).returncode == 0
        except RuntimeError:  # no answer in time
            return False

    def _reap(self) -> None:
        self._process = None
        self._frozen = False
        if self._log is not None:
            self._log.close()
            self._log = None

    def _terminate(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            if self._frozen:
                self._process.send_signal(signal.SIGCONT)
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reap()

    def stop(self) -> None:
        """Stop slapd and remove its directory; `start()` makes a fresh one."""
        self._terminate()
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
        self.port = self.ldaps_port = 0
        self._members.clear()
        self._uids.clear()
        self._gid_numbers.clear()
        self._next_uid_number, self._next_gid_number = FIRST_UID_NUMBER, FIRST_GID_NUMBER

    def pause(self) -> None:
        """Stop slapd but keep its data and ports: connections are refused until `resume()`.

        The ports lie below the kernel's ephemeral range (tests/ports.py), so no client connection takes one meanwhile;
        should anything else have, `resume()` fails, saying so.
        """
        self._dir  # noqa: B018 - asserts it is started
        self._terminate()

    def resume(self, timeout: float = 15.0) -> None:
        """Serve the same data on the same ports again after `pause()`."""
        self._dir  # noqa: B018
        if self.running:
            return
        try:
            self._start_server(timeout)
        except _PortTaken:
            raise RuntimeError(
                f"slapd could not bind its ports {self.port} and {self.ldaps_port} again: {_tail(self.log_path)}"
            ) from None

    def freeze(self) -> None:
        """Stop the slapd process (SIGSTOP): connections are accepted by the kernel but never answered."""
        assert self._process is not None, "slapd is not running"
        self._process.send_signal(signal.SIGSTOP)
        self._frozen = True
        # kill() returns before the process has stopped: wait until each of its threads has (Linux's /proc).
        tasks = Path(f"/proc/{self._process.pid}/task")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
            except OSError:  # a thread went away meanwhile
                continue
            if all(state in ("T", "t") for state in states):
                return
            time.sleep(0.001)
        raise RuntimeError(f"slapd (pid {self._process.pid}) did not stop on SIGSTOP")

    def thaw(self) -> None:
        """Let a frozen slapd go on (SIGCONT); it then answers what was sent meanwhile."""
        assert self._process is not None, "slapd is not running"
        self._process.send_signal(signal.SIGCONT)
        self._frozen = False

    # ---- the tools

    def _tool(
        self, tool: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        command = [tool, "-x", "-H", self.url, "-D", ADMIN_DN, "-y", str(self._dir / "admin.pw"), *args]
        # LDAPNOINIT: no /etc/ldap/ldap.conf nor ~/.ldaprc (their TLS or base settings are not ours).
        env = {**os.environ, "LDAPNOINIT": "1"}
        try:
            done = subprocess.run(
                command, input=input, capture_output=True, text=True, env=env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"{tool} got no answer from slapd in {timeout} s (paused or frozen?)") from error
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {(done.stdout + done.stderr).strip()[-3000:]}\ninput:\n{input}"
            )
        return done

    def add(self, ldif: str) -> None:
        """Add entries (LDIF, blank-line separated) as the root DN."""
        self._tool("ldapadd", input=ldif)

    def modify(self, ldif: str, *, relax: bool = False) -> None:
        """Apply LDIF changes (`changetype: ...` records) as the root DN; `relax` sends the Relax Rules control (for
        operational attributes such as pwdFailureTime)."""
        self._tool("ldapmodify", *(["-e", "relax"] if relax else []), input=ldif)

    # ---- the directory

    def _load(self) -> None:
        ou = "organizationalUnit"
        entries = [
            _entry(
                BASE_DN,
                [("objectClass", "dcObject"), ("objectClass", "organization"), ("dc", "example"), ("o", "Example")],
            ),
            _entry(POLICIES_DN, [("objectClass", ou), ("ou", "policies")]),
            _entry(DEFAULT_POLICY_DN, self._policy()),  # early: ppolicy logs each entry added before it
            *(
                _entry(dn, [("objectClass", ou), ("ou", dn[3:].split(",")[0])])
                for dn in (PEOPLE_DN, GROUPS_DN, POSIX_GROUPS_DN)
            ),
        ]
        entries += [
            self._user_entry(uid, password, uid in self._initial_locked)
            for uid, password in self._initial_users.items()
        ]
        for cn, uids in self._initial_groups.items():
            entries += self._group_entries(cn, uids)
        self.add("\n".join(entries))

    def _policy(self) -> list[tuple[str, str]]:
        return [
            ("objectClass", "device"),
            ("objectClass", "pwdPolicy"),
            ("cn", "default"),
            ("pwdAttribute", "userPassword"),
            ("pwdLockout", "TRUE"),  # without it, pwdAccountLockedTime is not enforced
            ("pwdMaxFailure", str(self.max_failures)),  # 0: no lockout after failed binds
            ("pwdLockoutDuration", "0"),  # a lockout lasts until unlock()
        ]

    def _user_entry(self, uid: str, password: str, locked: bool, mail: str | None = None) -> str:
        self._uids.add(uid)
        number = self._next_uid_number
        self._next_uid_number += 1
        name = uid.capitalize()
        attributes = [
            ("objectClass", "inetOrgPerson"),
            ("objectClass", "posixAccount"),
            ("uid", uid),
            ("cn", f"{name} Example"),
            ("givenName", name),
            ("sn", "Example"),
            ("displayName", f"{name} Example"),
            ("mail", mail if mail is not None else f"{uid}@example.org"),
            ("userPassword", ssha(password)),
            ("uidNumber", str(number)),
            ("gidNumber", str(USERS_GID_NUMBER)),
            ("homeDirectory", f"/home/{uid}"),
            ("loginShell", "/bin/sh"),
        ]
        if locked:
            attributes.append(("pwdAccountLockedTime", LOCKED_FOREVER))
        return _entry(self.user_dn(uid), attributes)

    def _group_entries(self, cn: str, uids: Iterable[str]) -> list[str]:
        members = list(dict.fromkeys(uids))
        if set(members) - self._uids:
            raise KeyError(f"no users {sorted(set(members) - self._uids)}")
        self._members[cn] = members
        self._gid_numbers[cn] = gid = self._next_gid_number
        self._next_gid_number += 1
        return [
            _entry(self.group_dn(cn), [("objectClass", "groupOfNames"), ("cn", cn), *self._member_values(members)]),
            _entry(
                self.posix_group_dn(cn),
                [
                    ("objectClass", "posixGroup"),
                    ("cn", cn),
                    ("gidNumber", str(gid)),
                    *(("memberUid", u) for u in members),
                ],
            ),
        ]

    def _member_values(self, members: list[str]) -> list[tuple[str, str]]:
        # groupOfNames MUST have a member: an empty group holds the empty DN, which is nobody.
        return [("member", self.user_dn(uid)) for uid in members] or [("member", "")]

    def _set_members(self, group: str, members: list[str]) -> None:
        if group not in self._members:
            raise KeyError(f"no group {group!r} (known: {sorted(self._members)})")
        self.modify(
            _modification(self.group_dn(group), ("replace", "member", [v for _, v in self._member_values(members)]))
            + "\n"
            + _modification(self.posix_group_dn(group), ("replace", "memberUid", members))
        )
        self._members[group] = members

    def add_user(
        self, uid: str, password: str, *, groups: Iterable[str] = (), locked: bool = False, mail: str | None = None
    ) -> str:
        """Add a user (inetOrgPerson + posixAccount) and put it in existing groups; returns its DN."""
        if uid in self._uids:
            raise ValueError(f"user {uid!r} exists")
        self.add(self._user_entry(uid, password, locked, mail))
        for group in groups:
            self.add_member(group, uid)
        return self.user_dn(uid)

    def remove_user(self, uid: str) -> None:
        """Delete a user and take it out of every group."""
        for group, members in self._members.items():
            if uid in members:
                self._set_members(group, [m for m in members if m != uid])
        self.modify(f"{_ldif('dn', self.user_dn(uid))}\nchangetype: delete\n")
        self._uids.discard(uid)

    def add_group(self, cn: str, members: Iterable[str] = ()) -> None:
        """Add a group in both shapes (groupOfNames under groups_dn, posixGroup under posix_groups_dn)."""
        if cn in self._members:
            raise ValueError(f"group {cn!r} exists")
        self.add("\n".join(self._group_entries(cn, members)))

    def add_member(self, group: str, uid: str) -> None:
        """Put a user in a group (both shapes); no change if it is there."""
        if uid not in self._uids:
            raise KeyError(f"no user {uid!r}")
        members = self._members.get(group, [])
        if uid not in members:
            self._set_members(group, [*members, uid])

    def remove_member(self, group: str, uid: str) -> None:
        """Take a user out of a group (both shapes); no change if it is not there."""
        members = self._members.get(group, [])
        if uid in members or group not in self._members:
            self._set_members(group, [m for m in members if m != uid])

    def set_password(self, uid: str, password: str) -> None:
        self.modify(_modification(self.user_dn(uid), ("replace", "userPassword", [ssha(password)])))

    def lock(self, uid: str) -> None:
        """Lock an account the ppolicy way: binds fail with invalidCredentials, whatever the password."""
        self.modify(_modification(self.user_dn(uid), ("replace", "pwdAccountLockedTime", [LOCKED_FOREVER])))

    def unlock(self, uid: str) -> None:
        """Unlock an account and forget its failed binds; no change if it is not locked."""
        # pwdFailureTime is NO-USER-MODIFICATION: only with the Relax Rules control may the root DN remove it.
        change = _modification(
            self.user_dn(uid), ("replace", "pwdAccountLockedTime", []), ("replace", "pwdFailureTime", [])
        )
        self.modify(change, relax=True)


class _PortTaken(Exception):
    pass
