"""Segments opened in place (FAISS's mmap IO flag): the same answers as segments
read into memory, and a restarted writer copies a mapped segment before changing it."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from sinks import FaissSink, open_snapshot
from streams.records import Batch

DIM = 16


@pytest.mark.parametrize("factory", ["Flat", "SQ8", "IVF16,Flat", "HNSW8"])
@pytest.mark.asyncio
async def test_a_mapped_segment_answers_as_a_read_one(tmp_path: Path, factory: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, DIM)).astype(np.float32)
    sink = FaissSink(tmp_path / "idx", factory=factory, metric="l2", snapshot_every=None,
                     train_size=2000, segment_size=2000)  # fmt: skip
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        for lo in range(0, 6000, 1000):
            ids = np.arange(lo, lo + 1000)
            await sink.write(Batch(ids, x[ids], np.zeros(1000), "p", {"offset": lo + 1000}))
        await sink.close(ok=True)
    params = {"nprobe": 16} if "IVF" in factory else {"efSearch": 64} if "HNSW" in factory else None
    mapped, read = open_snapshot(tmp_path / "idx"), open_snapshot(tmp_path / "idx", mmap=False)
    assert mapped.shards[0].mapped_bytes > 0 and read.shards[0].mapped_bytes == 0
    a, b = mapped.search(x[:100], 10, params), read.search(x[:100], 10, params)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.asyncio
async def test_a_restarted_writer_copies_a_mapped_segment_before_changing_it(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, DIM)).astype(np.float32)
    kw = {"metric": "l2", "snapshot_every": None, "segment_size": 1000}

    async def write(sink: FaissSink, ids: np.ndarray, vecs: np.ndarray, offset: int, **kw) -> None:
        await sink.write(Batch(ids, vecs, np.zeros(len(ids)), "p", {"offset": offset}, **kw))

    sink = FaissSink(tmp_path / "idx", merge_factor=0, **kw)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        await write(sink, np.arange(2500), x[:2500], 1)
        await sink.close(ok=True)
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx" / "objects").iterdir()}
    sink = FaissSink(tmp_path / "idx", merge_factor=4, **kw)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        segs = sink.shards["p"].segments
        assert all(s.mapped for s in segs)
        # An upsert into the first sealed segment, a delete from the second, adds
        # to the restored active one, then merges.
        y = rng.standard_normal((10, DIM)).astype(np.float32)
        await write(sink, np.arange(10), y, 2)
        await write(sink, np.arange(1500, 1510), x[1500:1510], 3, deleted=np.ones(10, bool))
        await write(sink, np.arange(2500, 3000), x[2500:3000], 4)
        await sink.merge()
        hits = await sink.search(np.vstack([y, x[1500:1510]]), 1)
        assert hits.ids[:10, 0].tolist() == list(range(10))
        assert not set(hits.ids[10:, 0].tolist()) & set(range(1500, 1510))
        assert sink.ntotal == 2990
        await sink.close(ok=True)
    # The objects the first run wrote are unchanged (never written through a map).
    for name, data in before.items():
        path = tmp_path / "idx" / "objects" / name
        if path.exists():
            assert path.read_bytes() == data
    assert open_snapshot(tmp_path / "idx").ntotal == 2990


def test_objects_hashed_once_are_not_hashed_again_until_they_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import sinks.store
    import sinks.verified
    from tests.helpers import run_cli

    x = np.random.default_rng(2).standard_normal((3000, DIM)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    idx = tmp_path / "idx"
    assert run_cli("ingest", str(tmp_path / "x.npy"), "--index", str(idx)).returncode == 0
    assert (idx / "VERIFIED").is_file()
    hashed: list[str] = []
    real = sinks.store.sha256_file
    monkeypatch.setattr(sinks.store, "sha256_file", lambda p: hashed.append(p.name) or real(p))

    def fresh_process() -> None:
        sinks.verified._registry.clear()  # as a new process starts

    fresh_process()
    assert open_snapshot(idx).ntotal == 3000 and hashed == []  # the writer's record
    fresh_process()
    open_snapshot(idx, verify_all=True)
    assert len(hashed) >= 2
    # An object rewritten in place: its time changed, so it is hashed and found bad.
    obj = next(p for p in (idx / "objects").iterdir() if p.stat().st_size > 1000)
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0xFF
    stat = obj.stat()
    obj.write_bytes(bytes(data))
    fresh_process()
    with pytest.raises(Exception, match="corrupt"):
        open_snapshot(idx)
    # Damage that kept size, inode and time: only a full check finds it.
    os.utime(obj, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fresh_process()
    sinks.verified.verified_objects(idx / "objects").record(obj.name)  # as recorded before
    assert open_snapshot(idx).ntotal == 3000
    p = run_cli("inspect", str(idx), "--verify")
    assert p.returncode == 1 and "corrupt" in p.stderr
