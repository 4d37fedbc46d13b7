"""Signing in against an LDAP directory (OpenLDAP, Active Directory, FreeIPA, ...), with `ldap3` (pure Python, so
nothing to compile; its calls block, so they run on threads).

A login looks the user up (`user_filter` under `user_base`, as `bind_dn` or anonymously), binds as the entry it found
with the password given, and reads the user's groups (`group_filter` under `group_base`, the names in
`group_attribute`). A wrong password, an unknown user or a locked account (the directory refuses the bind) is a
failed login; a directory that cannot be reached is a 503, so clients retry instead of asking for a new password.
Logins are remembered like htpasswd ones (`auth.cache_ttl`), so a group change takes effect within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import warnings
from typing import Any
from urllib.parse import urlsplit

from registry.auth.access import Identity
from registry.auth.directory import directory_unavailable
from registry.auth.settings import LdapSettings

with warnings.catch_warnings():
    # ldap3 2.9.1 touches pyasn1 APIs that pyasn1 >= 0.6.1 marks deprecated, at import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from ldap3 import NONE, SUBTREE, Connection, Server, Tls
    from ldap3.core.exceptions import LDAPException
    from ldap3.utils.conv import escape_filter_chars
# ldap3 checks the server's host name with ssl.match_hostname (deprecated in 3.7, still there in 3.11; the context
# verifies the chain): not a warning for every TLS login.
warnings.filterwarnings("ignore", message="ssl.match_hostname", category=DeprecationWarning)

logger = logging.getLogger("moorage.auth.ldap")
INVALID_CREDENTIALS = 49
MAX_USERNAME = 256
MAX_GROUPS = 200
MAX_GROUP_NAME = 256


class LdapDirectory:
    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        tls = None
        if settings.url.startswith("ldaps://") or settings.start_tls:
            tls = Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
                version=ssl.PROTOCOL_TLS_CLIENT,
            )
        where = urlsplit(settings.url)
        self._ldaps = where.scheme == "ldaps"
        self._host = where.hostname or "localhost"
        self._port = where.port or (636 if self._ldaps else 389)
        self._tls = tls

    def _server(self) -> Server:
        # A new one each time: an ldap3 Server remembers an address that failed once as unusable.
        return Server(
            self._host,
            port=self._port,
            use_ssl=self._ldaps,
            tls=self._tls,
            get_info=NONE,
            connect_timeout=self.settings.timeout,
        )

    async def authenticate(self, username: str, password: str) -> Identity | None:
        if not username or len(username) > MAX_USERNAME or any(ord(c) < 32 for c in username):
            return None
        return await asyncio.to_thread(self._authenticate, username, password)

    def _connection(self, user: str | None, password: str | None) -> Connection:
        connection = Connection(
            self._server(),
            user=user,
            password=password,
            receive_timeout=math.ceil(self.settings.timeout),  # ldap3 takes whole seconds only
            raise_exceptions=False,
            read_only=True,
        )
        try:
            connection.open()
            if self.settings.start_tls and not self.settings.url.startswith("ldaps://"):
                connection.start_tls()
        except BaseException:
            _close(connection)
            raise
        return connection

    def _service(self) -> Connection:
        password = self.settings.bind_password.get_secret_value() if self.settings.bind_password else None
        connection = self._connection(self.settings.bind_dn, password)
        if not connection.bind():
            result = connection.result
            _close(connection)
            # The service account refused is the directory's configuration, not the user's password.
            raise directory_unavailable(f"the service bind failed: {result.get('description')}")
        return connection

    def _authenticate(self, username: str, password: str) -> Identity | None:
        return self._ask(username, password)

    async def lookup(self, username: str) -> Identity | None:
        """The user as the directory has it now (found, with groups), without a password: for their personal
        tokens and UI sessions. None: not there any more. Raises the 503 of `directory_unavailable`."""
        if not username or len(username) > MAX_USERNAME or any(ord(c) < 32 for c in username):
            return None
        return await asyncio.to_thread(self._ask, username, None)

    def _ask(self, username: str, password: str | None) -> Identity | None:
        """Find the user's entry (as the service account), bind as it when `password` is given, read its groups."""
        settings = self.settings
        try:
            service = self._service()
            try:
                user_filter = settings.user_filter.replace("{username}", escape_filter_chars(username))
                service.search(settings.user_base, user_filter, SUBTREE, attributes=[], size_limit=2)
                found = [entry for entry in service.response or [] if entry.get("type") == "searchResEntry"]
                if len(found) != 1:
                    return None  # unknown, or ambiguous: never guess which one
                dn = str(found[0]["dn"])
                if password is not None and not self._binds(dn, password):
                    return None
                groups = self._groups(service, username, dn)
            finally:
                _close(service)
        except LDAPException as e:
            logger.warning("ldap: %s cannot be asked: %s", settings.url, e)
            raise directory_unavailable(f"{type(e).__name__}: {e}") from e
        return Identity("user", username, groups=groups, source="ldap")

    def _binds(self, dn: str, password: str) -> bool:
        """Whether the entry binds with this password (False: wrong password or locked account)."""
        user = self._connection(dn, password)
        try:
            if user.bind():
                return True
            if user.result.get("result") == INVALID_CREDENTIALS:
                return False
            raise directory_unavailable(f"the bind failed: {user.result.get('description')}")
        finally:
            _close(user)

    def _groups(self, connection: Connection, username: str, dn: str) -> frozenset[str]:
        settings = self.settings
        if settings.group_base is None:
            return frozenset()
        group_filter = settings.group_filter.replace("{dn}", escape_filter_chars(dn)).replace(
            "{username}", escape_filter_chars(username)
        )
        attribute = settings.group_attribute
        connection.search(settings.group_base, group_filter, SUBTREE, attributes=[attribute], size_limit=MAX_GROUPS)
        groups: set[str] = set()
        for entry in connection.response or []:
            if entry.get("type") != "searchResEntry":
                continue
            values: Any = entry.get("attributes", {}).get(attribute)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, str) and value and len(value) <= MAX_GROUP_NAME:
                    groups.add(value)
        return frozenset(sorted(groups)[:MAX_GROUPS])


def _close(connection: Connection) -> None:
    """Unbind, and close the socket too: ldap3 leaves it open after a refused connection or a timeout."""
    with contextlib.suppress(LDAPException, OSError):
        connection.unbind()
    sock = getattr(connection, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
