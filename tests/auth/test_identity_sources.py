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
