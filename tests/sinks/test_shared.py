"""Several workers sharing one snapshot directory: chains, epochs, hand-over, GC."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import faiss
import numpy as np
import pytest
from anyio.abc import TaskGroup

from sinks import FaissSink, SnapshotStore, open_snapshot
from sinks.shared import combine, retire_chains
from streams import Batch

DIM = 16


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def part_batch(part: str, ids: np.ndarray, x: np.ndarray, offset: int) -> Batch:
    return Batch(ids, x[ids], np.zeros(len(ids)), part, {"offset": offset})


async def two_workers(tg: TaskGroup, idx: Path) -> tuple[FaissSink, FaissSink]:
    """Workers "a" and "b" sharing ``idx``, open, owning nothing yet."""
    a = FaissSink(idx, snapshot_every=0, worker="a")
    b = FaissSink(idx, snapshot_every=0, worker="b")
    await a.open(tg)
    await b.open(tg)
    return a, b


@pytest.mark.asyncio
async def test_two_workers_make_one_combined_index(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    x = rows(4000, 1)
    async with anyio.create_task_group() as tg:
        a, b = await two_workers(tg, idx)
        assert await a.claim(["p0", "p1"]) == {}
        assert await b.claim(["p2", "p3"]) == {}
        for k, (sink, part) in enumerate([(a, "p0"), (a, "p1"), (b, "p2"), (b, "p3")]):
            ids = np.arange(k * 1000, (k + 1) * 1000)
            await sink.write(part_batch(part, ids, x, 1000))
        await a.close(ok=True)
        await b.close(ok=True)
    view = open_snapshot(idx)
    m = view.manifest
    assert m["ntotal"] == 4000 and m["seq"] is None
    assert {s["name"]: s["owner"] for s in m["shards"]} == {
        "p0": "a",
        "p1": "a",
        "p2": "b",
        "p3": "b",
    }
    assert all(s["epoch"] == 1 and s["position"] == {"offset": 1000} for s in m["shards"])
    # Merged search over both workers' shards equals one index holding everything.
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    q = rows(20, 2)
    _, want = flat.search(q, 10)
    got = view.search(q, 10)
    assert (got.ids == want).all()


@pytest.mark.asyncio
async def test_hand_over_keeps_the_shard_visible_and_raises_its_epoch(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    x = rows(3000, 3)
    async with anyio.create_task_group() as tg:
        a, b = await two_workers(tg, idx)
        await a.claim(["p0"])
        await a.write(part_batch("p0", np.arange(1000), x, 1000))
        # The source emitted up to offset 2000; the rest arrives while we wait.

        async def late() -> None:
            await anyio.sleep(0.2)
            await a.write(part_batch("p0", np.arange(1000, 2000), x, 2000))

        tg.start_soon(late)
        await a.release(["p0"], {"p0": {"offset": 2000}})
        assert "p0" not in a.shards and a.statistics().release_timeouts == 0
        # Released but not yet committed by anyone else: still in the view, from a.
        m = open_snapshot(idx).manifest
        assert [(s["owner"], s["epoch"], s["ntotal"]) for s in m["shards"]] == [("a", 1, 2000)]
        # A late batch for a partition a no longer owns is not applied.
        await a.write(part_batch("p0", np.arange(2000, 2100), x, 2100))
        assert a.statistics().unowned_batches == 1

        assert await b.claim(["p0"]) == {"p0": {"offset": 2000}}
        await b.write(part_batch("p0", np.arange(2000, 3000), x, 3000))
        await b.snapshot()
        m = open_snapshot(idx).manifest
        assert [(s["owner"], s["epoch"], s["ntotal"]) for s in m["shards"]] == [("b", 2, 3000)]
        # a stops naming the shard once b holds it at a newer epoch.
        await a.claim(["p9"])
        await a.write(part_batch("p9", np.arange(5000, 5001), np.zeros((5001, DIM), "f4"), 1))
        await a.snapshot()
        loaded = SnapshotStore(idx, chain="a", readonly=True).load()
        assert loaded is not None
        names = [e.name for e in loaded.manifest.shards]
        assert names == ["p9"]
        await a.close(ok=True)
        await b.close(ok=True)
    view = open_snapshot(idx)
    got = np.sort(np.concatenate([s.ids() for s in view.shards]))
    assert got.tolist() == [*range(3000), 5000]


@pytest.mark.asyncio
async def test_release_times_out_to_the_last_snapshot(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    x = rows(1000, 4)
    async with anyio.create_task_group() as tg:
        a = FaissSink(idx, snapshot_every=0, worker="a", release_timeout=0.3)
        await a.open(tg)
        await a.claim(["p0"])
        await a.write(part_batch("p0", np.arange(500), x, 500))
        await a.snapshot()
        await a.write(part_batch("p0", np.arange(500, 600), x, 600))
        # Offset 1000 never arrives: the shard goes as of a snapshot holding what did.
        await a.release(["p0"], {"p0": {"offset": 1000}})
        assert a.statistics().release_timeouts == 1
        await a.close(ok=True)
    m = open_snapshot(idx).manifest
    assert m["shards"][0]["position"] == {"offset": 500}


@pytest.mark.asyncio
async def test_a_worker_taking_back_its_own_shard_does_not_reload_it(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    x = rows(500, 5)
    async with anyio.create_task_group() as tg:
        a = FaissSink(idx, snapshot_every=0, worker="a")
        await a.open(tg)
        await a.claim(["p0"])
        await a.write(part_batch("p0", np.arange(500), x, 500))
        shard = a.shards["p0"]
        await a.release(["p0"], {"p0": {"offset": 500}})
        assert await a.claim(["p0"]) == {"p0": {"offset": 500}}
        assert a.shards["p0"] is shard
        await a.close(ok=True)


@pytest.mark.asyncio
async def test_single_writer_takes_over_a_shared_directory(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    x = rows(2000, 6)
    async with anyio.create_task_group() as tg:
        a = FaissSink(idx, snapshot_every=0, worker="a")
        await a.open(tg)
        await a.claim(["p0"])
        await a.write(part_batch("p0", np.arange(1000), x, 1000))
        await a.close(ok=True)
    async with anyio.create_task_group() as tg:
        solo = FaissSink(idx, snapshot_every=0)
        assert await solo.open(tg) == {"p0": {"offset": 1000}}
        await solo.write(part_batch("p0", np.arange(1000, 2000), x, 2000))
        await solo.close(ok=True)
    m = open_snapshot(idx).manifest
    assert [(s["owner"], s["epoch"], s["ntotal"]) for s in m["shards"]] == [("-", 2, 2000)]


@pytest.mark.asyncio
async def test_gone_workers_are_retired_and_their_objects_collected(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    x = rows(1000, 7)
    async with anyio.create_task_group() as tg:
        a = FaissSink(idx, snapshot_every=0, worker="a")
        await a.open(tg)
        await a.claim(["p0"])
        await a.write(part_batch("p0", np.arange(500), x, 500))
        await a.close(ok=True)
        # a is gone (killed); b takes p0 over and rewrites it.
        b = FaissSink(idx, snapshot_every=0, worker="b", keep=1)
        await b.open(tg)
        assert await b.claim(["p0"]) == {"p0": {"offset": 500}}
        await b.write(part_batch("p0", np.arange(500, 1000), x, 1000))
        await b.close(ok=True)
    assert (idx / "workers" / "a").is_dir()  # younger than the grace period
    old = time.time() - 3600
    os.utime(idx / "workers" / "a" / "CURRENT", (old, old))
    os.utime(idx / "workers" / "a", (old, old))
    assert retire_chains(idx, own="b") == ["a"]
    assert not (idx / "workers" / "a").exists()
    store = SnapshotStore(idx, chain="b")
    live = {seg.object for s in store.load().manifest.shards for seg in s.segments}
    for p in (idx / "objects").iterdir():
        os.utime(p, (old, old))
    store.prune(1)
    assert {p.name for p in (idx / "objects").iterdir()} >= live
    assert len(list((idx / "objects").iterdir())) == len(live) + 1  # + the template
    combined = combine(idx)
    assert combined is not None and combined.ntotal == 1000


def test_fresh_unreferenced_objects_survive_gc_in_a_shared_directory(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "idx", chain="a")
    digest = store.put_object(b"another worker's segment, not committed yet")
    store.prune(1)
    assert (store.objects / digest).exists()
    store.prune(1, grace=0)
    assert not (store.objects / digest).exists()


@pytest.mark.asyncio
async def test_serve_view_follows_every_workers_snapshots(tmp_path: Path) -> None:
    from sinks.live import LiveView

    idx = tmp_path / "idx"
    x = rows(2000, 8)
    async with anyio.create_task_group() as tg:
        a, b = await two_workers(tg, idx)
        await a.claim(["p0"])
        await b.claim(["p1"])
        await a.write(part_batch("p0", np.arange(500), x, 500))
        await a.snapshot()
        live = LiveView(idx)
        assert live.stats()["ntotal"] == 500
        tg.start_soon(live.follow, 0.05)
        # A snapshot of the other worker is picked up too.
        await b.write(part_batch("p1", np.arange(500, 1500), x, 1000))
        await b.snapshot()
        with anyio.fail_after(10):
            while live.stats()["ntotal"] != 1500:
                await anyio.sleep(0.05)
        assert set(live.stats()["workers"]) == {"a", "b"}
        res = await live.search(x[[10, 1200]], 1)
        assert res.ids[:, 0].tolist() == [10, 1200]
        await a.close(ok=True)
        await b.close(ok=True)
        tg.cancel_scope.cancel()
