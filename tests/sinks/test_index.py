from __future__ import annotations

import json
from pathlib import Path

import anyio
import anyio.lowlevel
import faiss
import numpy as np
import pytest

from operators import batch, decode, normalize
from sinks import FaissSink, open_snapshot
from streams import Batch, ConfigError, FileSource, Pipeline


def file_pipeline(paths, index: Path, *ops, **sink_kw) -> Pipeline:
    flow = FileSource(paths) | decode() | batch(256)
    for op in ops:
        flow = flow | op
    p = flow | FaissSink(index, snapshot_every=0, **sink_kw)
    assert isinstance(p, Pipeline)
    return p


def write_jsonl(path: Path, ids, vectors, extra=None) -> Path:
    with open(path, "w") as f:
        for i, (rid, v) in enumerate(zip(ids, vectors, strict=True)):
            rec = {"id": rid, "vector": np.asarray(v).tolist()}
            if extra:
                rec.update(extra(i))
            f.write(json.dumps(rec) + "\n")
    return path


@pytest.mark.asyncio
async def test_same_file_twice_adds_nothing(make_npy, tmp_path: Path) -> None:
    path, _x = make_npy(3000, 8)
    idx = tmp_path / "idx"
    m1 = await file_pipeline(path, idx).run()
    assert m1.sink.ntotal == 3000
    m2 = await file_pipeline(path, idx).run()
    assert m2.stages["faiss"].records == 0
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == 3000
    assert view.manifest["seq"] == 1  # nothing changed: no new snapshot
    assert view.manifest["shards"][0]["position"] == {str(path.resolve()): 3000}


@pytest.mark.asyncio
async def test_resume_after_partial_file(make_npy, tmp_path: Path) -> None:
    _path, x = make_npy(1000, 4)
    idx = tmp_path / "idx"
    np.save(tmp_path / "head.npy", x[:400])
    await file_pipeline(tmp_path / "head.npy", idx, metric="l2").run()
    # The full file under the head's name: resumes at row 400.
    np.save(tmp_path / "head.npy", x)
    m = await file_pipeline(tmp_path / "head.npy", idx).run()
    assert m.stages["faiss"].records == 600
    view = open_snapshot(idx)
    res = view.search(x[[0, 500, 999]], 1)
    assert res.ids[:, 0].tolist() == [0, 500, 999]


@pytest.mark.asyncio
async def test_file_a_then_b_upserts(tmp_path: Path, rng) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", range(3000), rng.standard_normal((3000, 8)))
    bv = rng.standard_normal((3000, 8)).astype(np.float32)
    b = write_jsonl(tmp_path / "b.jsonl", range(1500, 4500), bv)
    idx = tmp_path / "idx"
    await file_pipeline(a, idx, metric="l2").run()
    await file_pipeline(b, idx).run()
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == 4500
    some = np.array([1500, 2000, 2999, 4499])
    np.testing.assert_allclose(view.shards[0].reconstruct(some), bv[some - 1500], rtol=1e-6)
    segment = view.manifest["shards"][0]["segments"][0]["object"]
    assert faiss.read_index(str(idx / "objects" / segment)).ntotal == 4500  # plain FAISS
    res = view.search(bv[[0, 1499]], 1)
    assert res.ids[:, 0].tolist() == [1500, 2999]


@pytest.mark.asyncio
async def test_upsert_in_one_stream_keeps_the_newer(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", [7, 8, 7], [[1, 0], [0, 1], [0.6, 0.8]])
    idx = tmp_path / "idx"
    await file_pipeline(path, idx).run()
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == 2
    res = view.search([[0.6, 0.8]], 2)
    assert res.ids[0, 0] == 7 and res.scores[0, 0] == pytest.approx(1.0)


@pytest.mark.asyncio
async def test_delete_records(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [{"id": i, "vector": [float(i), 1.0]} for i in range(10)]
    lines += [{"id": 3, "delete": True}, {"id": 4, "delete": True}, {"id": 4, "vector": [9, 9]}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    idx = tmp_path / "idx"
    await file_pipeline(path, idx).run()
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == 9
    found = set(view.search(np.ones((1, 2)), 20).ids[0].tolist())
    assert 3 not in found and 4 in found


@pytest.mark.asyncio
async def test_string_ids_round_trip(tmp_path: Path, rng) -> None:
    keys = [f"doc-{i}" for i in range(50)]
    x = rng.standard_normal((50, 6)).astype(np.float32)
    path = write_jsonl(tmp_path / "s.jsonl", keys, x)
    idx = tmp_path / "idx"
    await file_pipeline(path, idx, normalize(), normalize_queries=True).run()
    view = open_snapshot(idx)
    rows = view.search(x[[3, 17]], 3).rows()
    assert [r["ids"][0] for r in rows] == ["doc-3", "doc-17"]


@pytest.mark.asyncio
async def test_training_index_types(make_npy, tmp_path: Path) -> None:
    path, x = make_npy(2000, 16)
    idx = tmp_path / "idx"
    await file_pipeline(path, idx, factory="IVF8,Flat", metric="l2", train_size=500).run()
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == 2000 and view.manifest["template"]
    segment = view.manifest["shards"][0]["segments"][0]["object"]
    index = faiss.read_index(str(idx / "objects" / segment))
    index.nprobe = 8
    _, ids = index.search(x[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
async def test_config_mismatch_is_refused(make_npy, tmp_path: Path) -> None:
    path, _ = make_npy(10, 4)
    idx = tmp_path / "idx"
    await file_pipeline(path, idx).run()
    with pytest.raises(Exception, match="holds a 'Flat' index"):
        await file_pipeline(path, idx, metric="l2").run()
    with pytest.raises(ConfigError, match="unknown metric"):
        FaissSink(idx, metric="cos")


def _mk(part: str, ids: np.ndarray, dim: int, pos: int) -> Batch:
    v = np.zeros((len(ids), dim), np.float32)
    return Batch(ids, v, np.zeros(len(ids)), part, {"offset": pos})


@pytest.mark.asyncio
async def test_unchanged_shards_are_referenced_not_rewritten(tmp_path: Path) -> None:
    sink = FaissSink(tmp_path / "idx", snapshot_every=None)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        big = _mk("a", np.arange(20000), 32, 1)
        await sink.write(big)
        await sink.write(_mk("b", np.arange(10), 32, 1))
        await sink.snapshot()
        first = sink.statistics().last_snapshot_bytes
        await sink.write(_mk("b", np.arange(10, 20), 32, 2))
        await sink.snapshot()
        second = sink.statistics().last_snapshot_bytes
        await sink.close(ok=True)
    assert first > 20000 * 32 * 4
    assert second < 20 * 32 * 4 + 4096  # only shard b was written again
    view = open_snapshot(tmp_path / "idx")
    assert {s["name"]: s["position"] for s in view.manifest["shards"]} == {
        "a": {"offset": 1},
        "b": {"offset": 2},
    }


@pytest.mark.asyncio
async def test_search_during_ingest_never_sees_half_a_batch(tmp_path: Path) -> None:
    """Adds, upserts and deletes of whole blocks while two tasks search."""
    from tests.reliability.oracle import search_soak

    searches, batches, half = await search_soak(tmp_path, 2.0)
    assert searches > 20 and batches > 20
    assert half == []


@pytest.mark.asyncio
async def test_segments_seal_search_together_and_snapshot_only_what_changed(
    tmp_path: Path, rng
) -> None:
    x = rng.standard_normal((2500, 16)).astype(np.float32)
    sink = FaissSink(tmp_path / "idx", metric="l2", snapshot_every=None, segment_size=1000)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        for start in range(0, 2500, 500):
            ids = np.arange(start, start + 500)
            await sink.write(Batch(ids, x[ids], np.zeros(500), "p", {"offset": start + 500}))
        shard = sink.shards["p"]
        assert [seg.ntotal for seg in shard.segments] == [1000, 1000, 500]
        res = await sink.search(x[[0, 1234, 2499]], 1)
        assert res.ids[:, 0].tolist() == [0, 1234, 2499]
        await sink.snapshot()
        full = sink.statistics().last_snapshot_bytes
        # An upsert into the first (sealed) segment and an add to the active one:
        # the second sealed segment is referenced, not written again.
        await sink.write(Batch(np.array([5, 2600]), x[[7, 8]], np.zeros(2), "p", {"offset": 2600}))
        await sink.snapshot()
        part = sink.statistics().last_snapshot_bytes
        await sink.close(ok=True)
    assert part < full * 0.75
    view = open_snapshot(tmp_path / "idx")
    assert view.manifest["ntotal"] == 2501
    assert [s["ntotal"] for s in view.manifest["shards"][0]["segments"]] == [999, 1000, 502]
    # Merged search over segments equals one exact index of the same vectors.
    truth = np.vstack([x, x[8:9]])
    truth[5] = x[7]
    exact = faiss.IndexFlatL2(16)
    exact.add(truth)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    want_d, want_i = exact.search(q, 10)
    want_i[want_i == 2500] = 2600
    got = view.search(q, 10)
    np.testing.assert_allclose(got.scores, want_d, rtol=1e-4, atol=1e-4)
    assert (got.ids == want_i).mean() > 0.99  # ties may swap


async def _add_blocks(sink: FaissSink, x: np.ndarray, start: int, stop: int, step: int) -> None:
    for lo in range(start, stop, step):
        ids = np.arange(lo, min(lo + step, stop))
        await sink.write(Batch(ids, x[ids], np.zeros(len(ids)), "p", {"offset": int(ids[-1]) + 1}))


@pytest.mark.parametrize(
    ("factory", "first", "then"),
    [
        # 16-d floats are 64 bytes: 128 KiB of codes is 2,048 vectors (whole
        # batches of 500 go into one segment).
        ("Flat", [2000, 2000, 1000], [2000, 2000, 1000, 1644]),
        # 16-byte SQ8 codes: 8,192 vectors fit.
        ("SQ8", [5000], [6644]),
        # A graph is not a flat scan: only segment_size applies.
        ("HNSW16", [5000], [6644]),
    ],
)
@pytest.mark.asyncio
async def test_flat_code_segments_also_seal_at_segment_bytes(
    tmp_path: Path, rng, factory: str, first: list[int], then: list[int]
) -> None:
    x = rng.standard_normal((6644, 16)).astype(np.float32)
    kw = {"factory": factory, "metric": "l2", "snapshot_every": None, "train_size": 1000}
    sink = FaissSink(tmp_path / "idx", segment_bytes=128 << 10, **kw)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        await _add_blocks(sink, x, 0, 5000, 500)
        assert [seg.ntotal for seg in sink.shards["p"].segments] == first
        await sink.close(ok=True)
    # Reopened, the shard restored from the snapshot keeps the same bound.
    sink = FaissSink(tmp_path / "idx", segment_bytes=128 << 10, **kw)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        await _add_blocks(sink, x, 5000, 6144, 1144)
        await _add_blocks(sink, x, 6144, 6644, 500)
        assert [seg.ntotal for seg in sink.shards["p"].segments] == then
        res = await sink.search(x[[0, 4999, 6643]], 1)
        assert res.ids[:, 0].tolist() == [0, 4999, 6643]
        await sink.close(ok=True)


def test_segment_bytes_never_seals_below_1024_vectors(tmp_path: Path) -> None:
    from sinks.segment import Segment, make_index
    from sinks.shard import Shard

    shard = Shard("p", [Segment(make_index(16, "Flat", "l2"))], segment_bytes=1)
    assert shard.seal_at == 1024
    # Defaults: 32 MiB of 128-d floats is 65,536 vectors; 16-d ones stop at 131,072.
    assert Shard("p", [Segment(make_index(128, "Flat", "ip"))]).seal_at == 65_536
    assert Shard("p", [Segment(make_index(16, "Flat", "l2"))]).seal_at == 131_072


@pytest.mark.asyncio
async def test_hnsw_upserts_and_deletes_with_tombstones_and_compaction(tmp_path: Path, rng) -> None:
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    sink = FaissSink(
        tmp_path / "idx",
        factory="HNSW16",
        metric="l2",
        snapshot_every=None,
        segment_size=1000,
        merge_factor=0,  # tombstones and compaction, segment by segment
    )
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        for start in range(0, 3000, 500):
            ids = np.arange(start, start + 500)
            await sink.write(Batch(ids, x[ids], np.zeros(500), "p", {"offset": start + 500}))
        # Replace ids 0-599 (sealed segment 0) with new vectors; delete 700-799.
        y = rng.standard_normal((600, 16)).astype(np.float32)
        await sink.write(Batch(np.arange(600), y, np.zeros(600), "p", {"offset": 3600}))
        dels = np.arange(700, 800)
        await sink.write(
            Batch(
                dels,
                np.zeros((100, 16), np.float32),
                np.zeros(100),
                "p",
                {"offset": 3700},
                deleted=np.ones(100, bool),
            )
        )
        assert sink.ntotal == 2900
        res = await sink.search(np.vstack([x[:5], y[:5], x[700:705]]), 1)
        top = res.ids[:, 0].tolist()
        assert top[5:10] == [0, 1, 2, 3, 4]  # the new vectors answer for ids 0-4
        assert all(top[j] != j for j in range(5))  # old vectors of 0-4 are gone
        assert not set(top[10:]) & set(dels.tolist())
        await sink.snapshot()
        assert await sink.compact() >= 1  # segment 0 was 70% tombstones
        assert sink.ntotal == 2900
        res2 = await sink.search(y[:5], 1)
        assert res2.ids[:, 0].tolist() == [0, 1, 2, 3, 4]
        await sink.close(ok=True)
    view = open_snapshot(tmp_path / "idx")
    assert view.manifest["ntotal"] == 2900
    again = view.search(np.vstack([y[:3], x[700:703]]), 1).ids[:, 0].tolist()
    assert again[:3] == [0, 1, 2] and not set(again[3:]) & set(dels.tolist())


@pytest.mark.asyncio
async def test_disk_full_during_snapshots_loses_nothing_and_recovers(tmp_path: Path, rng) -> None:
    import errno

    x = rng.standard_normal((4000, 8)).astype(np.float32)
    sink = FaissSink(tmp_path / "idx", metric="l2", snapshot_every=0.02)
    full = True
    commits: list[int] = []

    def hook(step: str) -> None:
        if full and step.endswith(":written"):
            raise OSError(errno.ENOSPC, "No space left on device")

    async def listener(seq: int, positions: dict) -> None:
        commits.append(seq)

    sink.add_snapshot_listener(listener)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        assert sink.store is not None
        sink.store.hook = hook
        for start in range(0, 2000, 200):
            ids = np.arange(start, start + 200)
            await sink.write(Batch(ids, x[ids], np.zeros(200), "p", {"offset": start + 200}))
            await anyio.sleep(0.02)
        failures = sink.statistics().snapshot_failures
        assert failures >= 3 and commits == []  # nothing committed while the disk is full
        assert not list((tmp_path / "idx" / "objects").glob(".*.tmp"))  # no leaked temp files
        assert sink.ntotal == 2000  # ingestion went on
        full = False
        for start in range(2000, 4000, 200):
            ids = np.arange(start, start + 200)
            await sink.write(Batch(ids, x[ids], np.zeros(200), "p", {"offset": start + 200}))
            await anyio.sleep(0.02)
        await sink.close(ok=True)
    assert commits
    view = open_snapshot(tmp_path / "idx")
    assert view.manifest["ntotal"] == 4000
    assert view.manifest["shards"][0]["position"] == {"offset": 4000}
