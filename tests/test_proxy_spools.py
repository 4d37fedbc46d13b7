"""Cache fills' spools: in memory within the process's budget (taken from its cgroup's memory limit), else on disk."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from registry.proxy import spools
from registry.proxy.settings import ProxySettings
from registry.proxy.spools import DiskSpool, Spool, SpoolMemory, memory_spool


def test_the_budget_reserves_whole_blobs_and_never_more_than_its_limit() -> None:
    memory = SpoolMemory(1000)
    assert memory.reserve(600)
    assert not memory.reserve(401)  # would go over: that blob spools on disk
    assert memory.reserve(400)
    assert not memory.reserve(1)
    memory.release(600)
    assert memory.in_use == 400
    assert not memory.reserve(0)  # an empty blob needs no spool in memory
    assert not SpoolMemory(0).reserve(1)  # 0: always on disk


async def spool_round_trip(spool: Spool) -> tuple[bytes, bytes]:
    """Buffers written in order come back whole (the same object: no copy) or sliced, from any position."""
    first, second = os.urandom(1000), os.urandom(500)
    await spool.write(first, 0)
    await spool.write(second, 1000)
    assert spool.recent(0, 2000) is first
    assert spool.recent(1000, 1500) is second
    assert spool.recent(990, 2000) == first[990:]  # up to the end of the buffer it falls in
    assert spool.recent(1200, 1300) == second[200:300]  # and to `end`
    assert spool.recent(1500, 2000) is None  # not written yet
    assert await spool.read(1000, 500) == second
    assert await spool.read(1499, 500) == second[-1:]
    return first, second


async def test_a_memory_spool_keeps_the_buffers_and_gives_its_reservation_back() -> None:
    memory = SpoolMemory(1 << 20)
    spool = memory_spool(memory, 1 << 20)
    assert spool is not None and spool.in_memory
    assert memory.in_use == 1 << 20
    assert memory_spool(memory, 1) is None  # the budget is taken
    first, _ = await spool_round_trip(spool)
    assert await spool.read(995, 10) == first[995:]  # a buffer's worth at most
    with pytest.raises(OSError):  # never written: an error, not an empty read a reader would spin on
        await spool.read(1500, 10)
    spool.close()
    assert memory.in_use == 0
    assert spool.recent(0, 10) is None  # the buffers go with it
    spool.close()  # idempotent: released once
    assert memory.in_use == 0


async def test_a_disk_spool_reads_back_past_its_recent_buffers(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    assert not spool.in_memory
    first, second = await spool_round_trip(spool)
    for n in range(spools.RECENT_BUFFERS):  # push the first two buffers out of those kept at hand
        await spool.write(bytes([n]) * 100, 1500 + 100 * n)
    assert spool.recent(0, 2000) is None
    assert await spool.read(0, 1000) == first  # from the file
    assert await spool.read(990, 20) == first[990:] + second[:10]  # the file has no buffer boundaries
    with pytest.raises(OSError):  # past what was written: an error, not an empty read
        await spool.read(5000, 10)
    assert os.listdir(tmp_path) == []  # an unnamed file: nothing for a crash to leave behind
    spool.close()
    with pytest.raises(OSError):
        DiskSpool(tmp_path / "missing")


def test_a_memory_spool_never_closed_gives_its_reservation_back_when_collected() -> None:
    memory = SpoolMemory(1000)
    spool = memory_spool(memory, 600)
    assert spool is not None and memory.in_use == 600
    del spool  # e.g. a reader that was created and never iterated: its `finally` never runs
    gc.collect()
    assert memory.in_use == 0


def test_the_cgroup_limits_on_the_way_up_count_v2_and_v1(tmp_path: Path) -> None:
    # v2: the process's own cgroup has no limit, its parent has one, the root's file is absent.
    (tmp_path / "kubepods" / "pod1" / "app").mkdir(parents=True)
    (tmp_path / "kubepods" / "pod1" / "app" / "memory.max").write_text("max\n")
    (tmp_path / "kubepods" / "pod1" / "memory.max").write_text(f"{512 * 2**20}\n")
    (tmp_path / "kubepods" / "memory.max").write_text(f"{8 * 2**30}\n")
    assert sorted(spools._cgroup_limits("0::/kubepods/pod1/app\n", tmp_path)) == [512 * 2**20, 8 * 2**30]
    # v1: the memory controller's hierarchy; its "no limit" is a huge number.
    v1 = tmp_path / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{256 * 2**20}\n")
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    membership = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert spools._cgroup_limits(membership, tmp_path) == [256 * 2**20]
    # A path that tries to climb out of the hierarchy reads nothing outside it.
    assert spools._cgroup_limits("0::/../../etc\n", tmp_path) == []
    assert spools._cgroup_limits("garbage\n", tmp_path) == []


def test_the_default_budget_is_an_eighth_of_usable_memory_at_most_2_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spools, "usable_memory", lambda: 512 * 2**20)
    assert spools.default_budget() == 64 * 2**20
    assert spools.default_budget(workers=4) == 16 * 2**20  # the workers share the limit
    monkeypatch.setattr(spools, "usable_memory", lambda: 64 * 2**30)
    assert spools.default_budget() == 2 * 2**30
    assert spools.default_budget(workers=8) == 2**30 // 4
    monkeypatch.undo()
    assert 0 < spools.default_budget() <= min(spools.usable_memory() // 8, 2 * 2**30)


def test_spool_memory_is_a_size_and_0_turns_it_off() -> None:
    assert ProxySettings.model_validate({"spool_memory": "512MiB"}).spool_memory == 512 * 2**20
    assert ProxySettings.model_validate({"spool_memory": 0}).spool_memory == 0
    assert ProxySettings.model_validate({}).spool_memory is None  # the default budget
    for bad in (-1, "lots", True):
        with pytest.raises(ValidationError):
            ProxySettings.model_validate({"spool_memory": bad})
