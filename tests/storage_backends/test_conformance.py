"""Conformance suite of the storage backend interface (storage_backends/base.py).

Every test runs against every backend of `conftest.HARNESSES` and only talks to the StorageBackend interface;
the few things the interface cannot tell (temporary traces, setting an old modification time, whether
redirects are expected) come from the `harness` fixture. What is pinned down here is the contract the
registry relies on, so a behaviour a backend cannot honour is a bug in that backend, not in the suite.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from storage_backends.base import (
    DEFAULT_CHUNK_SIZE,
    FileInfo,
    InvalidPath,
    PathNotFound,
    StorageBackend,
    StorageError,
)

from .conftest import BackendHarness

KiB = 1024
MiB = 1024 * KiB


# -- helpers ---------------------------------------------------------------------------------------


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (every byte value occurs, so no text-mode surprises)."""
    return random.Random(seed).randbytes(size)


async def chunks_of(backend: StorageBackend, path: str, offset: int = 0, length: int | None = None) -> list[bytes]:
    chunks = [chunk async for chunk in backend.reader(path, offset, length)]
    for chunk in chunks:
        assert isinstance(chunk, bytes)
        assert chunk, "a reader must not yield empty chunks"
    return chunks


async def read_all(backend: StorageBackend, path: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join(await chunks_of(backend, path, offset, length))


async def drain(iterator: AsyncIterator[object]) -> list[object]:
    return [item async for item in iterator]


async def walk_paths(backend: StorageBackend, path: str, start_after: str | None = None) -> list[str]:
    return [info.path async for info in backend.walk(path, start_after)]


def assert_recent(when: dt.datetime) -> None:
    """A timezone-aware time close to now (catches naive or local times posing as UTC)."""
    assert when.tzinfo is not None and when.utcoffset() is not None, f"naive datetime: {when!r}"
    now = dt.datetime.now(dt.UTC)
    assert abs(now - when) < dt.timedelta(minutes=5), f"{when} is not close to now ({now})"


async def assert_missing(backend: StorageBackend, path: str) -> None:
    """Nothing at all is visible at `path`, through any read operation."""
    with pytest.raises(PathNotFound) as exc:
        await backend.stat(path)
    assert exc.value.path == path
    with pytest.raises(PathNotFound):
        await backend.get_content(path)
    with pytest.raises(PathNotFound):
        await read_all(backend, path)
    assert await backend.exists(path) is False


async def assert_no_leftovers(harness: BackendHarness) -> None:
    assert await harness.leftovers() == []


async def put_all(backend: StorageBackend, keys: list[str]) -> None:
    """Store every key with its own name as content (so that sizes differ)."""
    for key in keys:
        assert await backend.put_content(key, key.encode()) is True


@pytest.fixture(autouse=True)
async def _no_leftovers_after_test(harness: BackendHarness) -> AsyncIterator[None]:
    """Whatever a test did, it must not leave temporary traces behind."""
    yield
    await assert_no_leftovers(harness)


# -- small objects: put_content / get_content ----------------------------------------------------------


async def test_put_get_round_trip(backend: StorageBackend) -> None:
    data = bytes(range(256)) * 3 + b"\r\n\x00\n"
    assert await backend.put_content("objects/one", data) is True
    assert await backend.get_content("objects/one") == data
    assert await backend.exists("objects/one") is True


async def test_put_creates_intermediate_prefixes(backend: StorageBackend) -> None:
    assert await backend.put_content("a/b/c/d/e/f", b"deep") is True
    assert await backend.get_content("a/b/c/d/e/f") == b"deep"
    assert [(i.path, i.is_dir) for i in await backend.list("a")] == [("a/b", True)]
    assert [(i.path, i.is_dir) for i in await backend.list("a/b/c/d/e")] == [("a/b/c/d/e/f", False)]


async def test_put_empty_object(backend: StorageBackend) -> None:
    assert await backend.put_content("empty", b"") is True
    assert await backend.get_content("empty") == b""
    info = await backend.stat("empty")
    assert (info.size, info.is_dir) == (0, False)
    assert await chunks_of(backend, "empty") == []
    assert await backend.exists("empty") is True


async def test_put_overwrites(backend: StorageBackend) -> None:
    assert await backend.put_content("k", b"first version") is True
    assert await backend.put_content("k", b"second") is True
    assert await backend.get_content("k") == b"second"
    assert (await backend.stat("k")).size == len(b"second")


async def test_put_exclusive_creates_when_absent(backend: StorageBackend) -> None:
    assert await backend.put_content("k", b"data", exclusive=True) is True
    assert await backend.get_content("k") == b"data"


async def test_put_exclusive_keeps_existing_content(backend: StorageBackend, harness: BackendHarness) -> None:
    assert await backend.put_content("k", b"old") is True
    assert await backend.put_content("k", b"new and longer", exclusive=True) is False
    assert await backend.get_content("k") == b"old"
    assert (await backend.stat("k")).size == 3
    await assert_no_leftovers(harness)


async def test_put_exclusive_race_has_exactly_one_winner(backend: StorageBackend) -> None:
    contents = [f"contender {i}".encode() for i in range(10)]
    results = await asyncio.gather(*(backend.put_content("race/k", c, exclusive=True) for c in contents))
    assert results.count(True) == 1, results
    assert await backend.get_content("race/k") == contents[results.index(True)]


async def test_concurrent_overwrites_are_atomic(backend: StorageBackend) -> None:
    contents = [payload(256 * KiB, seed=i) for i in range(6)]
    results = await asyncio.gather(*(backend.put_content("atomic", c) for c in contents))
    assert results == [True] * len(contents)
    assert await backend.get_content("atomic") in contents


async def test_get_content_of_missing_key(backend: StorageBackend) -> None:
    with pytest.raises(PathNotFound) as exc:
        await backend.get_content("no/such/key")
    assert exc.value.path == "no/such/key"


async def test_a_prefix_is_not_an_object(backend: StorageBackend) -> None:
    await backend.put_content("dir/child", b"x")
    with pytest.raises(PathNotFound):
        await backend.get_content("dir")
    with pytest.raises(PathNotFound):
        await read_all(backend, "dir")


async def test_keys_below_an_object_do_not_exist(backend: StorageBackend) -> None:
    await backend.put_content("obj", b"content")
    below = "obj/child"
    await assert_missing(backend, below)
    with pytest.raises(PathNotFound):
        await backend.list("obj")
    with pytest.raises(PathNotFound):
        await backend.list(below)
    assert await walk_paths(backend, "obj") == []
    assert await walk_paths(backend, below) == []
    with pytest.raises(PathNotFound):
        await backend.touch(below)
    with pytest.raises(PathNotFound):
        await backend.copy(below, "elsewhere")
    with pytest.raises(PathNotFound):
        await backend.move(below, "elsewhere")
    await backend.delete(below)
    assert await backend.get_content("obj") == b"content"
    await assert_missing(backend, "elsewhere")


async def test_keys_sharing_a_name_prefix_are_distinct(backend: StorageBackend) -> None:
    keys = ["n/k", "n/K", "n/k-1", "n/k.1", "n/kk", "n/k_"]
    await put_all(backend, keys)
    for key in keys:
        assert await backend.get_content(key) == key.encode()
    await backend.delete("n/k")
    await assert_missing(backend, "n/k")
    assert await walk_paths(backend, "n") == sorted(set(keys) - {"n/k"})


# -- invalid paths ---------------------------------------------------------------------------------------

INVALID_PATHS = [
    "",
    "/",
    "/abs",
    "/abs/olute",
    "a/../b",
    "..",
    "../escape",
    "a/..",
    ".",
    "./a",
    "a/./b",
    "a//b",
    "trailing/",
    "a/b/",
    "back\\slash",
    "nul\x00byte",
]

Operation = Callable[[StorageBackend, str], Awaitable[object]]

OPERATIONS: dict[str, Operation] = {
    "get_content": lambda b, p: b.get_content(p),
    "put_content": lambda b, p: b.put_content(p, b"x"),
    "put_content_exclusive": lambda b, p: b.put_content(p, b"x", exclusive=True),
    "reader": lambda b, p: drain(b.reader(p)),
    "reader_range": lambda b, p: drain(b.reader(p, 1, 2)),
    "writer": lambda b, p: b.writer(p),
    "writer_exclusive": lambda b, p: b.writer(p, exclusive=True),
    "stat": lambda b, p: b.stat(p),
    "exists": lambda b, p: b.exists(p),
    "list": lambda b, p: b.list(p),
    "walk": lambda b, p: drain(b.walk(p)),
    "copy_src": lambda b, p: b.copy(p, "valid/dst"),
    "copy_dst": lambda b, p: b.copy("valid/src", p),
    "copy_dst_exclusive": lambda b, p: b.copy("valid/src", p, exclusive=True),
    "move_src": lambda b, p: b.move(p, "valid/dst"),
    "move_dst": lambda b, p: b.move("valid/src", p),
    "move_dst_exclusive": lambda b, p: b.move("valid/src", p, exclusive=True),
    "delete": lambda b, p: b.delete(p),
    "touch": lambda b, p: b.touch(p),
}


@pytest.mark.parametrize("path", INVALID_PATHS)
async def test_invalid_paths_are_rejected(backend: StorageBackend, harness: BackendHarness, path: str) -> None:
    # Every operation on one backend (a fresh bucket per case made this the slowest part of the suite on S3).
    await backend.put_content("valid/src", b"source")
    wrong: list[str] = []
    for operation, call in OPERATIONS.items():
        try:
            await call(backend, path)
        except InvalidPath as e:
            if e.path != path or not isinstance(e, StorageError):
                wrong.append(f"{operation}: InvalidPath for {e.path!r}")
        except Exception as e:
            wrong.append(f"{operation}: {type(e).__name__}: {e}")
        else:
            wrong.append(f"{operation}: accepted")
        # Nothing was created, moved or removed.
        if (listed := await walk_paths(backend, "valid")) != ["valid/src"]:
            wrong.append(f"{operation}: left {listed}")
        if await backend.get_content("valid/src") != b"source":
            wrong.append(f"{operation}: changed valid/src")
        await assert_no_leftovers(harness)
    assert wrong == [], f"path {path!r}"


# -- writer ------------------------------------------------------------------------------------------------


async def test_writer_content_is_invisible_until_commit(backend: StorageBackend) -> None:
    writer = await backend.writer("up/load/blob")
    await writer.write(b"hello ")
    await writer.write(b"world")
    await assert_missing(backend, "up/load/blob")
    with pytest.raises(PathNotFound):
        await backend.list("up/load")
    assert await walk_paths(backend, "up") == []
    assert await writer.commit() is True
    assert await backend.get_content("up/load/blob") == b"hello world"
    info = await backend.stat("up/load/blob")
    assert (info.path, info.size, info.is_dir) == ("up/load/blob", 11, False)
    assert_recent(info.modified)
    assert await walk_paths(backend, "up") == ["up/load/blob"]


async def test_writer_size_counts_bytes(backend: StorageBackend) -> None:
    writer = await backend.writer("sized")
    assert writer.size == 0
    await writer.write(b"abc")
    assert writer.size == 3
    await writer.write(b"")
    assert writer.size == 3
    await writer.write(b"\x00" * 1000)
    assert writer.size == 1003
    assert await writer.commit() is True
    assert (await backend.stat("sized")).size == 1003


async def test_writer_without_writes_commits_an_empty_object(backend: StorageBackend) -> None:
    writer = await backend.writer("empty")
    assert await writer.commit() is True
    assert await backend.get_content("empty") == b""
    assert (await backend.stat("empty")).size == 0


async def test_writer_replaces_existing_content_only_at_commit(backend: StorageBackend) -> None:
    await backend.put_content("k", b"old content")
    writer = await backend.writer("k")
    await writer.write(b"new")
    assert await backend.get_content("k") == b"old content"
    assert await writer.commit() is True
    assert await backend.get_content("k") == b"new"
    assert (await backend.stat("k")).size == 3


async def test_writer_cancel_discards_everything(backend: StorageBackend, harness: BackendHarness) -> None:
    writer = await backend.writer("cancelled/blob")
    await writer.write(payload(100 * KiB))
    await writer.cancel()
    await assert_missing(backend, "cancelled/blob")
    with pytest.raises(PathNotFound):
        await backend.list("cancelled")
    await assert_no_leftovers(harness)
    await writer.cancel()  # idempotent
    with pytest.raises(StorageError):
        await writer.write(b"more")
    with pytest.raises(StorageError):
        await writer.commit()
    await assert_missing(backend, "cancelled/blob")
    await assert_no_leftovers(harness)


async def test_writer_cancel_keeps_existing_content(backend: StorageBackend, harness: BackendHarness) -> None:
    await backend.put_content("k", b"keep me")
    writer = await backend.writer("k")
    await writer.write(b"discard me")
    await writer.cancel()
    assert await backend.get_content("k") == b"keep me"
    await assert_no_leftovers(harness)


async def test_writer_is_finished_after_commit(backend: StorageBackend, harness: BackendHarness) -> None:
    writer = await backend.writer("k")
    await writer.write(b"data")
    assert await writer.commit() is True
    await assert_no_leftovers(harness)
    with pytest.raises(StorageError):
        await writer.write(b"more")
    with pytest.raises(StorageError):
        await writer.commit()
    await writer.cancel()  # harmless after commit
    assert await backend.get_content("k") == b"data"


async def test_writer_exclusive_creates_when_absent(backend: StorageBackend) -> None:
    writer = await backend.writer("k", exclusive=True)
    await writer.write(b"data")
    assert await writer.commit() is True
    assert await backend.get_content("k") == b"data"


async def test_writer_exclusive_keeps_existing_content(backend: StorageBackend, harness: BackendHarness) -> None:
    await backend.put_content("k", b"old")
    writer = await backend.writer("k", exclusive=True)
    await writer.write(b"new and longer")
    assert await writer.commit() is False
    assert await backend.get_content("k") == b"old"
    assert (await backend.stat("k")).size == 3
    await assert_no_leftovers(harness)


async def test_writer_exclusive_loses_to_a_key_created_while_writing(
    backend: StorageBackend, harness: BackendHarness
) -> None:
    writer = await backend.writer("k", exclusive=True)
    await writer.write(b"late")
    assert await backend.put_content("k", b"early") is True
    assert await writer.commit() is False
    assert await backend.get_content("k") == b"early"
    await assert_no_leftovers(harness)


async def test_writer_exclusive_race_has_exactly_one_winner(backend: StorageBackend, harness: BackendHarness) -> None:
    first = await backend.writer("race/blob", exclusive=True)
    second = await backend.writer("race/blob", exclusive=True)
    contents = [payload(300 * KiB, seed=1), payload(200 * KiB, seed=2)]
    await first.write(contents[0])
    await second.write(contents[1])
    results = await asyncio.gather(first.commit(), second.commit())
    assert sorted(results) == [False, True], results
    assert await backend.get_content("race/blob") == contents[results.index(True)]
    await assert_no_leftovers(harness)


async def test_non_exclusive_writers_last_commit_wins(backend: StorageBackend) -> None:
    first = await backend.writer("k")
    second = await backend.writer("k")
    await first.write(b"first")
    await second.write(b"second")
    assert await second.commit() is True
    assert await first.commit() is True
    assert await backend.get_content("k") == b"first"


async def test_writer_context_manager_cancels_on_exception(backend: StorageBackend, harness: BackendHarness) -> None:
    with pytest.raises(RuntimeError, match="client went away"):
        async with await backend.writer("ctx/blob") as writer:
            await writer.write(b"partial")
            raise RuntimeError("client went away")
    await assert_missing(backend, "ctx/blob")
    await assert_no_leftovers(harness)


async def test_writer_context_manager_discards_uncommitted(backend: StorageBackend, harness: BackendHarness) -> None:
    async with await backend.writer("ctx/blob") as writer:
        await writer.write(b"never committed")
    await assert_missing(backend, "ctx/blob")
    await assert_no_leftovers(harness)


async def test_writer_context_manager_keeps_committed(backend: StorageBackend, harness: BackendHarness) -> None:
    async with await backend.writer("ctx/blob") as writer:
        await writer.write(b"committed")
        assert await writer.commit() is True
    assert await backend.get_content("ctx/blob") == b"committed"
    await assert_no_leftovers(harness)


async def test_writer_large_content_round_trips(backend: StorageBackend, harness: BackendHarness) -> None:
    data = payload(8 * MiB, seed=8)
    step = 64 * KiB
    writer = await backend.writer("large/blob")
    for start in range(0, len(data), step):
        await writer.write(data[start : start + step])
        assert writer.size == start + step
    assert await writer.commit() is True
    assert (await backend.stat("large/blob")).size == len(data)
    assert await read_all(backend, "large/blob") == data
    assert await backend.get_content("large/blob") == data
    # Ranges that start, end or cross around reader chunk boundaries.
    for offset, length in [
        (DEFAULT_CHUNK_SIZE - 1, 2),
        (DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE),
        (DEFAULT_CHUNK_SIZE - 7, 3 * DEFAULT_CHUNK_SIZE + 11),
        (len(data) - DEFAULT_CHUNK_SIZE - 1, None),
        (5 * MiB + 3, 10 * MiB),
    ]:
        expected = data[offset:] if length is None else data[offset : offset + length]
        assert await read_all(backend, "large/blob", offset, length) == expected, (offset, length)
    await assert_no_leftovers(harness)


async def test_writer_on_a_prefix_deleted_meanwhile_still_commits(backend: StorageBackend) -> None:
    await backend.put_content("repo/other", b"x")
    writer = await backend.writer("repo/layer/blob")
    await writer.write(b"data")
    await backend.delete("repo")
    assert await writer.commit() is True
    assert await backend.get_content("repo/layer/blob") == b"data"
    await assert_missing(backend, "repo/other")


# -- reader ------------------------------------------------------------------------------------------------

READ_DATA = payload(1000, seed=3)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, READ_DATA),
        (0, len(READ_DATA), READ_DATA),
        (0, 1, READ_DATA[:1]),
        (1, None, READ_DATA[1:]),
        (100, None, READ_DATA[100:]),
        (100, 50, READ_DATA[100:150]),
        (999, None, READ_DATA[999:]),
        (999, 1, READ_DATA[999:]),
        (990, 500, READ_DATA[990:]),
        (0, 5000, READ_DATA),
        (1000, None, b""),
        (1000, 10, b""),
        (1500, None, b""),
        (0, 0, b""),
        (500, 0, b""),
    ],
)
async def test_reader_ranges(backend: StorageBackend, offset: int, length: int | None, expected: bytes) -> None:
    await backend.put_content("r/blob", READ_DATA)
    assert await read_all(backend, "r/blob", offset, length) == expected


async def test_reader_chunks_concatenate_to_the_content(backend: StorageBackend) -> None:
    data = payload(3 * DEFAULT_CHUNK_SIZE + 12345, seed=4)
    await backend.put_content("r/big", data)
    chunks = await chunks_of(backend, "r/big")
    assert len(chunks) > 1
    assert b"".join(chunks) == data


async def test_reader_of_missing_key_raises_on_first_iteration(backend: StorageBackend) -> None:
    iterator = backend.reader("no/such/blob")  # creating the reader does not touch the store yet
    with pytest.raises(PathNotFound) as exc:
        await anext(iterator)
    assert exc.value.path == "no/such/blob"
    with pytest.raises(PathNotFound):
        await read_all(backend, "no/such/blob", 10, 10)


async def test_reader_of_deleted_key(backend: StorageBackend) -> None:
    await backend.put_content("r/gone", b"data")
    await backend.delete("r/gone")
    with pytest.raises(PathNotFound):
        await read_all(backend, "r/gone")


# -- stat / exists ---------------------------------------------------------------------------------------


async def test_stat_object(backend: StorageBackend) -> None:
    await backend.put_content("s/obj", b"12345")
    info = await backend.stat("s/obj")
    assert isinstance(info, FileInfo)
    assert (info.path, info.size, info.is_dir) == ("s/obj", 5, False)
    assert_recent(info.modified)


async def test_stat_prefix_is_a_directory(backend: StorageBackend) -> None:
    await backend.put_content("s/dir/sub/obj", b"12345")
    for prefix in ["s", "s/dir", "s/dir/sub"]:
        info = await backend.stat(prefix)
        assert (info.path, info.size, info.is_dir) == (prefix, 0, True)
        assert info.modified.tzinfo is not None
        assert await backend.exists(prefix) is True


async def test_stat_missing(backend: StorageBackend) -> None:
    await backend.put_content("s/dir/obj", b"x")
    for path in ["nothing", "s/nothing", "s/dir/obj/below", "s/di", "s/dir/ob", "s/dir/obj2"]:
        with pytest.raises(PathNotFound) as exc:
            await backend.stat(path)
        assert exc.value.path == path
        assert await backend.exists(path) is False


async def test_a_name_prefix_is_not_a_directory(backend: StorageBackend) -> None:
    await backend.put_content("p/abc/def", b"x")
    await backend.put_content("p/abcd", b"y")
    await assert_missing(backend, "p/ab")
    with pytest.raises(PathNotFound):
        await backend.list("p/ab")
    assert await walk_paths(backend, "p/ab") == []
    await backend.delete("p/ab")
    assert await walk_paths(backend, "p") == ["p/abc/def", "p/abcd"]


async def test_exists(backend: StorageBackend) -> None:
    await backend.put_content("e/obj", b"x")
    assert await backend.exists("e/obj") is True
    assert await backend.exists("e") is True
    assert await backend.exists("e/ob") is False
    assert await backend.exists("e/obj/x") is False
    assert await backend.exists("f") is False


# -- list ----------------------------------------------------------------------------------------------------


async def test_list_immediate_children_sorted(backend: StorageBackend) -> None:
    keys = ["l/b", "l/a-b", "l/a.txt", "l/a/x", "l/a/y/z", "l/B", "l/c/d/e", "l/_"]
    await put_all(backend, keys)
    children = await backend.list("l")
    assert [(c.path, c.is_dir) for c in children] == [
        ("l/B", False),
        ("l/_", False),
        ("l/a", True),
        ("l/a-b", False),
        ("l/a.txt", False),
        ("l/b", False),
        ("l/c", True),
    ]
    for child in children:
        assert child.size == (0 if child.is_dir else len(child.path))
        assert child.modified.tzinfo is not None
        if not child.is_dir:
            assert_recent(child.modified)
    assert [(c.path, c.is_dir) for c in await backend.list("l/a")] == [("l/a/x", False), ("l/a/y", True)]
    assert [(c.path, c.is_dir) for c in await backend.list("l/c/d")] == [("l/c/d/e", False)]


async def test_list_missing_or_empty_prefix(backend: StorageBackend) -> None:
    with pytest.raises(PathNotFound) as exc:
        await backend.list("nothing")
    assert exc.value.path == "nothing"
    await backend.put_content("l/only/child", b"x")
    await backend.delete("l/only/child")
    with pytest.raises(PathNotFound):
        await backend.list("l/only")


async def test_list_of_an_object_is_not_found(backend: StorageBackend) -> None:
    await backend.put_content("l/obj", b"x")
    with pytest.raises(PathNotFound):
        await backend.list("l/obj")


# -- walk ------------------------------------------------------------------------------------------------------

# Chosen so that ordering by full key differs from ordering by path components: "w/a-b" and "w/a.txt" sort
# before "w/a/x" because "-" and "." are below "/", while "w/a0" sorts after it.
WALK_KEYS = [
    "w/B",
    "w/_",
    "w/a-b",
    "w/a.txt",
    "w/a/x",
    "w/a/x-1",
    "w/a/y/z",
    "w/a/y-z",
    "w/a0",
    "w/b",
    "w/c/d/e/f",
]


async def test_walk_yields_objects_in_key_order(backend: StorageBackend) -> None:
    await put_all(backend, list(reversed(WALK_KEYS)))
    infos = [info async for info in backend.walk("w")]
    assert [info.path for info in infos] == sorted(WALK_KEYS)
    for info in infos:
        assert info.is_dir is False
        assert info.size == len(info.path)
        assert_recent(info.modified)


async def test_walk_of_a_sub_prefix(backend: StorageBackend) -> None:
    await put_all(backend, WALK_KEYS)
    assert await walk_paths(backend, "w/a") == ["w/a/x", "w/a/x-1", "w/a/y-z", "w/a/y/z"]
    assert await walk_paths(backend, "w/a/y") == ["w/a/y/z"]
    assert await walk_paths(backend, "w/c") == ["w/c/d/e/f"]


async def test_walk_start_after(backend: StorageBackend) -> None:
    await put_all(backend, WALK_KEYS)
    keys = sorted(WALK_KEYS)
    candidates = [
        *keys,
        "",
        "a",
        "w",
        "w/",
        "w/a",
        "w/a/",
        "w/a-",
        "w/a/w",
        "w/a/y",
        "w/a/y/",
        "w/a/x-0",
        "w/a/y/zz",
        "w/a/y/a",
        "w/b0",
        "w/c",
        "w/c/d",
        "w/c/d/e/f/g",
        "x",
        "~",
    ]
    for start_after in candidates:
        expected = [key for key in keys if key > start_after]
        assert await walk_paths(backend, "w", start_after) == expected, f"start_after={start_after!r}"
    assert await walk_paths(backend, "w/a", "w/a/x") == ["w/a/x-1", "w/a/y-z", "w/a/y/z"]


async def test_walk_of_missing_prefix_yields_nothing(backend: StorageBackend) -> None:
    assert await walk_paths(backend, "nothing") == []
    assert await walk_paths(backend, "nothing", "nothing/a") == []
    await backend.put_content("w/obj", b"x")
    assert await walk_paths(backend, "w/obj") == []  # an object is not a prefix


async def test_walk_skips_emptied_prefixes(backend: StorageBackend) -> None:
    await put_all(backend, ["w/a/gone", "w/b/kept", "w/c/gone/deeper"])
    await backend.delete("w/a/gone")
    await backend.delete("w/c/gone/deeper")
    assert await walk_paths(backend, "w") == ["w/b/kept"]


# -- copy ------------------------------------------------------------------------------------------------------


async def test_copy(backend: StorageBackend, harness: BackendHarness) -> None:
    data = payload(3 * MiB + 1, seed=5)
    await backend.put_content("c/src", data)
    assert await backend.copy("c/src", "c/new/nested/dst") is True
    assert await backend.get_content("c/new/nested/dst") == data
    assert await backend.get_content("c/src") == data
    assert (await backend.stat("c/new/nested/dst")).size == len(data)
    await assert_no_leftovers(harness)


async def test_copy_overwrites(backend: StorageBackend) -> None:
    await backend.put_content("c/src", b"source")
    await backend.put_content("c/dst", b"previous destination")
    assert await backend.copy("c/src", "c/dst") is True
    assert await backend.get_content("c/dst") == b"source"
    assert await backend.get_content("c/src") == b"source"


async def test_copy_exclusive_to_a_new_key(backend: StorageBackend) -> None:
    await backend.put_content("c/src", b"source")
    assert await backend.copy("c/src", "c/dst", exclusive=True) is True
    assert await backend.get_content("c/dst") == b"source"
    assert await backend.get_content("c/src") == b"source"


async def test_copy_exclusive_onto_existing_key(backend: StorageBackend, harness: BackendHarness) -> None:
    await backend.put_content("c/src", b"source")
    await backend.put_content("c/dst", b"destination")
    assert await backend.copy("c/src", "c/dst", exclusive=True) is False
    assert await backend.get_content("c/src") == b"source"
    assert await backend.get_content("c/dst") == b"destination"
    await assert_no_leftovers(harness)


@pytest.mark.parametrize("exclusive", [False, True])
async def test_copy_of_missing_source(backend: StorageBackend, harness: BackendHarness, exclusive: bool) -> None:
    with pytest.raises(PathNotFound) as exc:
        await backend.copy("c/missing", "c/dst", exclusive=exclusive)
    assert exc.value.path == "c/missing"
    await assert_missing(backend, "c/dst")
    await assert_no_leftovers(harness)


@pytest.mark.parametrize("exclusive", [False, True])
async def test_copy_of_a_prefix_is_not_found(backend: StorageBackend, harness: BackendHarness, exclusive: bool) -> None:
    await backend.put_content("c/dir/obj", b"x")
    with pytest.raises(PathNotFound) as exc:
        await backend.copy("c/dir", "c/dst", exclusive=exclusive)
    assert exc.value.path == "c/dir"
    await assert_missing(backend, "c/dst")
    assert await walk_paths(backend, "c") == ["c/dir/obj"]
    await assert_no_leftovers(harness)


async def test_copy_exclusive_race_has_exactly_one_winner(backend: StorageBackend) -> None:
    sources = [f"c/src{i}" for i in range(6)]
    await put_all(backend, sources)
    results = await asyncio.gather(*(backend.copy(src, "c/dst", exclusive=True) for src in sources))
    assert results.count(True) == 1, results
    assert await backend.get_content("c/dst") == sources[results.index(True)].encode()


# -- move ------------------------------------------------------------------------------------------------------


async def test_move(backend: StorageBackend, harness: BackendHarness) -> None:
    data = payload(2 * MiB + 3, seed=6)
    await backend.put_content("m/src", data)
    assert await backend.move("m/src", "m/new/nested/dst") is True
    assert await backend.get_content("m/new/nested/dst") == data
    await assert_missing(backend, "m/src")
    await assert_no_leftovers(harness)


async def test_move_overwrites(backend: StorageBackend) -> None:
    await backend.put_content("m/src", b"source")
    await backend.put_content("m/dst", b"previous destination")
    assert await backend.move("m/src", "m/dst") is True
    assert await backend.get_content("m/dst") == b"source"
    await assert_missing(backend, "m/src")


async def test_move_exclusive_to_a_new_key(backend: StorageBackend) -> None:
    await backend.put_content("m/src", b"source")
    assert await backend.move("m/src", "m/dst", exclusive=True) is True
    assert await backend.get_content("m/dst") == b"source"
    await assert_missing(backend, "m/src")


async def test_move_exclusive_onto_existing_key(backend: StorageBackend, harness: BackendHarness) -> None:
    await backend.put_content("m/src", b"source")
    await backend.put_content("m/dst", b"destination")
    assert await backend.move("m/src", "m/dst", exclusive=True) is False
    assert await backend.get_content("m/src") == b"source"
    assert await backend.get_content("m/dst") == b"destination"
    await assert_no_leftovers(harness)


async def test_link_where_offered(backend: StorageBackend, harness: BackendHarness) -> None:
    """A second name for the same object: both read the bytes, the new one stays when the first is deleted (or
    replaced), an existing name is not taken (False), a missing source is PathNotFound. A backend without links
    says so (`links` unset) and refuses the call."""
    if not backend.links:
        with pytest.raises(NotImplementedError):
            await backend.link("l/src", "l/dst")
        return
    data = payload(MiB + 5, seed=8)
    await backend.put_content("l/src", data)
    assert await backend.link("l/src", "l/new/nested/dst") is True
    assert await backend.get_content("l/new/nested/dst") == data
    assert await backend.get_content("l/src") == data
    await backend.delete("l/src")
    await backend.put_content("l/src", b"other bytes under the first name")
    assert await backend.get_content("l/new/nested/dst") == data
    assert await backend.link("l/src", "l/new/nested/dst") is False
    assert await backend.get_content("l/new/nested/dst") == data
    with pytest.raises(PathNotFound) as exc:
        await backend.link("l/missing", "l/elsewhere")
    assert exc.value.path == "l/missing"
    await assert_missing(backend, "l/elsewhere")
    await assert_no_leftovers(harness)


@pytest.mark.parametrize("exclusive", [False, True])
async def test_move_of_missing_source(backend: StorageBackend, exclusive: bool) -> None:
    with pytest.raises(PathNotFound) as exc:
        await backend.move("m/missing", "m/dst", exclusive=exclusive)
    assert exc.value.path == "m/missing"
    await assert_missing(backend, "m/dst")


@pytest.mark.parametrize("exclusive", [False, True])
async def test_move_of_a_prefix_is_not_found(backend: StorageBackend, exclusive: bool) -> None:
    await backend.put_content("m/dir/obj", b"x")
    with pytest.raises(PathNotFound) as exc:
        await backend.move("m/dir", "m/dst", exclusive=exclusive)
    assert exc.value.path == "m/dir"
    await assert_missing(backend, "m/dst")
    assert await walk_paths(backend, "m") == ["m/dir/obj"]


async def test_move_exclusive_race_has_exactly_one_winner(backend: StorageBackend) -> None:
    sources = [f"m/src{i}" for i in range(6)]
    await put_all(backend, sources)
    results = await asyncio.gather(*(backend.move(src, "m/dst", exclusive=True) for src in sources))
    assert results.count(True) == 1, results
    winner = sources[results.index(True)]
    assert await backend.get_content("m/dst") == winner.encode()
    assert await walk_paths(backend, "m") == sorted(["m/dst", *(s for s in sources if s != winner)])


# -- delete ----------------------------------------------------------------------------------------------------


async def test_delete_object(backend: StorageBackend) -> None:
    await put_all(backend, ["d/obj", "d/obj2", "d/ob"])
    await backend.delete("d/obj")
    await assert_missing(backend, "d/obj")
    assert await walk_paths(backend, "d") == ["d/ob", "d/obj2"]


async def test_delete_prefix_is_recursive(backend: StorageBackend, harness: BackendHarness) -> None:
    inside = ["d/p/a", "d/p/b/c", "d/p/b/d/e", "d/p/z"]
    outside = ["d/p-1", "d/p.txt", "d/pp", "d/o/p/a"]
    await put_all(backend, inside + outside)
    await backend.delete("d/p")
    for key in inside:
        await assert_missing(backend, key)
    await assert_missing(backend, "d/p")
    with pytest.raises(PathNotFound):
        await backend.list("d/p")
    with pytest.raises(PathNotFound):
        await backend.list("d/p/b")
    assert await walk_paths(backend, "d/p") == []
    assert await walk_paths(backend, "d") == sorted(outside)
    assert [c.path for c in await backend.list("d")] == ["d/o", "d/p-1", "d/p.txt", "d/pp"]
    await assert_no_leftovers(harness)


async def test_delete_file_deletes_the_object_and_nothing_under_it(backend: StorageBackend) -> None:
    await put_all(backend, ["f/obj", "f/obj2", "f/dir/a", "f/dir/b/c"])
    await backend.delete_file("f/obj")
    await assert_missing(backend, "f/obj")
    await backend.delete_file("f/obj")  # idempotent
    await backend.delete_file("f/dir")  # a prefix, not an object: what lies under it stays
    await backend.delete_file("nothing/deeper/still")
    assert await walk_paths(backend, "f") == ["f/dir/a", "f/dir/b/c", "f/obj2"]


async def test_delete_of_missing_path_is_not_an_error(backend: StorageBackend) -> None:
    await backend.delete("nothing")
    await backend.delete("nothing/deeper/still")
    await backend.put_content("d/obj", b"x")
    await backend.delete("d/obj")
    await backend.delete("d/obj")  # idempotent
    await backend.delete("d/obj/below")
    await assert_missing(backend, "d/obj")


async def test_delete_then_recreate(backend: StorageBackend) -> None:
    await put_all(backend, ["d/p/a", "d/p/b/c"])
    await backend.delete("d/p")
    await backend.put_content("d/p/b/c", b"again")
    assert await walk_paths(backend, "d") == ["d/p/b/c"]
    assert await backend.get_content("d/p/b/c") == b"again"


async def test_writes_racing_a_delete_of_their_prefix_do_not_fail(
    backend: StorageBackend, harness: BackendHarness
) -> None:
    """A recursive delete of a prefix may or may not take concurrent writes under it along, but the writes
    themselves must succeed (a repository deleted while something is pushed to it, GC vs. uploads)."""

    async def put(key: str, exclusive: bool) -> bool:
        return await backend.put_content(key, b"put", exclusive=exclusive)

    async def stream(key: str, exclusive: bool) -> bool:
        async with await backend.writer(key, exclusive=exclusive) as writer:
            await writer.write(b"streamed")
            return await writer.commit()

    async def copy(key: str, exclusive: bool) -> bool:
        return await backend.copy("keep/src", key, exclusive=exclusive)

    async def move(key: str, exclusive: bool) -> bool:
        await backend.put_content(f"keep/move/{key}", b"moved")
        return await backend.move(f"keep/move/{key}", key, exclusive=exclusive)

    await backend.put_content("keep/src", b"copied")
    for round_ in range(30):
        operations: list[Awaitable[object]] = []
        for i, op in enumerate([put, stream, copy, move] * 2):
            operations.append(op(f"doomed/repo/{round_}-{i}", i % 2 == 0))
            if i % 2:
                operations.append(backend.delete("doomed"))
        results = await asyncio.gather(*operations, return_exceptions=True)
        assert [r for r in results if r is not None] == [True] * 8, results
    await backend.delete("doomed")
    assert await walk_paths(backend, "doomed") == []
    assert await walk_paths(backend, "keep") == ["keep/src"]
    await assert_no_leftovers(harness)


# -- touch -------------------------------------------------------------------------------------------------------


async def test_touch_refreshes_modified_time(backend: StorageBackend, harness: BackendHarness) -> None:
    await backend.put_content("t/obj", b"content")
    await harness.backdate("t/obj")
    before = await backend.stat("t/obj")
    await backend.touch("t/obj")
    after = await backend.stat("t/obj")
    assert after.modified > before.modified
    assert_recent(after.modified)
    assert after.size == before.size == 7
    assert await backend.get_content("t/obj") == b"content"


async def test_touch_of_missing_key(backend: StorageBackend) -> None:
    with pytest.raises(PathNotFound) as exc:
        await backend.touch("t/missing")
    assert exc.value.path == "t/missing"
    await backend.put_content("t/obj", b"x")
    with pytest.raises(PathNotFound):
        await backend.touch("t/ob")
    await assert_missing(backend, "t/missing")


# -- purge_abandoned_writes -------------------------------------------------------------------------------------


async def test_purge_abandoned_writes_removes_only_old_leftovers(backend: StorageBackend) -> None:
    await backend.put_content("kept/obj", b"committed")
    writer = await backend.writer("abandoned/obj")
    # More than one S3 part: the write is under way in the store itself, not only in this process's buffer.
    await writer.write(b"x" * (6 * 1024 * 1024))
    # The process "dies" here: the writer is neither committed nor cancelled.
    try:
        assert await backend.purge_abandoned_writes(3600) == 0  # younger than the limit: a live write, kept
        found = await backend.purge_abandoned_writes(0, dry_run=True)
        assert found >= 1
        assert await backend.purge_abandoned_writes(0, dry_run=True) == found  # a dry run removes nothing
        assert await backend.purge_abandoned_writes(0) == found
        assert await backend.purge_abandoned_writes(0) == 0
    finally:
        await writer.cancel()  # harmless after the purge; closes what this process still holds
    assert await backend.get_content("kept/obj") == b"committed"
    await assert_missing(backend, "abandoned/obj")


# -- redirect_url / aclose --------------------------------------------------------------------------------------


async def test_redirect_url(backend: StorageBackend, harness: BackendHarness) -> None:
    data = payload(1000, seed=7)
    await backend.put_content("u/blob", data)
    url = await backend.redirect_url("u/blob")
    if not harness.redirects:
        assert url is None
        return
    assert isinstance(url, str)
    assert url.startswith(("http://", "https://"))
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == data


async def test_aclose_is_callable_and_idempotent(backend: StorageBackend) -> None:
    await backend.put_content("k", b"x")
    await backend.aclose()
    await backend.aclose()
