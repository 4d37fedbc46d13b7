"""Access rules, scopes and grants: the union of matching rules, globs, anonymous, and CI tokens' own scopes."""

from __future__ import annotations

import pytest

from registry.auth.access import (
    ANONYMOUS_IDENTITY,
    AccessRules,
    ClaimsView,
    Grant,
    Identity,
    Scope,
    ScopeError,
    glob_regex,
)
from registry.auth.settings import AccessRule

RULES = AccessRules(
    [
        AccessRule(repository="team/*", users=["alice", "ci-*"], actions=["pull", "push"]),
        AccessRule(repository="team/**", users=["alice"], actions=["delete"]),
        AccessRule(repository="team/app", users=["bob"], actions=["pull"]),
        AccessRule(repository="public/**", users=["anonymous"], actions=["pull"]),
        AccessRule(repository="shared/*", users=["*"], actions=["*"]),
    ]
)
ALICE = Identity("user", "alice")
BOB = Identity("user", "bob")
CI_BOT = Identity("user", "ci-bot")


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("team/*", "team/app", True),
        ("team/*", "team/app/sub", False),
        ("team/**", "team/app/sub", True),
        ("team/**", "team", False),
        ("**", "anything/at/all", True),
        ("team/app", "team/app", True),
        ("team/app", "team/apps", False),
        ("team.app", "teamXapp", False),
        ("*-cache", "npm-cache", True),
    ],
)
def test_repository_globs(pattern: str, name: str, matches: bool) -> None:
    assert (glob_regex(pattern, segments=True).match(name) is not None) is matches


@pytest.mark.parametrize(
    ("identity", "repository", "actions"),
    [
        (ALICE, "team/app", {"pull", "push", "delete"}),  # union of two rules
        (ALICE, "team/app/sub", {"delete"}),  # "*" stays within one segment, "**" does not
        (BOB, "team/app", {"pull"}),
        (BOB, "team/other", set()),
        (CI_BOT, "team/app", {"pull", "push"}),  # user globs
        (ANONYMOUS_IDENTITY, "public/a/b", {"pull"}),
        (ANONYMOUS_IDENTITY, "team/app", set()),
        (ANONYMOUS_IDENTITY, "shared/x", set()),  # "*" is any authenticated user, not anonymous
        (BOB, "public/x", {"pull"}),  # what anonymous may, everyone may
        (BOB, "shared/x", {"pull", "push", "delete"}),
        (ALICE, "elsewhere", set()),
    ],
)
def test_rights_are_the_union_of_matching_rules(identity: Identity, repository: str, actions: set[str]) -> None:
    assert RULES.actions(identity, repository) == actions
    assert RULES.actions(identity, repository) == actions  # and the remembered answer is the same


def test_ci_tokens_get_their_scopes_not_the_rules_for_their_name() -> None:
    token = Identity("ci", "ci-app", (Grant("team/app", frozenset({"pull", "push"})),), "id1")
    assert RULES.actions(token, "team/app") == {"pull", "push"}
    assert RULES.actions(token, "team/other") == set()  # the rule for "ci-*" users does not apply
    assert RULES.actions(token, "shared/x") == set()
    assert RULES.actions(token, "public/x") == {"pull"}


def test_the_rules_are_walked_once_per_repository_for_a_ci_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request with a token asks the rules again (a rule revoked stops its tokens at once): what anonymous
    may do, the part a CI token takes from the rules, is remembered like a user's rights."""
    rules = AccessRules(
        [AccessRule(repository=f"team{i}/**", users=[f"u{i}"], actions=["pull"]) for i in range(50)]
        + [AccessRule(repository="public/**", users=["anonymous"], actions=["pull"])]
    )
    walks: list[str] = []
    walk = rules._rule_actions

    def counted(kind: str, name: str, groups: frozenset[str], repository: str) -> frozenset[str]:
        walks.append(repository)
        return walk(kind, name, groups, repository)  # type: ignore[arg-type]

    monkeypatch.setattr(rules, "_rule_actions", counted)
    token = Identity("ci", "ci-app", (Grant("team5/app", frozenset({"pull", "push"})),), "id1")
    for _ in range(20):  # a pull: the manifest, then its layers
        assert rules.actions(token, "team5/app") == {"pull", "push"}
        assert rules.actions(token, "public/x") == {"pull"}
    assert walks == ["team5/app", "public/x"]


def test_anonymous_allowed_only_when_a_rule_names_it() -> None:
    assert RULES.anonymous_allowed
    assert not AccessRules([AccessRule(repository="**", users=["*"], actions=["pull"])]).anonymous_allowed


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("repository:team/app:pull,push", Scope("repository", "team/app", ("pull", "push"))),
        ("repository(plugin):team/app:pull", Scope("repository", "team/app", ("pull",))),
        ("registry:catalog:*", Scope("registry", "catalog", ("*",))),
        ("repository:localhost:5000/app:pull", Scope("repository", "localhost:5000/app", ("pull",))),
    ],
)
def test_scope_grammar(text: str, scope: Scope) -> None:
    assert Scope.parse(text) == scope


@pytest.mark.parametrize("text", ["repository", "repository:app", ":app:pull", "repository::pull"])
def test_invalid_scopes(text: str) -> None:
    with pytest.raises(ScopeError):
        Scope.parse(text)


def test_several_scopes_in_one_parameter() -> None:
    assert len(Scope.parse_many(["repository:a:pull repository:b:push", "registry:catalog:*"])) == 3


def test_grant_is_the_intersection_of_asked_and_allowed() -> None:
    asked = Scope.parse_many(
        ["repository:team/app:pull,push,delete", "repository:team/app/sub:*", "repository:secret:pull"]
    )
    assert RULES.grant(BOB, asked) == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    assert RULES.grant(ALICE, asked) == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push", "delete"]},
        {"type": "repository", "name": "team/app/sub", "actions": ["delete"]},
    ]
    assert RULES.grant(ALICE, Scope.parse_many(["registry:catalog:*"])) == [
        {"type": "registry", "name": "catalog", "actions": ["*"]}
    ]


def test_ci_token_scopes_must_be_repository_scopes_with_known_actions() -> None:
    assert Grant.from_scope(Scope.parse("repository:team/*:*")).actions == {"pull", "push", "delete"}
    for text in ("registry:catalog:*", "repository:team/app:pull,fly", "repository:team/app:"):
        with pytest.raises(ScopeError):
            Grant.from_scope(Scope.parse(text))


def test_claims_view_reads_the_access_claim() -> None:
    view = ClaimsView(
        [
            {"type": "repository", "name": "team/app", "actions": ["pull"]},
            {"type": "repository", "name": "team/app", "actions": ["push"]},
            {"type": "repository", "name": "all", "actions": ["*"]},
            {"type": "registry", "name": "catalog", "actions": ["*"]},
            "junk",
        ]
    )
    assert view.allows("team/app", "pull") and view.allows("team/app", "push")
    assert not view.allows("team/app", "delete")
    assert view.allows("all", "delete")
    assert view.catalog and view.allows_listing("anything", "pull")
    assert not ClaimsView(None).allows("team/app", "pull")
