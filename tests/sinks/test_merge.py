"""Segment merging: the tiered policy, merged indexes equal to one built directly,
a model-based property test of adds, upserts, deletes, merges, searches and
snapshots, and a crash in the middle of a merge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks import FaissSink, open_snapshot
from sinks.durable import CRASH_EXIT_CODE
from sinks.merge import grown_graph, merged_index, plan
from sinks.payloads import PayloadStore
from sinks.segment import Segment, make_index
from sinks.shard import Shard
from streams.records import Batch


def test_the_tiered_plan_keeps_segment_counts_logarithmic() -> None:
    assert plan([100, 100, 100], 4, 100) is None
    assert plan([100, 100, 100, 100], 4, 100) == [0, 1, 2, 3]
    assert plan([400, 100, 90, 100, 100], 4, 100) == [1, 2, 3, 4]  # the small tier first
    # Simulate a shard growing one sealed segment at a time, merging by the plan.
    sizes: list[int] = []
    for step in range(1, 257):
        sizes.append(100)
        while (picked := plan(sizes, 4, 100)) is not None:
            merged = sum(sizes[i] for i in picked)
            sizes = [s for i, s in enumerate(sizes) if i not in picked] + [merged]
        assert sum(sizes) == 100 * step
        assert len(sizes) <= 3 * (1 + int(np.log(step) / np.log(4))), (step, sizes)
    assert len(sizes) == 1  # 256 = 4**4


async def _write_in_batches_of_500(sink: FaissSink, x: np.ndarray) -> None:
    """Open ``sink``, write ``x`` (ids = rows) to partition "p", close it."""
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        for lo in range(0, len(x), 500):
            ids = np.arange(lo, lo + 500)
            await sink.write(Batch(ids, x[lo : lo + 500], np.zeros(500), "p", {"o": lo}))
        await sink.close(ok=True)


def test_a_ceiling_stops_merges_at_that_size() -> None:
    assert plan([100, 100, 100, 100], 4, 100, ceiling=100) is None  # full ones stay
    assert plan([100, 25, 25, 25, 25], 4, 10, ceiling=100) == [1, 2, 3, 4]
    assert plan([100, 30, 30, 30, 30], 4, 10, ceiling=100) == [1, 2, 3]
    assert plan([60, 60, 60, 60], 4, 10, ceiling=150) == [0, 1]  # as many as fit
    assert plan([90, 90, 90, 90], 4, 10, ceiling=150) is None  # not even two fit
    sizes: list[int] = []
    for _ in range(100):
        sizes.append(25)
        while (picked := plan(sizes, 4, 25, ceiling=400)) is not None:
            merged = sum(sizes[i] for i in picked)
            assert merged <= 400
            sizes = [s for i, s in enumerate(sizes) if i not in picked] + [merged]
    assert sum(sizes) == 2500 and max(sizes) <= 400 and len(sizes) <= 10


def test_full_flat_segments_are_not_merged_but_small_ones_are(tmp_path: Path) -> None:
    """Flat codes merge only up to segment_bytes: a scan costs its bytes however
    they are split, and every tier of merges copies them once more."""
    x = np.random.default_rng(0).standard_normal((20_000, 8)).astype(np.float32)

    async def run(segment_size: int) -> tuple[list[int], int]:
        sink = FaissSink(tmp_path / f"idx{segment_size}", metric="l2", snapshot_every=0,
                         segment_size=segment_size, segment_bytes=2048 * 32)  # fmt: skip
        await _write_in_batches_of_500(sink, x)
        sizes = [seg.ntotal for seg in sink.shards["p"].segments]
        return sizes, sink.statistics().merges

    full, merges = anyio.run(run, 1_000_000)  # sealed by bytes: 2,000 of at most 2,048
    assert merges == 0 and full == [2000] * 10, full
    small, merges = anyio.run(run, 500)  # sealed at 500 rows: merged up to 2,048
    assert merges > 0 and max(small) <= 2048 and len(small) < 40, small
    assert sum(small) == 20_000


@pytest.mark.parametrize("factory", ["IVF16,Flat", "Flat", "SQ8", "PQ4", "HNSW8"])
def test_a_merged_index_answers_as_one_built_directly(factory: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    template = make_index(16, factory, "l2")
    if not template.is_trained:
        template.train(x)
    parts = []
    for lo, hi in ((0, 1000), (1000, 1700), (1700, 3000)):
        index = faiss.clone_index(template)
        index.add_with_ids(x[lo:hi], np.arange(lo, hi, dtype=np.int64))
        parts.append(Segment(index))
    merged = merged_index(parts, faiss.clone_index(template))
    direct = faiss.clone_index(template)
    direct.add_with_ids(x, np.arange(3000, dtype=np.int64))
    assert merged.ntotal == 3000
    params = {"nprobe": 16} if "IVF" in factory else {"efSearch": 64} if "HNSW" in factory else None
    got_d, got_i = Segment(merged).search(x[:50], 5, params)
    want_d, want_i = Segment(direct).search(x[:50], 5, params)
    if factory == "HNSW8":  # a rebuilt graph: it finds each vector itself
        assert np.mean(got_i[:, 0] == np.arange(50)) >= 0.98
    else:
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_allclose(got_d, want_d, rtol=1e-5)
        # Byte-identical to the direct build: the codes were moved, not re-encoded.
        assert faiss.serialize_index(merged).tobytes() == faiss.serialize_index(direct).tobytes()
    if factory in ("Flat", "SQ8", "PQ4"):
        # The same, written in place into one reserved mapping (Shard.merge's way).
        inplace = Segment(faiss.clone_index(template))
        assert inplace.concat(parts, PayloadStore({}))
        assert sorted(inplace.ids.to_array().tolist()) == list(range(3000))
        got = faiss.serialize_index(inplace.index).tobytes()
        assert got == faiss.serialize_index(direct).tobytes()
        inplace.remove(np.arange(10, dtype=np.int64))  # moves the codes out first
        assert inplace.ntotal == 2990


def test_hnsw_segments_merge_into_a_copy_of_the_larger_graph() -> None:
    """The largest graph is copied and takes the others' vectors (its tombstones
    stay tombstones); when an id dead in it lives in another input, the merge
    rebuilds instead (tombstones go by id)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((700, 8)).astype(np.float32)

    def shard(reused: bool) -> Shard:
        big = make_index(8, "HNSW8", "l2")
        big.add_with_ids(x[:600], np.arange(600, dtype=np.int64))
        small = make_index(8, "HNSW8", "l2")
        ids = np.arange(600, 700, dtype=np.int64)
        if reused:
            ids[:10] = np.arange(10)  # ids 0-9 deleted from `big`, upserted here
        small.add_with_ids(x[600:], ids)
        segments = [
            Segment(big, dead=np.arange(10)),
            Segment(small),
            Segment(make_index(8, "HNSW8", "l2")),
        ]
        return Shard("p", segments, lambda: (make_index(8, "HNSW8", "l2"), None))

    grown = shard(reused=False)
    assert grown.merge(grown.segments[:2])
    merged = grown.segments[0]
    assert (merged.ntotal, len(merged.dead), merged.live) == (700, 10, 690)
    rebuilt = shard(reused=True)
    assert rebuilt.merge(rebuilt.segments[:2])
    merged = rebuilt.segments[0]
    assert (merged.ntotal, len(merged.dead), merged.live) == (690, 0, 690)
    # Ids 0-9 answer with their upserted vectors, from the small input.
    _, top = merged.search(x[600:610], 1, {"efSearch": 64})
    assert top[:, 0].tolist() == list(range(10))


def test_grown_graph_adds_only_the_smaller_inputs() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((900, 8)).astype(np.float32)
    parts = []
    for lo, hi in ((0, 600), (600, 900)):
        index = make_index(8, "HNSW8", "l2")
        index.add_with_ids(x[lo:hi], np.arange(lo, hi, dtype=np.int64))
        parts.append(Segment(index))
    lives = [p.ids.to_array() for p in parts]
    grown = grown_graph(parts, lives, 0)
    assert grown.ntotal == 900 and parts[0].ntotal == 600  # a copy: the input is untouched
    assert np.mean(Segment(grown).search(x, 1, {"efSearch": 64})[1][:, 0] == np.arange(900)) > 0.98


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.integers(0, 59), min_size=1, max_size=25)),
        st.tuples(st.just("delete"), st.lists(st.integers(0, 59), min_size=1, max_size=8)),
        st.tuples(st.just("merge"), st.none()),
        st.tuples(st.just("snapshot"), st.none()),
        st.tuples(st.just("search"), st.none()),
    ),
    min_size=1,
    max_size=20,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops, factory=st.sampled_from(["Flat", "IVF4,Flat", "HNSW8"]))
def test_merges_interleaved_with_writes_keep_every_id_once_with_its_last_vector(
    tmp_path_factory: pytest.TempPathFactory, ops, factory: str
) -> None:
    """Against a model (id -> last vector): after any mix of adds (upserts),
    deletes, merges, snapshots and searches, the live sink and a reopened snapshot
    hold every id exactly once with its last vector."""
    idx = tmp_path_factory.mktemp("merge") / "idx"
    rng = np.random.default_rng(len(ops))
    train = rng.standard_normal((200, 4)).astype(np.float32)

    async def run() -> None:
        sink = FaissSink(
            idx, factory=factory, metric="l2", snapshot_every=0, train_size=200,
            segment_size=10, merge_factor=2,
        )  # fmt: skip
        model: dict[int, np.ndarray] = {}
        ever: set[int] = set()
        offset = 0
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            # Training rows (ids 1000+), so IVF is trained before the operations.
            await sink.write(Batch(np.arange(1000, 1200), train, np.zeros(200), "p", {"o": 0}))
            model.update({1000 + i: train[i] for i in range(200)})
            for op, arg in ops:
                if op in ("add", "delete"):
                    ids = np.array(list(dict.fromkeys(arg)), dtype=np.int64)
                    vecs = rng.standard_normal((len(ids), 4)).astype(np.float32)
                    offset += 1
                    deleted = np.full(len(ids), op == "delete")
                    await sink.write(
                        Batch(ids, vecs, np.zeros(len(ids)), "p", {"o": offset},
                              deleted=deleted if op == "delete" else None)
                    )  # fmt: skip
                    ever.update(ids.tolist())
                    for i, v in zip(ids.tolist(), vecs, strict=True):
                        if op == "delete":
                            model.pop(i, None)
                        else:
                            model[i] = v
                elif op == "merge":
                    await sink.merge()
                elif op == "snapshot":
                    await sink.snapshot()
                else:
                    res = await sink.search(
                        train[:3], 3, {"nprobe": 4} if "IVF" in factory else None
                    )
                    # Batches queued behind a merge may not be searchable yet.
                    assert set(res.ids[res.ids >= 0].tolist()) <= set(model) | ever
            # A merge in the background holds a shard's batches back while it reads
            # the shard; the next merge() waits for it (and its queue) to finish.
            await sink.merge()
            assert_matches(sink.shards.values(), model)
            await sink.close(ok=True)
        assert_matches(open_snapshot(idx).shards, model)

    anyio.run(run)


def assert_matches(shards, model: dict[int, np.ndarray]) -> None:
    seen: dict[int, np.ndarray] = {}
    for shard in shards:
        with shard.lock.read():
            for seg in shard.segments:
                live = seg.ids.to_array()
                vecs = seg.reconstruct(live) if len(live) else []
                for i, v in zip(live.tolist(), vecs, strict=True):
                    assert i not in seen, f"id {i} twice"
                    seen[i] = v
    assert set(seen) == set(model)
    for i, v in model.items():
        np.testing.assert_array_equal(seen[i], v)


def test_ingest_merges_segments_and_reports_them(tmp_path: Path) -> None:
    data = tmp_path / "x.npy"
    x = np.random.default_rng(0).standard_normal((20_000, 8)).astype(np.float32)
    np.save(data, x)

    async def run(merge_factor: int) -> tuple[int, int]:
        sink = FaissSink(tmp_path / f"idx{merge_factor}", metric="l2", snapshot_every=0,
                         segment_size=1000, merge_factor=merge_factor)  # fmt: skip
        await _write_in_batches_of_500(sink, x)
        st = sink.statistics()
        return st.shards["p"].segments, st.merges

    segments, merges = anyio.run(run, 4)
    plain, none = anyio.run(run, 0)
    assert plain == 20 and none == 0
    assert segments <= 6 and merges >= 4, (segments, merges)
    view = open_snapshot(tmp_path / "idx4")
    assert view.ntotal == 20_000
    assert view.search(x[:20], 1).ids[:, 0].tolist() == list(range(20))


@pytest.mark.parametrize("step", ["merge:*:start", "merge:*:swapped"])
def test_a_crash_in_the_middle_of_a_merge_recovers_exactly(tmp_path: Path, step: str) -> None:
    """Kill the process inside a merge (before the swap, after it): the next run
    loads the last snapshot, reads the rest again and ends with every row exactly."""
    data = tmp_path / "x.npy"
    x = np.random.default_rng(1).standard_normal((6000, 8)).astype(np.float32)
    np.save(data, x)
    idx = tmp_path / "idx"
    script = f"""
import anyio
from operators import batch, decode
from sinks import FaissSink
from streams import FileSource
sink = FaissSink({str(idx)!r}, metric="l2", snapshot_every=0.05, segment_size=500, merge_factor=2)
pipeline = FileSource({str(data)!r}, chunk_bytes=8 * 4 * 500) | decode() | batch(500) | sink
anyio.run(pipeline.run)
"""
    env = {**os.environ, "EMBEDSTREAM_CRASH_AT": step, "EMBEDSTREAM_CRASH_SKIP": "2"}
    crashed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=120
    )
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr.decode()[-2000:]
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    view = open_snapshot(idx)
    assert view.ntotal == 6000
    got = {}
    for shard in view.shards:
        for seg in shard.segments:
            live = seg.ids.to_array()
            got.update(zip(live.tolist(), seg.reconstruct(live), strict=True))
    assert sorted(got) == list(range(6000))
    np.testing.assert_array_equal(np.stack([got[i] for i in range(6000)]), x)
