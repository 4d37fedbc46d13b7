"""The index's database, on SQLite and on PostgreSQL: what it keeps, and how it heals (corrupt file, older schema)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry.index.base import ManifestRecord, RepositorySnapshot, SearchQuery, TagRecord
from registry.index.database import SCHEMA_VERSION, Database
from registry.notifications.queue import DeliveryQueue
from tests.postgres_server import PostgresServer

Opener = Callable[[], Database]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's index database (each call a new connection to the same one)."""
    if request.param == "sqlite":
        yield lambda: Database.open(tmp_path / "index.sqlite")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield lambda: Database.connect(url)
    server.drop_database(url)


def older_schema(db: Database) -> None:
    """Mark the database's schema as an older version's."""
    with db._transaction() as sql:
        sql.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION - 1),))


def snapshot(name: str, description: str = "") -> RepositorySnapshot:
    labels = {"org.opencontainers.image.description": description} if description else {}
    image = ManifestRecord(
        "sha256:a", "application/vnd.oci.image.manifest.v1+json", None, 10, ("linux/amd64",), None, labels, 100.0
    )
    arm = ManifestRecord(
        "sha256:b",
        "application/vnd.oci.image.manifest.v1+json",
        None,
        20,
        ("linux/arm64/v8",),
        "2024-01-01T00:00:00Z",
        {"team": "core"},
        200.0,
    )
    return RepositorySnapshot(
        name, (TagRecord("latest", "sha256:a", 150.0), TagRecord("v2", "sha256:b", 250.0)), (image, arm)
    )


def test_replace_query_and_drop(open_db: Opener) -> None:
    db = open_db()
    db.replace("team/app", snapshot("team/app", "the app"))
    db.replace("team/db", snapshot("team/db"))
    db.add_pulls({("team/app", ""): 3})
    db.replace("team/app", snapshot("team/app", "the app, again"))  # a refresh keeps the pull count
    summary = db.summary("team/app")
    assert summary is not None
    assert (summary.description, summary.pushed_at, summary.pulls, summary.manifest_count) == (
        "the app, again",
        250.0,
        3,
        2,
    )
    assert [(t.tag, t.manifest.digest, t.pushed_at) for t in summary.tags] == [
        ("latest", "sha256:a", 150.0),
        ("v2", "sha256:b", 250.0),
    ]
    assert db.catalog(None, 10) == ["team/app", "team/db"]
    assert db.catalog("team/app", 10) == ["team/db"]
    assert db.ranked(SearchQuery(terms=("again",)), None, 10) == [(4, "team/app")]  # by its description
    assert db.ranked(SearchQuery(platforms=("linux/arm64",)), None, 10) == [(0, "team/app"), (0, "team/db")]
    assert db.ranked(SearchQuery(platforms=("linux/arm",)), None, 10) == []
    best = db.best_match("team/app", SearchQuery(labels=(("team", "core"),)))
    assert best is not None and best[0].digest == "sha256:b" and best[1] == ("v2",)
    best = db.best_match("team/app", SearchQuery(tags=("lat*",)))
    assert best is not None and best[0].digest == "sha256:a" and best[1] == ("latest",)
    db.replace("team/app", None)
    assert db.catalog(None, 10) == ["team/db"]
    assert db.summary("team/app") is None and db.known_manifests("team/app") == {}
    db.close()


def test_a_corrupt_file_is_replaced_by_an_empty_index(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    db = Database.open(path)
    assert db.catalog(None, 10) == [] and db.get_meta("schema") == str(SCHEMA_VERSION)
    db.close()


def test_an_index_of_an_older_schema_starts_over(open_db: Opener) -> None:
    db = open_db()
    db.replace("team/app", snapshot("team/app"))
    db.set_meta({"epoch": "e1", "position": "1"})
    older_schema(db)
    db.close()
    db = open_db()
    assert db.catalog(None, 10) == [] and db.get_meta("epoch") is None
    db.close()


def test_one_process_at_a_time_holds_the_build_lease(open_db: Opener) -> None:
    first, second = open_db(), open_db()
    assert first.claim("builder", "a", 60)
    assert not second.claim("builder", "b", 60)
    assert first.claim("builder", "a", 60)  # renewed
    first.release("builder", "a")
    assert second.claim("builder", "b", 60)
    second.release("builder", "a")  # not a's any more: still b's
    assert not first.claim("builder", "a", 60)
    assert second.claim("builder", "b", -1)  # expired at once
    assert first.claim("builder", "a", 60)
    first.close()
    second.close()


def test_pull_counts_outlive_a_new_schema(open_db: Opener) -> None:
    db = open_db()
    db.replace("team/app", snapshot("team/app"))
    db.replace("team/gone", snapshot("team/gone"))
    db.add_pulls({("team/app", "latest"): 5, ("team/app", ""): 2, ("team/gone", "v2"): 1})
    older_schema(db)
    db.close()
    db = open_db()
    try:
        assert db.get_meta("epoch") is None  # a new schema: rebuilt from storage
        db.replace("team/app", snapshot("team/app"))  # what the rebuild does for each repository storage has
        db.replace("team/gone", None)  # and for one it no longer has
        summary = db.summary("team/app")
        assert summary is not None and summary.pulls == 7
        assert {t.tag: t.pulls for t in summary.tags} == {"latest": 5, "v2": 0}
        assert db.names() == {"team/app"}
    finally:
        db.close()


def test_text_no_database_could_hold_is_stored_readably(open_db: Opener) -> None:
    """NUL (which PostgreSQL's text refuses) and unpaired surrogates (which UTF-8 cannot encode), from labels a
    manifest may carry: stored with U+FFFD in their place, on both engines."""
    db = open_db()
    try:
        hostile = snapshot("team/app", "null\x00byte and \ud800 surrogate")
        db.replace("team/app", hostile)
        summary = db.summary("team/app")
        assert summary is not None and summary.description == "null\ufffdbyte and \ufffd surrogate"
        assert db.ranked(SearchQuery(terms=("null",)), None, 10) == [(4, "team/app")]
    finally:
        db.close()


@pytest.mark.parametrize("rare_below", [0, 20_000])  # every label common (the name walk), or rare (its own index)
def test_filter_searches_page_in_name_order_either_way(
    open_db: Opener, monkeypatch: pytest.MonkeyPatch, rare_below: int
) -> None:
    monkeypatch.setattr("registry.index.database.RARE_LABEL_ROWS", rare_below)
    db = open_db()
    try:
        for i in range(12):
            labelled = snapshot(f"team/app{i:02d}")
            if i % 4 == 1:  # three of them carry the label
                manifests = tuple(
                    dataclasses.replace(m, labels={**m.labels, "tier": "gold"}) for m in labelled.manifests
                )
                labelled = dataclasses.replace(labelled, manifests=manifests)
            db.replace(labelled.name, labelled)
        query = SearchQuery(labels=(("tier", "gold"),))
        first = db.ranked(query, None, 2)
        assert first == [(0, "team/app01"), (0, "team/app05")]
        assert db.ranked(query, first[-1], 2) == [(0, "team/app09")]
        both = SearchQuery(labels=(("tier", "gold"),), platforms=("linux/arm64",))
        assert [name for _, name in db.ranked(both, None, 10)] == ["team/app01", "team/app05", "team/app09"]
        assert db.ranked(SearchQuery(labels=(("tier", "none"),)), None, 10) == []
    finally:
        db.close()


def test_one_pool_per_database_and_process(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """The index, the webhook queue and the failed-login counts share a process's connections to one database."""
    url = postgres_server.new_database()
    try:
        index = Database.connect(url)
        queue = DeliveryQueue.open(tmp_path / "unused.sqlite3", url)
        assert index.engine.engine is queue.engine.engine  # type: ignore[attr-defined]
        index.close()
        queue.add([("hook", "still works after the index closed its handle")])
        assert queue.pending() == 1
        queue.close()
        reopened = Database.connect(url)  # the last handle closed the pool: a new one opens
        assert reopened.engine.engine is not queue.engine.engine  # type: ignore[attr-defined]
        reopened.close()
    finally:
        postgres_server.drop_database(url)


def test_what_lists_a_digest_is_looked_up_not_walked(tmp_path: Path) -> None:
    """The reverse lookups (which indexes list a manifest, on every incremental write; what keeps a manifest, in
    GC) search blobs_by_blob by the digest. With DISTINCT, SQLite preferred walking every row of the repository
    in digest order, a cost that grows with the repository."""
    db = Database.open(tmp_path / "index.sqlite")
    plans: list[str] = []
    reader = db.engine._reader  # type: ignore[attr-defined]

    def explain(statement: str) -> None:
        if "FROM blobs" in statement and not statement.startswith("EXPLAIN"):
            plans.append(statement)

    try:
        tagged = snapshot("team/app")
        untagged = dataclasses.replace(tagged.manifests[0], digest="sha256:c", pushed_at=1.0)
        db.replace("team/app", dataclasses.replace(tagged, manifests=(*tagged.manifests, untagged)))
        reader.set_trace_callback(explain)
        db.indexes_listing("team/app", ["sha256:a", "sha256:b"])
        assert db.manifest_kept("team/app", "sha256:c", young_after=10.0, limit=1.0, keep_referrers=False) == 0.0
        reader.set_trace_callback(None)
        assert len(plans) >= 2, plans
        for statement in plans:
            # The trace shows the statement with its parameters bound: explain it as it ran.
            steps = [row[3] for row in reader.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()]
            blob_steps = [step for step in steps if "blobs" in step and "repository_blobs" not in step]
            assert blob_steps and all("blobs_by_blob" in step for step in blob_steps), (statement, steps)
    finally:
        reader.set_trace_callback(None)
        db.close()
