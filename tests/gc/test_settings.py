"""The `gc:`, `uploads:`, `retention:` and `immutable_tags:` sections: defaults, durations, and clear refusals."""

from __future__ import annotations

from typing import Any

import pytest

from registry.gc.settings import ImmutableTagRule, RetentionRule, repository_matches, rule_protecting
from registry.settings import Settings


def settings(**sections: Any) -> Settings:
    return Settings.model_validate(sections)


def test_defaults() -> None:
    defaults = settings()
    assert defaults.gc.interval is None and defaults.gc.grace == 3600.0 and defaults.gc.keep_referrers
    assert not defaults.gc.delete_untagged
    assert defaults.uploads.purge_after == 86400.0
    assert defaults.retention == [] and defaults.immutable_tags == []


def test_durations_read_like_distributions() -> None:
    parsed = settings(gc={"interval": "90m", "grace": "0s", "settle": "500ms"}, uploads={"purge_after": "7d"})
    assert (parsed.gc.interval, parsed.gc.grace, parsed.gc.settle) == (5400.0, 0.0, 0.5)
    assert parsed.uploads.purge_after == 7 * 86400.0


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"gc": {"interval": "0s"}}, "greater than 0"),
        ({"gc": {"grace": "soon"}}, "grace"),
        ({"gc": {"graze": "1h"}}, "graze"),
        ({"retention": [{"repository": "team/*"}]}, "needs keep_last, keep_tags or untagged_older_than"),
        ({"retention": [{"repository": "team/*", "keep_tags": "(unclosed"}]}, "not a valid regular expression"),
        ({"retention": [{"repository": "team/*", "keep_last": -1}]}, "keep_last"),
        ({"retention": [{"repository": " ", "keep_last": 1}]}, "repository glob"),
        ({"immutable_tags": [{"repository": "team/*", "tags": []}]}, "tags"),
    ],
)
def test_bad_sections_are_refused_clearly(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.model_validate(sections)


@pytest.mark.parametrize(
    ("glob", "name", "matches"),
    [
        ("team/*", "team/app", True),
        ("team/*", "team/app/sub", False),
        ("team/**", "team/app/sub", True),
        ("**", "anything/at/all", True),
        ("team/app", "team/app", True),
        ("team/app", "team/apps", False),
        ("team.app", "teamxapp", False),
        ("t?am/*", "team/x", True),
    ],
)
def test_repository_globs(glob: str, name: str, matches: bool) -> None:
    assert repository_matches(glob, name) is matches


def test_rules_describe_themselves() -> None:
    rule = RetentionRule(repository="team/*", keep_last=3, keep_tags="^v", untagged_older_than="7d")
    described = "retention rule repository='team/*' keep_last=3 keep_tags='^v' untagged_older_than=604800s"
    assert rule.describe() == described
    assert rule.keeps_by_pattern("v1") and not rule.keeps_by_pattern("dev")
    rules = [ImmutableTagRule(repository="prod/**", tags=["v*", "stable"])]
    assert rule_protecting(rules, "prod/a/b", "v1.2") is rules[0]
    assert rule_protecting(rules, "prod/a", "stable") is rules[0]
    assert rule_protecting(rules, "prod/a", "latest") is None
    assert rule_protecting(rules, "dev/a", "v1") is None


def test_the_schedule_runs_only_on_writable_replicas() -> None:
    from registry.app import create_app
    from registry.gc.schedule import GcSchedule

    def schedule_of(read_only: bool) -> object:
        app = create_app(
            settings(
                gc={"interval": "1h"},
                maintenance={"read_only": read_only},
                metrics={"enabled": False},
                storage={"filesystem": {"root": "/nonexistent-not-started"}},
            )
        )
        return app.state.gc_schedule

    assert isinstance(schedule_of(False), GcSchedule)
    assert schedule_of(True) is None
