"""Which manifests a tag keeps alive, and what retention rules would remove from a repository."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from registry.digests import Digest
from registry.gc.settings import ImmutableTagRule, RetentionRule, rule_protecting
from registry.store.inventory import Inventory, RepositoryContents


@dataclass(frozen=True, slots=True)
class Removal:
    """A tag to untag or a manifest (by digest) to delete, and why."""

    repository: str
    kind: Literal["tag", "manifest"]
    target: str
    reason: str
    digest: str = ""  # for a tag: what it named when the removal was planned (a tag moved since is kept)


def reachable(
    contents: RepositoryContents, inventory: Inventory, roots: Iterable[Digest], keep_referrers: bool
) -> set[Digest]:
    """The manifests of a repository that `roots` keep: the roots, their children (a multi-arch index keeps every
    platform's manifest) and, with `keep_referrers`, the manifests whose subject is kept (signatures, SBOMs)."""
    referrers: dict[Digest, list[Digest]] = {}
    if keep_referrers:
        for digest in contents.revisions:
            subject = inventory.manifests[digest].subject if digest in inventory.manifests else None
            if subject is not None:
                referrers.setdefault(subject, []).append(digest)
    kept: set[Digest] = set()
    pending = list(roots)
    while pending:
        digest = pending.pop()
        if digest in kept:
            continue
        kept.add(digest)
        references = inventory.manifests.get(digest)
        if references is not None:
            pending.extend(references.children)
        pending.extend(referrers.get(digest, ()))
    return kept


def plan_retention(
    contents: RepositoryContents,
    inventory: Inventory,
    rule: RetentionRule,
    immutable: list[ImmutableTagRule],
    keep_referrers: bool,
    now: dt.datetime,
) -> list[Removal]:
    """What `rule` removes from one repository (tags first, then the untagged manifests it would leave)."""
    name = contents.name
    removals: list[Removal] = []
    kept_tags = dict(contents.tags)
    if rule.prunes_tags:
        pushed_at = {tag: contents.tag_links.get(tag, now) for tag in contents.tags}
        for tag in tags_beyond(name, pushed_at, rule, immutable):
            del kept_tags[tag]
            removals.append(Removal(name, "tag", tag, rule.describe(), str(contents.tags[tag])))
    if rule.untagged_older_than is not None:
        limit = dt.timedelta(seconds=rule.untagged_older_than)
        alive = reachable(contents, inventory, kept_tags.values(), keep_referrers)
        for digest, pushed in sorted(contents.revisions.items(), key=lambda item: str(item[0])):
            if digest not in alive and now - pushed > limit:
                removals.append(Removal(name, "manifest", str(digest), rule.describe()))
    return removals


def tags_beyond(
    name: str, pushed: Mapping[str, dt.datetime], rule: RetentionRule, immutable: list[ImmutableTagRule]
) -> list[str]:
    """The tags of `name` (with when each was last pushed) that `rule` prunes: beyond the `keep_last` most recently
    pushed, unless `keep_tags` or an immutable-tags rule keeps them."""
    candidates = [
        tag for tag in pushed if not rule.keeps_by_pattern(tag) and rule_protecting(immutable, name, tag) is None
    ]
    # Most recently pushed first: a tag's current link is rewritten on every push of it.
    candidates.sort(key=lambda tag: (pushed[tag], tag), reverse=True)
    return candidates[rule.keep_last or 0 :]


def rule_for(rules: list[RetentionRule], name: str) -> RetentionRule | None:
    """The first rule whose repository glob matches."""
    return next((rule for rule in rules if rule.matches(name)), None)
