"""The search language, and how names rank (in SQL: the ranking runs where the rows are)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.errors import RegistryError
from registry.index.base import ManifestRecord, RepositorySnapshot, SearchQuery
from registry.index.database import Database
from registry.index.query import RANK_DESCRIPTION_ONLY, parse_query

DESCRIPTION = "org.opencontainers.image.description"


def test_parts_of_a_query() -> None:
    query = parse_query("Web  label:team=core label:maintainer platform:linux/ARM64 type:application/x tag:v1.*")
    assert query == SearchQuery(
        terms=("web",),
        labels=(("team", "core"), ("maintainer", None)),
        platforms=("linux/arm64",),
        artifact_types=("application/x",),
        tags=("v1.*",),
    )
    assert query.filters_manifests
    assert parse_query("artifactType:application/y").artifact_types == ("application/y",)
    assert parse_query("") == SearchQuery()
    assert not parse_query("a b").filters_manifests
    # A colon without a known prefix is part of a word.
    assert parse_query("sha256:abc").terms == ("sha256:abc",)


@pytest.mark.parametrize(
    "q", ["label:", "label:=x", "platform:linux", "platform:linux/", "platform:a/b/c/d", "tag:", "x " * 17, "x" * 1025]
)
def test_invalid_queries_are_refused(q: str) -> None:
    with pytest.raises(RegistryError) as caught:
        parse_query(q)
    assert caught.value.status == 400
    assert caught.value.body()["errors"][0]["detail"]["reason"]


def test_ranking(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "index.sqlite")
    names = ["app", "team/app", "team/apple", "team/my-app-server", "team/webapp", "team/db", "zzz/x.app"]
    for name in names:
        labels = {DESCRIPTION: "about app"} if name == "team/db" else {}
        manifest = ManifestRecord("sha256:a", "m", None, 1, (), None, labels, 1.0)
        db.replace(name, RepositorySnapshot(name, (), (manifest,)))
    ranks = {name: db.rank_of(name, ("app",)) for name in names}
    assert ranks == {
        "app": 0,
        "team/app": 1,
        "team/apple": 2,
        "team/my-app-server": 2,
        "zzz/x.app": 2,
        "team/webapp": 3,
        "team/db": RANK_DESCRIPTION_ONLY,
    }
    assert db.ranked(SearchQuery(terms=("app",)), None, 100) == sorted((rank, name) for name, rank in ranks.items())
    assert db.ranked(SearchQuery(terms=("app",)), (2, "team/apple"), 2) == [(2, "team/my-app-server"), (2, "zzz/x.app")]
    # Several words: the worst one decides; no words: everything ranks alike.
    assert db.rank_of("team/app", ("team", "app")) == 2
    assert db.rank_of("team/app", ()) == 0
    assert db.ranked(SearchQuery(terms=("team", "app")), None, 100)[0] == (2, "team/app")
    db.close()
