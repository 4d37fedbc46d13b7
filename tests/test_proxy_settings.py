"""The `proxy:` section refuses what could not work: names, URLs, prefixes that overlap, credentials half given."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from registry.proxy.settings import ProxySettings


def upstream(**overrides: Any) -> dict[str, Any]:
    return {"name": "hub", "url": "https://registry-1.docker.io", "prefix": "hub", **overrides}


def test_a_valid_section() -> None:
    settings = ProxySettings.model_validate(
        {"upstreams": [upstream(tag_ttl="5m", prefix="hub/"), upstream(name="mirror", prefix="")]}
    )
    assert settings.upstreams[0].prefix == "hub"
    assert settings.upstreams[0].tag_ttl == 300.0


@pytest.mark.parametrize(
    ("upstreams", "problem"),
    [
        ([upstream(url="https://user:pw@registry.example")], "without a path or credentials"),
        ([upstream(url="ftp://registry.example")], "http(s)://host"),
        ([upstream(url="https://registry.example/v2")], "without a path"),
        ([upstream(prefix="Hub")], "repository name components"),
        ([upstream(prefix="../x")], "repository name components"),
        ([upstream(name="a b")], "letters, digits"),
        ([upstream(), upstream()], "same name"),
        ([upstream(prefix=""), upstream(name="b", prefix="")], "at most one upstream"),
        ([upstream(prefix="hub"), upstream(name="b", prefix="hub/library")], "overlap"),
        ([upstream(password="x")], "needs a username"),
        ([upstream(username="u", password="x", password_file="/run/secret")], "not both"),
    ],
)
def test_refused(upstreams: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ProxySettings.model_validate({"upstreams": upstreams})


def test_sizes_and_eviction_settings() -> None:
    settings = ProxySettings.model_validate(
        {"upstreams": [upstream(max_bytes="10GiB", evict_after="30d"), upstream(name="b", prefix="b", max_bytes=5)]}
    )
    assert settings.upstreams[0].max_bytes == 10 * 2**30
    assert settings.upstreams[0].evict_after == 30 * 86400
    assert settings.upstreams[1].max_bytes == 5
    for bad in ("10 gigs", "-1", 0):
        with pytest.raises(ValidationError):
            ProxySettings.model_validate({"upstreams": [upstream(max_bytes=bad)]})
