"""Which tags may not move or go: the `immutable_tags:` rules, applied by the tag store to every writer (the API,
retention, repository deletion)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class TagRule(Protocol):
    def protects(self, name: str, tag: str) -> bool: ...

    def describe(self) -> str: ...


class TagPolicy:
    def __init__(self, rules: Sequence[TagRule] = ()) -> None:
        self.rules = list(rules)

    def rule_protecting(self, name: str, tag: str) -> str | None:
        """A description of the rule that makes the tag immutable, or None when it may change."""
        rule = next((rule for rule in self.rules if rule.protects(name, tag)), None)
        return None if rule is None else rule.describe()
