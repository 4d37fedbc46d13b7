"""The LDAP test server itself (tests/ldap_server.py), seen through ldap3 the way a sign-in would use it."""

from __future__ import annotations

import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import tests.ldap_server as module
from tests.ldap_server import DEFAULT_GROUPS, DEFAULT_USERS, LdapServer

with warnings.catch_warnings():
    # ldap3 2.9.1 imports pyasn1 names that pyasn1 >= 0.6.1 deprecates (tagMap, typeMap): a warning at import only.
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core.exceptions import LDAPSocketOpenError, LDAPSocketReceiveError
    from ldap3.utils.conv import escape_filter_chars

# ldap3 checks the server's name with ssl.match_hostname(), deprecated since Python 3.7 (warns on 3.11).
ignore_match_hostname = pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning")


@pytest.fixture
def ldap_server() -> Iterator[LdapServer]:
    """A fresh directory per test: it starts in tens of milliseconds, and tests here change it."""
    with LdapServer() as server:
        yield server


def _server(ldap: LdapServer, *, tls: str = "none", ca_file: str | None = None, timeout: float = 5) -> Any:
    if tls == "none":
        return ldap3.Server(ldap.host, port=ldap.port, get_info=ldap3.NONE, connect_timeout=timeout)
    verify = ldap3.Tls(ca_certs_file=ca_file or str(ldap.ca_file), validate=ssl.CERT_REQUIRED)
    port = ldap.ldaps_port if tls == "ldaps" else ldap.port
    return ldap3.Server(
        ldap.host, port=port, use_ssl=tls == "ldaps", tls=verify, get_info=ldap3.NONE, connect_timeout=timeout
    )


@contextmanager
def _connection(server: Any, user: str | None = None, password: str | None = None, **options: Any) -> Iterator[Any]:
    options.setdefault("receive_timeout", 5)
    connection = ldap3.Connection(server, user, password, **options)
    try:
        yield connection
    finally:
        try:
            connection.unbind()  # closes the socket, bound or not
        finally:
            # ldap3 leaves the socket open when the connection is refused or an answer times out (a ResourceWarning,
            # an error here): close it.
            if connection.socket is not None:
                connection.socket.close()


def _bind(ldap: LdapServer, uid: str, password: str) -> dict[str, Any]:
    """The bind response's result for a user (result 0 when it succeeded)."""
    with _connection(_server(ldap), ldap.user_dn(uid), password) as connection:
        connection.bind()
        result: dict[str, Any] = connection.result
        if result["result"] == 0:  # bound as that very user (slapd normalizes the DN it answers: read the uid)
            whoami = connection.extend.standard.who_am_i()
            assert connection.search(whoami.removeprefix("dn:"), "(objectClass=*)", ldap3.BASE, attributes=["uid"])
            assert connection.entries[0].uid.value == uid
        return result


def _search(ldap: LdapServer, base: str, search_filter: str, attribute: str = "cn") -> list[str]:
    """Sorted values of one attribute of what an anonymous search finds."""
    with _connection(_server(ldap)) as connection:
        connection.bind()
        connection.search(base, search_filter, attributes=[attribute])
        return sorted(value for entry in connection.entries for value in entry[attribute].values)


def _groups_by_member(ldap: LdapServer, uid: str) -> list[str]:
    return _search(
        ldap, ldap.groups_dn, f"(&(objectClass=groupOfNames)(member={escape_filter_chars(ldap.user_dn(uid))}))"
    )


def _groups_by_member_uid(ldap: LdapServer, uid: str) -> list[str]:
    return _search(ldap, ldap.posix_groups_dn, f"(&(objectClass=posixGroup)(memberUid={escape_filter_chars(uid)}))")


def _expected_groups(uid: str) -> list[str]:
    return sorted(cn for cn, members in DEFAULT_GROUPS.items() if uid in members)


def _reachable(ldap: LdapServer) -> bool:
    try:
        with _connection(_server(ldap, timeout=2)) as connection:
            connection.bind()
            return bool(connection.bound)
    except LDAPSocketOpenError:
        return False


def test_a_user_binds_with_the_right_password(ldap_server: LdapServer) -> None:
    for uid in ("alice", "bob", "carol"):
        assert _bind(ldap_server, uid, DEFAULT_USERS[uid])["result"] == 0


def test_a_wrong_password_fails_with_invalid_credentials(ldap_server: LdapServer) -> None:
    result = _bind(ldap_server, "alice", "not-alice-password")
    assert (result["result"], result["description"]) == (49, "invalidCredentials")
    assert _bind(ldap_server, "nobody", "whatever")["result"] == 49  # an unknown user: the same answer
    assert _bind(ldap_server, "alice", DEFAULT_USERS["alice"])["result"] == 0


def test_auto_bind_raises_the_same_error_for_a_wrong_password_and_a_locked_account(ldap_server: LdapServer) -> None:
    errors = []
    for uid, password in (("alice", "wrong"), ("dave", DEFAULT_USERS["dave"])):
        with pytest.raises(ldap3.core.exceptions.LDAPBindError) as raised:
            ldap3.Connection(_server(ldap_server), ldap_server.user_dn(uid), password, auto_bind=True)
        errors.append(str(raised.value))
    assert errors == ["automatic bind not successful - invalidCredentials"] * 2


def test_a_locked_account_cannot_bind_even_with_the_right_password(ldap_server: LdapServer) -> None:
    result = _bind(ldap_server, "dave", DEFAULT_USERS["dave"])  # locked by default
    assert (result["result"], result["description"]) == (49, "invalidCredentials")
    ldap_server.unlock("dave")
    assert _bind(ldap_server, "dave", DEFAULT_USERS["dave"])["result"] == 0
    ldap_server.lock("alice")
    assert _bind(ldap_server, "alice", DEFAULT_USERS["alice"])["result"] == 49
    ldap_server.unlock("alice")
    ldap_server.unlock("alice")  # unlocking an unlocked account is no error
    assert _bind(ldap_server, "alice", DEFAULT_USERS["alice"])["result"] == 0


PASSWORD_POLICY_CONTROL = "1.3.6.1.4.1.42.2.27.8.5.1"


def test_the_password_policy_control_tells_a_locked_account_from_a_wrong_password(ldap_server: LdapServer) -> None:
    def policy_response(uid: str, password: str) -> bytes:
        with _connection(_server(ldap_server), ldap_server.user_dn(uid), password) as connection:
            assert not connection.bind(controls=[(PASSWORD_POLICY_CONTROL, False, None)])
            assert connection.result["result"] == 49
            value: bytes = connection.result["controls"][PASSWORD_POLICY_CONTROL]["value"]
            return value

    # PasswordPolicyResponseValue ::= SEQUENCE { ..., error [1] ENUMERATED OPTIONAL }, accountLocked (1)
    assert policy_response("dave", DEFAULT_USERS["dave"]) == b"\x30\x03\x81\x01\x01"
    assert policy_response("alice", "wrong") == b"\x30\x00"  # no error named: just invalid credentials


def test_the_lock_is_visible_to_the_admin(ldap_server: LdapServer) -> None:
    with _connection(_server(ldap_server), ldap_server.admin_dn, ldap_server.admin_password) as admin:
        assert admin.bind()
        admin.search(ldap_server.people_dn, "(pwdAccountLockedTime=*)", attributes=["uid", "pwdAccountLockedTime"])
        assert [(entry.uid.value, entry.pwdAccountLockedTime.raw_values) for entry in admin.entries] == [
            ("dave", [b"000001010000Z"])
        ]


def test_max_failures_locks_after_that_many_wrong_passwords() -> None:
    with LdapServer(users={"erin": "erin-password"}, groups={}, locked=set(), max_failures=3) as ldap:
        assert _bind(ldap, "erin", "wrong")["result"] == 49
        assert _bind(ldap, "erin", "erin-password")["result"] == 0  # a success resets the count
        for _ in range(3):
            assert _bind(ldap, "erin", "wrong")["result"] == 49
        assert _bind(ldap, "erin", "erin-password")["result"] == 49
        ldap.unlock("erin")
        assert _bind(ldap, "erin", "wrong")["result"] == 49  # the earlier failures are forgotten
        assert _bind(ldap, "erin", "erin-password")["result"] == 0


def test_groups_by_member_dn_and_by_member_uid(ldap_server: LdapServer) -> None:
    for uid in DEFAULT_USERS:
        assert _groups_by_member(ldap_server, uid) == _expected_groups(uid), uid
        assert _groups_by_member_uid(ldap_server, uid) == _expected_groups(uid), uid
    assert _expected_groups("alice") == ["admins", "developers"]
    assert _groups_by_member(ldap_server, "nobody") == []


def test_users_carry_member_of_and_posix_attributes(ldap_server: LdapServer) -> None:
    with _connection(_server(ldap_server)) as connection:
        connection.bind()
        connection.search(
            ldap_server.people_dn,
            "(uid=alice)",
            attributes=[
                "uid",
                "cn",
                "sn",
                "mail",
                "uidNumber",
                "gidNumber",
                "homeDirectory",
                "memberOf",
                "userPassword",
            ],
        )
        [entry] = connection.entries
        assert entry.entry_dn == ldap_server.user_dn("alice")
        assert entry.mail.value == "alice@example.org"
        assert entry.homeDirectory.value == "/home/alice"
        assert (entry.uidNumber.value, entry.gidNumber.value) == ("10000", "10000")  # no schema read: strings
        assert sorted(entry.memberOf.values) == [ldap_server.group_dn(cn) for cn in ("admins", "developers")]
        assert entry.userPassword.values == []  # passwords are for binding only


def test_a_user_can_search_its_groups_after_binding(ldap_server: LdapServer) -> None:
    with _connection(_server(ldap_server), ldap_server.user_dn("bob"), DEFAULT_USERS["bob"]) as connection:
        assert connection.bind()
        connection.search(ldap_server.groups_dn, f"(member={ldap_server.user_dn('bob')})", attributes=["cn"])
        assert [entry.cn.value for entry in connection.entries] == ["developers"]


def test_remove_member_takes_effect_in_both_shapes(ldap_server: LdapServer) -> None:
    ldap_server.remove_member("developers", "bob")
    assert _groups_by_member(ldap_server, "bob") == []
    assert _groups_by_member_uid(ldap_server, "bob") == []
    assert ldap_server.members("developers") == ["alice", "dave"]
    # The last member out: the groupOfNames keeps the empty DN (it must have a member), which is nobody.
    ldap_server.remove_member("admins", "alice")
    assert _groups_by_member(ldap_server, "alice") == ["developers"]
    assert _groups_by_member_uid(ldap_server, "alice") == ["developers"]
    assert _search(ldap_server, ldap_server.groups_dn, "(cn=admins)", "member") == [""]
    assert _search(ldap_server, ldap_server.posix_groups_dn, "(cn=admins)", "memberUid") == []
    ldap_server.remove_member("admins", "alice")  # not a member: no change, no error
    ldap_server.add_member("admins", "bob")
    assert _groups_by_member(ldap_server, "bob") == ["admins"]
    assert _groups_by_member_uid(ldap_server, "bob") == ["admins"]
    assert _search(ldap_server, ldap_server.groups_dn, "(cn=admins)", "member") == [ldap_server.user_dn("bob")]
    with pytest.raises(KeyError):
        ldap_server.add_member("no-such-group", "bob")
    with pytest.raises(KeyError):
        ldap_server.add_member("admins", "no-such-user")


def test_add_user_group_and_set_password(ldap_server: LdapServer) -> None:
    ldap_server.add_group("ops")
    dn = ldap_server.add_user("erin", "erin-password", groups=["ops", "developers"])
    assert dn == f"uid=erin,{ldap_server.people_dn}"
    assert _bind(ldap_server, "erin", "erin-password")["result"] == 0
    assert _groups_by_member(ldap_server, "erin") == ["developers", "ops"]
    assert _groups_by_member_uid(ldap_server, "erin") == ["developers", "ops"]
    ldap_server.set_password("erin", "new-erin-password")
    assert _bind(ldap_server, "erin", "erin-password")["result"] == 49
    assert _bind(ldap_server, "erin", "new-erin-password")["result"] == 0
    ldap_server.add_user("frank", "frank-password", locked=True)
    assert _bind(ldap_server, "frank", "frank-password")["result"] == 49
    ldap_server.remove_user("erin")
    assert _bind(ldap_server, "erin", "new-erin-password")["result"] == 49
    assert _groups_by_member(ldap_server, "erin") == []
    assert "erin" not in ldap_server.members("developers")


def test_awkward_uids_and_passwords() -> None:
    users = {"o'brien, jr": " pässwörd with spaces ", "#hash": "x=y,z"}
    with LdapServer(users=users, groups={"the team": list(users)}, locked=set()) as ldap:
        assert ldap.user_dn("o'brien, jr") == f"uid=o'brien\\, jr,{ldap.people_dn}"
        for uid, password in users.items():
            assert _bind(ldap, uid, password)["result"] == 0, uid
            assert _bind(ldap, uid, password + "!")["result"] == 49, uid
            assert _bind(ldap, uid, password.strip())["result"] == (0 if password == password.strip() else 49), uid
            assert _groups_by_member_uid(ldap, uid) == ["the team"]
            assert _groups_by_member(ldap, uid) == ["the team"]
        ldap.remove_member("the team", "#hash")
        assert _search(ldap, ldap.posix_groups_dn, "(cn=the team)", "memberUid") == ["o'brien, jr"]


def test_the_admin_binds_and_anonymous_reads_no_password(ldap_server: LdapServer) -> None:
    with _connection(_server(ldap_server), ldap_server.admin_dn, ldap_server.admin_password) as admin:
        assert admin.bind()
        admin.search(ldap_server.people_dn, "(uid=bob)", attributes=["userPassword"])
        assert admin.entries[0].userPassword.value.startswith("{SSHA}")
    with _connection(_server(ldap_server)) as anonymous:
        anonymous.bind()
        anonymous.search(ldap_server.people_dn, "(userPassword=*)", attributes=["uid"])
        assert anonymous.entries == []


def test_pause_makes_it_unreachable_and_resume_brings_it_back_on_the_same_port(ldap_server: LdapServer) -> None:
    url, port = ldap_server.url, ldap_server.port
    ldap_server.remove_member("developers", "bob")
    ldap_server.pause()
    assert not ldap_server.running
    assert not _reachable(ldap_server)
    with pytest.raises(LDAPSocketOpenError):
        _bind(ldap_server, "alice", DEFAULT_USERS["alice"])
    ldap_server.resume()
    assert (ldap_server.url, ldap_server.port) == (url, port)
    assert _reachable(ldap_server)
    assert _bind(ldap_server, "alice", DEFAULT_USERS["alice"])["result"] == 0
    assert _groups_by_member(ldap_server, "bob") == []  # the data outlives the pause
    ldap_server.pause()
    ldap_server.pause()  # twice: no error
    ldap_server.resume()
    ldap_server.resume()  # running already: no change
    assert _reachable(ldap_server)


def test_a_frozen_server_accepts_connections_but_does_not_answer(ldap_server: LdapServer) -> None:
    ldap_server.freeze()
    try:
        with socket.create_connection((ldap_server.host, ldap_server.port), timeout=2):
            pass  # the kernel still accepts
        started = time.monotonic()
        with (
            pytest.raises(LDAPSocketReceiveError),
            # ldap3 wants whole seconds here (a float fails in struct.pack for SO_RCVTIMEO)
            _connection(_server(ldap_server), ldap_server.user_dn("alice"), "x", receive_timeout=1) as conn,
        ):
            conn.bind()
        assert time.monotonic() - started < 4
    finally:
        ldap_server.thaw()
    assert _bind(ldap_server, "alice", DEFAULT_USERS["alice"])["result"] == 0


def test_a_frozen_server_stops() -> None:
    ldap = LdapServer()
    ldap.start()
    ldap.freeze()
    ldap.stop()
    assert not ldap.running


def test_stop_removes_everything_and_start_makes_a_fresh_directory() -> None:
    ldap = LdapServer()
    ldap.start()
    try:
        base_dir, port = ldap.base_dir, ldap.port
        assert base_dir is not None and base_dir.is_dir()
        ldap.remove_member("developers", "bob")
        ldap.stop()
        assert not base_dir.exists()
        assert ldap.base_dir is None and not ldap.running
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
        ldap.start()
        assert _groups_by_member(ldap, "bob") == ["developers"]  # the constructor's directory again
    finally:
        ldap.stop()
    ldap.stop()  # twice: no error


def test_two_servers_are_independent() -> None:
    with LdapServer() as first, LdapServer(users={"zed": "zed-password"}, groups={}, locked=set()) as second:
        assert first.port != second.port and first.base_dir != second.base_dir
        assert _bind(first, "alice", DEFAULT_USERS["alice"])["result"] == 0
        assert _bind(second, "alice", DEFAULT_USERS["alice"])["result"] == 49
        assert _bind(second, "zed", "zed-password")["result"] == 0


def test_it_starts_quickly() -> None:
    started = time.monotonic()
    with LdapServer():
        elapsed = time.monotonic() - started
    assert elapsed < 5, f"{elapsed:.2f} s"  # about 0.05 s here; generous for a loaded machine


def test_unknown_members_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="unknown users"):
        LdapServer(users={"a": "a"}, groups={"g": ["b"]}, locked=set())
    with pytest.raises(ValueError, match="unknown users"):
        LdapServer(users={"a": "a"}, groups={}, locked={"b"})


def _connects(host: str, port: int, family: socket.AddressFamily = socket.AF_INET) -> bool:
    with socket.socket(family) as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def test_it_listens_on_127_0_0_1_only(ldap_server: LdapServer) -> None:
    for port in (ldap_server.port, ldap_server.ldaps_port):
        assert _connects("127.0.0.1", port)
        assert not _connects("127.0.0.2", port)
        if socket.has_ipv6:
            assert not _connects("::1", port, socket.AF_INET6)


@ignore_match_hostname
def test_ldaps_with_the_test_ca(ldap_server: LdapServer) -> None:
    assert ldap_server.ldaps_url == f"ldaps://127.0.0.1:{ldap_server.ldaps_port}/"
    server = _server(ldap_server, tls="ldaps")
    with _connection(server, ldap_server.user_dn("alice"), DEFAULT_USERS["alice"]) as connection:
        assert connection.bind()
        assert connection.extend.standard.who_am_i() == f"dn:{ldap_server.user_dn('alice')}"
    with _connection(server, ldap_server.user_dn("dave"), DEFAULT_USERS["dave"]) as connection:
        assert not connection.bind()
        assert connection.result["result"] == 49


@ignore_match_hostname
def test_start_tls_with_the_test_ca(ldap_server: LdapServer) -> None:
    with _connection(_server(ldap_server, tls="start"), ldap_server.user_dn("bob"), DEFAULT_USERS["bob"]) as conn:
        conn.open()
        assert conn.start_tls()
        assert conn.bind()
        assert conn.extend.standard.who_am_i() == f"dn:{ldap_server.user_dn('bob')}"


@ignore_match_hostname
def test_tls_is_refused_without_the_test_ca(ldap_server: LdapServer, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    with LdapServer(users={}, groups={}, locked=set()) as other:
        other_ca.write_bytes(other.ca_file.read_bytes())
    with (
        pytest.raises(LDAPSocketOpenError, match="CERTIFICATE_VERIFY_FAILED"),
        _connection(_server(ldap_server, tls="ldaps", ca_file=str(other_ca))) as connection,
    ):
        connection.open()


def test_a_taken_port_is_retried_with_another(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        real_free_port = module.ports.free_port
        ports = iter([taken_port, real_free_port()])
        monkeypatch.setattr(module.ports, "free_port", lambda: next(ports, None) or real_free_port())
        with LdapServer() as ldap:
            assert taken_port not in (ldap.port, ldap.ldaps_port)
            assert _bind(ldap, "alice", DEFAULT_USERS["alice"])["result"] == 0
            assert "Address already in use" in ldap.log_path.read_text()
