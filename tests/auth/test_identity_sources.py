"""Users of three sources share one namespace of names (htpasswd, LDAP, OIDC): who holds a name, and what a personal
token of each acts as over time. An identity provider's user never takes a name the file or the directory holds,
is an admin only by group, and its tokens stop when it has not signed in for `auth.oidc.token_sign_in_within`; a
token follows its owner's source, so a later user of the same name elsewhere is not its owner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from registry.auth.access import Identity, glob_regex
from registry.auth.authenticator import Authenticator
from registry.auth.personal_tokens import PersonalTokens
from registry.auth.settings import AuthSettings
from registry.policy.database import Actor
from registry.policy.service import Policy
from registry.settings import Settings
from registry.store.registry import backend_from_settings
from registry.ui.sessions import Sessions
from tests.auth.test_htpasswd import bcrypt_entry

ISSUER = "https://idp.test"


@pytest.fixture
async def auth(tmp_path: Path) -> Any:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(bcrypt_entry("root", "root-password") + "\n")
    settings = Settings.model_validate(
        {
            "storage": {"filesystem": {"root": str(tmp_path / "data")}},
            "auth": {
                "htpasswd": {"path": str(htpasswd)},
                "admins": ["root", "erin"],
                "admin_groups": ["registry-admins"],
                "oidc": {"issuer": ISSUER, "client_id": "moorage", "token_sign_in_within": "1h"},
            },
        }
    )
    authenticator = Authenticator(settings, backend_from_settings(settings))
    authenticator.htpasswd.load()  # type: ignore[union-attr]
    from registry.auth.oidc import OidcClient

    assert settings.auth is not None and settings.auth.oidc is not None
    authenticator.oidc = OidcClient(settings.auth.oidc)
    policy = Policy(tmp_path / "policy.sqlite", 0.25)
    await policy.start()
    authenticator.policy = policy
    authenticator.personal_tokens = PersonalTokens(policy, authenticator.owner_groups)
    yield authenticator
    await policy.aclose()
    await authenticator.aclose()


def oidc_user(name: str, *groups: str) -> Identity:
    return Identity("user", name, groups=frozenset(groups), source="oidc")


async def test_an_identity_providers_user_never_takes_a_local_or_directory_name(auth: Authenticator) -> None:
    assert not await auth.remember(oidc_user("root", "registry-admins"))  # htpasswd's
    assert await auth.remember(Identity("user", "dave", groups=frozenset({"ops"}), source="ldap"))
    assert not await auth.remember(oidc_user("dave"))  # the directory's
    assert await auth.remember(oidc_user("erin", "developers"))
    # The directory may take a name an identity provider's user held: the directory is the operator's.
    assert await auth.remember(Identity("user", "erin", source="ldap"))


async def test_an_identity_providers_user_is_an_admin_by_group_only(auth: Authenticator) -> None:
    assert not auth.is_admin(oidc_user("erin"))  # auth.admins names erin: not for single sign-on users
    assert auth.is_admin(oidc_user("frank", "registry-admins"))
    assert auth.is_admin(Identity("user", "root", source="htpasswd"))


async def test_a_token_follows_its_owners_source_and_sign_ins(auth: Authenticator, tmp_path: Path) -> None:
    tokens = auth.personal_tokens
    assert tokens is not None
    assert await auth.remember(oidc_user("erin", "developers"))
    token, secret = await tokens.create(
        oidc_user("erin", "developers"), "t", ["repository:dev/*:pull"], None, Actor("erin")
    )
    found = await tokens.authenticate("erin", secret)
    assert found is not None and found.groups == {"developers"} and found.source == "oidc"
    # erin's last sign-in is older than token_sign_in_within: the token stops.
    db = await auth.policy.database()  # type: ignore[union-attr]
    with db.engine.transaction() as sql:
        sql.execute("UPDATE known_users SET seen_at = ? WHERE name = ?", (time.time() - 7200, "erin"))
    assert await tokens.authenticate("erin", secret) is None
    # Signing in again brings it back; a directory user named erin later is not its owner.
    assert await auth.remember(oidc_user("erin", "developers"))
    assert await tokens.authenticate("erin", secret) is not None
    assert await auth.remember(Identity("user", "erin", source="ldap"))
    assert await tokens.authenticate("erin", secret) is None

    # An htpasswd user's token stops with the user's entry, identity provider configured or not.
    root_token, root_secret = await tokens.create(
        Identity("user", "root", source="htpasswd"), "t", ["repository:**:pull"], None, Actor("root")
    )
    assert await tokens.authenticate("root", root_secret) is not None
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(bcrypt_entry("someone", "x") + "\n")
    auth.htpasswd.load()  # type: ignore[union-attr]
    assert await tokens.authenticate("root", root_secret) is None
    assert root_token.owner_source == "htpasswd" and token.owner_source == "oidc"


async def test_a_session_keeps_a_user_of_many_groups(tmp_path: Path) -> None:
    settings = Settings.model_validate({"storage": {"filesystem": {"root": str(tmp_path / "data")}}})
    sessions = Sessions(backend_from_settings(settings), 3600)
    sessions.use_secret(b"s" * 32)
    groups = frozenset(f"group-with-a-rather-long-name-{i:03d}" for i in range(200))
    secret, _ = await sessions.create("erin", groups, "oidc")
    found = await sessions.get(secret)
    assert found is not None and set(found.groups) == groups and found.source == "oidc"


def test_glob_matching_takes_linear_time_and_agrees_with_the_plain_translation() -> None:
    import random
    import re

    def plain(pattern: str) -> re.Pattern[str]:
        parts = []
        for piece in re.split(r"(\*\*|\*)", pattern):
            parts.append(".*" if piece == "**" else "[^/]*" if piece == "*" else re.escape(piece))
        return re.compile("".join(parts) + r"\Z", re.DOTALL)

    rng = random.Random(7)
    for _ in range(20_000):
        pattern = "".join(rng.choice("ab/*") for _ in range(rng.randint(0, 7)))
        name = "".join(rng.choice("ab/") for _ in range(rng.randint(0, 9)))
        expected = plain(pattern).match(name) is not None
        assert (glob_regex(pattern, segments=True).match(name) is not None) == expected, (pattern, name)
    # What took the backtracking translation hours: done at once (a hang would fail the suite's time limit).
    assert glob_regex("team/*a*a*a*a*a*a*a*a*a*a*a*a*b", segments=True).match("team/" + "a" * 250) is None
    assert glob_regex("**a**a*a*a*a*a*b", segments=True).match("a" * 255) is None


def test_patterns_from_users_are_bounded() -> None:
    from registry.auth.access import Grant, Scope, ScopeError

    with pytest.raises(ScopeError, match="at most 2"):
        Grant.from_scope(Scope.parse("repository:**/**/**:pull"))
    with pytest.raises(ScopeError, match="control"):
        Grant.from_scope(Scope.parse("repository:team/\x01:pull"))
    with pytest.raises(ValueError):
        AuthSettings.model_validate({"oidc": {"issuer": ISSUER, "client_id": "x", "scopes": ["profile"]}})


class Directory:
    """A directory that holds the users it is given (registry.auth.directory.Directory)."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.lookups = 0

    async def authenticate(self, username: str, password: str) -> Identity | None:
        return None

    async def lookup(self, username: str) -> Identity | None:
        self.lookups += 1
        return Identity("user", username, source="ldap") if username in self.names else None


async def test_an_identity_providers_user_never_takes_a_name_the_directory_holds(auth: Authenticator) -> None:
    directory = Directory("dave")
    auth.directory = directory
    assert not await auth.remember(oidc_user("dave"))  # never signed in through the directory, but there
    assert await auth.remember(oidc_user("gina", "developers"))
    tokens = auth.personal_tokens
    assert tokens is not None
    _, secret = await tokens.create(oidc_user("gina"), "t", ["repository:dev/*:pull"], None, Actor("gina"))
    assert await tokens.authenticate("gina", secret) is not None
    directory.names.add("gina")  # the directory gains the name: the identity provider's gina's token stops
    auth._looked_up.clear()
    assert await tokens.authenticate("gina", secret) is None

    from registry.ui.pages import _name_still_theirs
    from registry.ui.sessions import Session

    now = time.time()
    assert not await _name_still_theirs(auth, Session("gina", now, now + 60, (), "oidc"))
    assert not await _name_still_theirs(auth, Session("root", now, now + 60, (), "oidc"))  # htpasswd's
    assert await _name_still_theirs(auth, Session("erin", now, now + 60, (), "oidc"))
    assert await _name_still_theirs(auth, Session("dave", now, now + 60, (), "ldap"))
    auth.directory = None
    assert not await _name_still_theirs(auth, Session("dave", now, now + 60, (), "ldap"))


def test_wildcards_never_backtrack_in_user_and_group_patterns_either() -> None:
    for pattern, name in (
        ("*a*a*a*a*a*a*a*b", "a" * 60),
        ("*-*-*-*-*-x", "-" * 255),
        ("*.*.*.*.*@corp", "a." * 100),
    ):
        assert glob_regex(pattern, segments=False).match(name) is None  # a hang fails the suite's time limit


def test_what_was_stored_before_stays_readable_and_odd_scope_names_are_granted_nothing(tmp_path: Path) -> None:
    from registry.auth.access import AccessRules, Scope, check_pattern
    from registry.auth.ci_tokens import CiToken
    from registry.auth.settings import AccessRule

    record = (
        '{"name": "old", "id": "0123456789abcdef", "hash": "sha256:00", "scopes": ["repository:a/**/b/**/c/**:pull"], '
        '"created_at": "2026-01-01T00:00:00Z", "expires_at": null}'
    )
    assert CiToken.from_json(record.encode()).grants[0].pattern == "a/**/b/**/c/**"
    with pytest.raises(ValueError, match="only once"):
        check_pattern("team/**a*b**c*d")
    rules = AccessRules([AccessRule(repository="**", users=["alice"], actions=["pull"])])
    alice = Identity("user", "alice", source="htpasswd")
    assert rules.grant(alice, [Scope("repository", "x" * 256, ("pull",))]) == []
    assert rules.grant(alice, [Scope("repository", "x" * 255, ("pull",))]) != []


def test_a_policy_database_of_an_earlier_build_gets_the_new_column(tmp_path: Path) -> None:
    import sqlite3

    from registry.policy.database import PolicyDatabase

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE personal_tokens (id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, "
            "hash TEXT NOT NULL, scopes TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, last_used REAL)"
        )
        old.execute("INSERT INTO personal_tokens VALUES ('0123456789abcdef', 'root', 't', 'h', '[]', 1.0, NULL, NULL)")
    db = PolicyDatabase.open(path)
    try:
        token = db.token("0123456789abcdef")
        assert token is not None and token.owner_source == "htpasswd"
    finally:
        db.close()
