"""Who may do what: scopes (`repository:team/app:pull,push`), the access rules, and the caller's rights.

A user's rights on a repository are the union of the actions of every rule naming the repository and the user or
one of the user's groups; nothing matches = no rights. Rules for `anonymous` hold for every caller (logging in never
takes a right away). A CI token can do what its own scopes say (plus what anonymous may), whatever the rules grant
to names like its own.

Repository visibility refines that: a repository marked public may be pulled by anyone; one marked private only by
the users and groups rules name, not through rules for `anonymous` or `*`. When several visibility entries match a
repository, the one with the longest pattern decides (private on a tie).

The rules are the `access:` section of the config plus those stored in the database through the admin API;
`AccessRules.replace` swaps them while the process runs (registry/policy).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from registry.auth.settings import ACTIONS, ANONYMOUS, AccessRule
from registry.names import MAX_NAME_LENGTH

ALL_ACTIONS = frozenset(ACTIONS)
NO_ACTIONS: frozenset[str] = frozenset()
_CACHE_LIMIT = 10_000

IdentityKind = Literal["anonymous", "user", "ci", "external"]


@functools.lru_cache(maxsize=1024)
def glob_regex(pattern: str, *, segments: bool) -> re.Pattern[str]:
    """`**` matches anything; `*` matches within one path segment when `segments`, else anything.

    In time linear in the name whatever the pattern (a token's scope or a rule may be anyone's): each wildcard
    followed by literal text takes the text's first occurrence, atomically, instead of a backtracking `.*`
    (`*a*a*a*a*b` against a long run of `a`s would otherwise stall the event loop for seconds to hours). The first
    occurrence is always the right one: what lies between it and a later one holds no `/` (a `*` could not cross
    one) and the next wildcard takes it. Only the text after the last wildcard is anchored at the end.
    """
    pieces = [piece for piece in re.split(r"(\*+)", pattern) if piece]
    parts: list[str] = []
    wildcard: str | None = None  # the class of the wildcard awaiting its literal text
    for index, piece in enumerate(pieces):
        if piece.startswith("*"):
            kind = "." if (len(piece) > 1 or not segments) else "[^/]"
            wildcard = "." if wildcard == "." else kind  # adjacent wildcards: the widest
            continue
        literal = re.escape(piece)
        if wildcard is None:
            parts.append(literal)
        elif index == len(pieces) - 1:
            parts.append(f"{wildcard}*{literal}")  # the last text: anchored at the end, after any wildcard run
        elif wildcard == "[^/]" or _next_wildcard(pieces, index, segments) == ".":
            parts.append(f"(?>{wildcard}*?{literal})")
        else:
            # `**`, text, then `*`: the first occurrence may leave a `/` the `*` cannot take; this one may try
            # others (bounded: patterns from the API and tokens hold at most MAX_DOUBLE_STARS `**`).
            parts.append(f"{wildcard}*?{literal}")
        wildcard = None
    if wildcard is not None:
        parts.append(f"{wildcard}*")
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _next_wildcard(pieces: list[str], index: int, segments: bool) -> str | None:
    for piece in pieces[index + 1 :]:
        if piece.startswith("*"):
            return "." if (len(piece) > 1 or not segments) else "[^/]"
    return None


MAX_DOUBLE_STARS = 2


def check_pattern(pattern: str) -> None:
    """Refuse what a pattern given by a user (a token's scope, a rule through the API) may not hold: control
    characters, and more `**` than MAX_DOUBLE_STARS (each may cost a pass over the name)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in pattern):
        raise ValueError("a pattern may not hold control characters")
    if len(re.findall(r"\*\*+", pattern)) > MAX_DOUBLE_STARS:
        raise ValueError(f"a pattern may hold at most {MAX_DOUBLE_STARS} `**`")
    if len(re.findall(r"\*\*+[^*]+(?=\*(?!\*))", pattern)) > 1:
        # `**`, text, `*`: the one form matched by trying positions; twice would cost a pass per pair of them.
        raise ValueError("a pattern may hold `**` followed by text and a single `*` only once")


def expand_actions(actions: Iterable[str]) -> frozenset[str]:
    """`*` is every action; unknown actions are dropped."""
    result = set()
    for action in actions:
        if action == "*":
            return ALL_ACTIONS
        if action in ALL_ACTIONS:
            result.add(action)
    return frozenset(result)


class ScopeError(ValueError):
    pass


@dataclass(frozen=True)
class Scope:
    """One `type[(class)]:name:actions` item of the Docker token spec."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not kind or not name:
            raise ScopeError(f"invalid scope {text!r}: expected type:name:action[,action]")
        kind = kind.split("(", 1)[0]  # `repository(plugin)`: the class does not matter here
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    @classmethod
    def parse_many(cls, texts: Iterable[str]) -> list[Scope]:
        """Scopes from query parameters or form fields; several may share one, separated by spaces."""
        return [cls.parse(item) for text in texts for item in text.split() if item]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


@dataclass(frozen=True)
class Grant:
    """A repository glob and the actions allowed on repositories it matches (a CI token's scope)."""

    pattern: str
    actions: frozenset[str]

    def matches(self, repository: str) -> bool:
        return glob_regex(self.pattern, segments=True).match(repository) is not None

    @classmethod
    def from_scope(cls, scope: Scope, *, check: bool = True) -> Grant:
        """`check`: a new scope (a stored one is read as it was made)."""
        if scope.type != "repository":
            raise ScopeError(f"invalid scope {scope}: CI tokens take repository scopes")
        actions = expand_actions(scope.actions)
        if not actions or len(actions) < len(set(scope.actions) - {"*"}):
            raise ScopeError(f"invalid scope {scope}: actions are pull, push, delete or *")
        if check:
            try:
                check_pattern(scope.name)
            except ValueError as e:
                raise ScopeError(f"invalid scope {str(scope)[:300]}: {e}") from None
        return cls(scope.name, actions)

    def __str__(self) -> str:
        return f"repository:{self.pattern}:{','.join(a for a in ACTIONS if a in self.actions)}"


@dataclass(frozen=True)
class Identity:
    """Who is calling. `name` is empty for anonymous callers."""

    kind: IdentityKind
    name: str = ""
    grants: tuple[Grant, ...] = ()  # a CI token's scopes, or a personal token's (which narrow the user's rights)
    token_id: str = ""  # a CI or personal token's record id, so that its revocation is seen at once
    groups: frozenset[str] = frozenset()
    source: str = ""  # where a user signed in: "htpasswd", "ldap" or "oidc" (their names are one namespace)
    credential: str = ""  # an htpasswd user's: the mark of the password entry signed in with (HtpasswdFile)

    @property
    def authenticated(self) -> bool:
        return self.kind != "anonymous"


ANONYMOUS_IDENTITY = Identity("anonymous")


@dataclass(frozen=True)
class Visibility:
    """A repository glob marked public (anyone may pull) or private (only those rules name)."""

    repository: str
    public: bool


@dataclass(frozen=True)
class _CompiledRule:
    repository: re.Pattern[str]
    users: tuple[re.Pattern[str], ...]
    groups: tuple[re.Pattern[str], ...]
    any_user: bool
    anonymous: bool
    actions: frozenset[str]

    def names(self, user: str, groups: frozenset[str]) -> bool:
        return any(u.match(user) for u in self.users) or any(g.match(group) for g in self.groups for group in groups)


def _any(pattern: str) -> bool:
    """`*`, `**`, ...: a pattern any name matches."""
    return bool(pattern) and set(pattern) == {"*"}


def _compile(rule: AccessRule) -> _CompiledRule:
    return _CompiledRule(
        repository=glob_regex(rule.repository, segments=True),
        users=tuple(glob_regex(u, segments=False) for u in rule.users if not _any(u) and u != ANONYMOUS),
        groups=tuple(glob_regex(g, segments=False) for g in rule.groups),
        any_user=any(_any(u) for u in rule.users),
        anonymous=ANONYMOUS in rule.users,
        actions=expand_actions(rule.actions),
    )


_PULL = frozenset({"pull"})


class AccessRules:
    """The access rules and visibility, compiled, with a memory of answers (cleared when they are replaced)."""

    def __init__(self, rules: Sequence[AccessRule], visibility: Sequence[Visibility] = ()) -> None:
        self._cache: dict[tuple[str, str, frozenset[str], str], frozenset[str]] = {}
        self.replace(rules, visibility)

    def replace(
        self, rules: Sequence[AccessRule], visibility: Sequence[Visibility] = (), *, all_private: bool = False
    ) -> None:
        """Take these rules and visibility from now on (every view of this object sees them at once).
        `all_private`: hold every repository private (the stored visibility is not known yet)."""
        if all_private:
            visibility = [Visibility("**", public=False)]
        compiled = [_compile(rule) for rule in rules]
        # Longest pattern first: the first match decides; private before public on a tie.
        ordered = sorted(visibility, key=lambda v: (-len(v.repository), v.public))
        self._visibility = [(glob_regex(v.repository, segments=True), v.public) for v in ordered]
        self._rules = compiled
        self.anonymous_allowed = any(rule.anonymous and rule.actions for rule in compiled) or any(
            public for _, public in self._visibility
        )
        self._cache = {}

    def _visibility_of(self, repository: str) -> bool | None:
        for pattern, public in self._visibility:
            if pattern.match(repository):
                return public
        return None

    def _rule_actions(self, kind: IdentityKind, user: str, groups: frozenset[str], repository: str) -> frozenset[str]:
        visibility = self._visibility_of(repository)
        members_only = visibility is False
        actions: set[str] = set()
        for rule in self._rules:
            if not rule.repository.match(repository):
                continue
            if rule.anonymous or (kind == "user" and rule.any_user):
                if not members_only:
                    actions |= rule.actions
            elif kind == "user" and rule.names(user, groups):
                actions |= rule.actions
        if visibility:
            actions |= _PULL
        return frozenset(actions)

    def actions(self, identity: Identity, repository: str) -> frozenset[str]:
        """Every action `identity` may do on `repository`."""
        kind = identity.kind
        if kind == "ci":
            ci = self._cached_actions("anonymous", "", frozenset(), repository)
            for grant in identity.grants:
                if grant.matches(repository):
                    ci = ci | grant.actions
            return ci
        actions = self._cached_actions(kind, identity.name, identity.groups, repository)
        if identity.grants:  # a personal token: the user's rights, narrowed to its scopes
            actions = frozenset(
                a for a in actions if any(g.matches(repository) and a in g.actions for g in identity.grants)
            )
        return actions

    def _cached_actions(self, kind: IdentityKind, name: str, groups: frozenset[str], repository: str) -> frozenset[str]:
        """What the rules (and visibility) give; remembered, since every request of a token asks again."""
        key = (kind, name, groups, repository)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._rule_actions(kind, name, groups, repository)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def grant(self, identity: Identity, scopes: Iterable[Scope]) -> list[dict[str, Any]]:
        """The token spec's `access` claim: what was asked, narrowed to what is allowed (never an error)."""
        granted: list[dict[str, Any]] = []
        for scope in scopes:
            if scope.type == "repository":
                if len(scope.name) > MAX_NAME_LENGTH:
                    continue  # no repository has such a name: nothing to match it against
                allowed = self.actions(identity, scope.name)
                actions = [a for a in ACTIONS if a in allowed and ("*" in scope.actions or a in scope.actions)]
            elif scope.type == "registry" and scope.name == "catalog":
                # Listings and search show each caller only what it may pull: anyone let in may ask.
                actions = list(scope.actions) if identity.authenticated or self.anonymous_allowed else []
            else:
                actions = []
            if actions:
                granted.append({"type": scope.type, "name": scope.name, "actions": actions})
        return granted


class RuleView:
    """The caller's rights according to the rules (`registry.handlers.common.AccessView`)."""

    __slots__ = ("identity", "rules")

    def __init__(self, rules: AccessRules, identity: Identity) -> None:
        self.rules = rules
        self.identity = identity

    def allows(self, repository: str, action: str) -> bool:
        return action in self.rules.actions(self.identity, repository)


class ClaimsView:
    """Rights carried by a bearer token's `access` claim (tokens of an external issuer are taken at their word)."""

    __slots__ = ("_actions", "catalog")

    def __init__(self, access: object) -> None:
        self._actions: dict[str, frozenset[str]] = {}
        self.catalog = False
        if not isinstance(access, list):
            return
        for entry in access:
            if not isinstance(entry, dict):
                continue
            kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
            if not isinstance(name, str) or not isinstance(actions, list):
                continue
            if kind == "repository":
                self._actions[name] = self._actions.get(name, NO_ACTIONS) | expand_actions(map(str, actions))
            elif kind == "registry" and name == "catalog" and actions:
                self.catalog = True

    def allows(self, repository: str, action: str) -> bool:
        return action in self._actions.get(repository, NO_ACTIONS)

    def allows_listing(self, repository: str, action: str) -> bool:
        """For catalog and search: a token granting the catalog lists everything, like Distribution does."""
        return self.catalog or self.allows(repository, action)


class ListingView:
    __slots__ = ("claims",)

    def __init__(self, claims: ClaimsView) -> None:
        self.claims = claims

    def allows(self, repository: str, action: str) -> bool:
        return self.claims.allows_listing(repository, action)
