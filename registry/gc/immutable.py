"""Immutable tags: the store's tag guard built from the `immutable_tags:` rules."""

from __future__ import annotations

from collections.abc import Sequence

from registry.gc.settings import ImmutableTagRule, rule_protecting


class ImmutableTags:
    def __init__(self, rules: Sequence[ImmutableTagRule]) -> None:
        self.rules = list(rules)

    def rule_protecting(self, name: str, tag: str) -> str | None:
        rule = rule_protecting(self.rules, name, tag)
        return None if rule is None else rule.describe()
