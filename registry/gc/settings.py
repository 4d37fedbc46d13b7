"""The `gc:`, `uploads:`, `retention:` and `immutable_tags:` config sections."""

from __future__ import annotations

import fnmatch
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry.durations import NonNegativeSeconds, Seconds


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_glob(value: str) -> str:
    if not value or value != value.strip():
        raise ValueError("a repository glob must be a non-empty pattern without surrounding spaces")
    return value


def repository_matches(glob: str, name: str) -> bool:
    """`*` matches within one path component and `**` across them: `team/*` is `team/app`, not `team/a/b`."""
    return _glob_regex(glob).fullmatch(name) is not None


def _glob_regex(glob: str) -> re.Pattern[str]:
    wildcards = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    tokens = re.split(r"(\*\*|\*|\?)", glob)
    return re.compile("".join(wildcards.get(token, re.escape(token)) for token in tokens))


class GcSettings(_Section):
    mode: Literal["auto", "database", "full"] = Field(
        default="auto",
        description="`database`: follow the metadata database's reference counts and review queues (cost follows "
        "what changed); `full`: mark over all of storage on every run. `auto`: `database` where every writer shares "
        "the database (PostgreSQL, or SQLite on the filesystem backend), else `full`. `moorage gc --full` always "
        "marks.",
    )
    interval: Seconds | None = Field(
        default=None, description="Run GC on this schedule (one replica per slot); absent: only `moorage gc`."
    )
    grace: NonNegativeSeconds = Field(
        default=3600.0, description="Unreferenced blobs younger than this are kept (pushes in flight)."
    )
    settle: NonNegativeSeconds = Field(
        default=5.0,
        description="How long a blob GC took out stays restorable before it is deleted; longer than any "
        "manifest PUT, and than the 1 s blob-existence memory of the servers.",
    )
    delete_untagged: bool = Field(default=False, description="Mark from tagged manifests only.")
    keep_referrers: bool = Field(
        default=True, description="With delete_untagged: keep manifests whose subject is kept (signatures, SBOMs)."
    )


class UploadsSettings(_Section):
    purge_after: Seconds = Field(default=86400.0, description="GC removes upload sessions older than this.")


class RetentionRule(_Section):
    """Per repository glob; the first rule whose glob matches a repository applies to it.

    With `keep_last` or `keep_tags`, tags are pruned: a tag stays when it matches `keep_tags`, or is among the
    `keep_last` most recently pushed of the others, or is immutable. With `untagged_older_than`, manifests
    that no tag reaches (directly, as a child of a tagged index, or as a referrer of a kept manifest) and that
    were pushed longer ago than that are deleted.
    """

    repository: str
    keep_last: int | None = Field(default=None, ge=0)
    keep_tags: str | None = None
    untagged_older_than: NonNegativeSeconds | None = None

    _check_repository = field_validator("repository")(_check_glob)

    @field_validator("keep_tags")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"keep_tags: not a valid regular expression: {e}") from None
        return value

    @model_validator(mode="after")
    def _does_something(self) -> RetentionRule:
        if self.keep_last is None and self.keep_tags is None and self.untagged_older_than is None:
            raise ValueError("a retention rule needs keep_last, keep_tags or untagged_older_than")
        return self

    def matches(self, name: str) -> bool:
        return repository_matches(self.repository, name)

    @property
    def prunes_tags(self) -> bool:
        return self.keep_last is not None or self.keep_tags is not None

    def keeps_by_pattern(self, tag: str) -> bool:
        return self.keep_tags is not None and re.search(self.keep_tags, tag) is not None

    def describe(self) -> str:
        parts = [f"repository={self.repository!r}"]
        if self.keep_last is not None:
            parts.append(f"keep_last={self.keep_last}")
        if self.keep_tags is not None:
            parts.append(f"keep_tags={self.keep_tags!r}")
        if self.untagged_older_than is not None:
            parts.append(f"untagged_older_than={self.untagged_older_than:g}s")
        return "retention rule " + " ".join(parts)


class ImmutableTagRule(_Section):
    """Tags of matching repositories matching one of `tags` (globs like `v*`) cannot be moved or deleted."""

    repository: str
    tags: list[str] = Field(min_length=1)

    _check_repository = field_validator("repository")(_check_glob)

    def protects(self, name: str, tag: str) -> bool:
        return repository_matches(self.repository, name) and any(fnmatch.fnmatchcase(tag, p) for p in self.tags)

    def describe(self) -> str:
        return f"immutable_tags rule repository={self.repository!r} tags={self.tags!r}"


def rule_protecting(rules: list[ImmutableTagRule], name: str, tag: str) -> ImmutableTagRule | None:
    return next((rule for rule in rules if rule.protects(name, tag)), None)
