from __future__ import annotations

import pytest

from registry.client.errors import ClientError
from registry.client.manifests import parse_platform
from registry.client.reference import Reference, is_local, parse_reference, parse_registry, parse_repository

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("registry.example:5000/team/app:1.0", Reference("registry.example:5000", "team/app", "1.0")),
        ("localhost:5000/app", Reference("localhost:5000", "app")),
        ("localhost/team/app:v2", Reference("localhost", "team/app", "v2")),
        (f"127.0.0.1:5000/a/b/c@{DIGEST}", Reference("127.0.0.1:5000", "a/b/c", None, DIGEST)),
        (f"r.io/app:1@{DIGEST}", Reference("r.io", "app", "1", DIGEST)),
        ("alpine", Reference("docker.io", "library/alpine")),
        ("team/app:3", Reference("docker.io", "team/app", "3")),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_reference_helpers() -> None:
    ref = parse_reference("localhost:5000/team/app")
    assert ref.reference == "latest"
    assert str(ref.with_tag("2.0")) == "localhost:5000/team/app:2.0"
    assert ref.with_tag("2.0").short == "team/app:2.0"
    assert parse_reference(f"h:1/a:1@{DIGEST}").reference == DIGEST


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost:5000/Team/app",
        "localhost:5000/app:bad tag",
        "h.io/app@sha256",
        "localhost:5000/app:v1\n",  # `$` would match before a final newline
        f"localhost:5000/app@{DIGEST}\n",
    ],
)
def test_invalid_references(text: str) -> None:
    with pytest.raises(ClientError):
        parse_reference(text)


def test_repository_and_registry() -> None:
    assert parse_repository("h.io:5000/team/app") == Reference("h.io:5000", "team/app")
    with pytest.raises(ClientError, match="without tag"):
        parse_repository("h.io/team/app:1")
    assert parse_registry("https://h.io:5000/v2/") == "h.io:5000"
    assert is_local("localhost:5000") and is_local("127.0.0.1") and is_local("[::1]:5000")
    assert not is_local("registry.example:5000")


def test_platforms() -> None:
    assert parse_platform("linux/arm64/v8") == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    with pytest.raises(ClientError, match="os/arch"):
        parse_platform("arm64")
