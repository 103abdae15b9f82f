"""Segments that reserve their codes up front behave exactly like FAISS's own adds."""

from __future__ import annotations

import gc
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.segment import Segment, make_index
from sinks.shard import Shard
from streams import Batch

DIM = 16
_rng = np.random.default_rng(7)
_TRAIN = _rng.standard_normal((2000, DIM)).astype(np.float32)


def fresh(factory: str, metric: str = "l2") -> Any:
    index = make_index(DIM, factory, metric)
    if not index.is_trained:
        index.train(_TRAIN)
    return index


def pair(factory: str, capacity: int, *, codes: bool = False) -> tuple[Segment, Segment]:
    """The same empty segment twice: one reserved, one left to FAISS."""
    reserved = Segment(fresh(factory), codes=codes)
    assert reserved.reserve(capacity)
    return reserved, Segment(fresh(factory), codes=codes)


def rows(seg: Segment, n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return faiss.downcast_index(seg.index.index).sa_encode(x) if seg.codes else x


def same(a: Segment, b: Segment, queries: np.ndarray) -> None:
    assert a.ntotal == b.ntotal == a.index.index.ntotal
    assert bytes(faiss.serialize_index(a.index)) == bytes(faiss.serialize_index(b.index))
    if a.ntotal:
        da, ia = a.search(queries, 5)
        db, ib = b.search(queries, 5)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(da, db)
        ids = a.ids.to_array()
        np.testing.assert_array_equal(a.reconstruct(ids), b.reconstruct(ids))


@settings(max_examples=40, deadline=None)
@given(
    factory=st.sampled_from(["Flat", "IDMap2,Flat", "SQ8", "IDMap2,SQ8", "PQ4x4", "LSH"]),
    codes=st.booleans(),
    steps=st.lists(
        st.tuples(st.sampled_from(["add", "remove"]), st.integers(1, 300)), min_size=1, max_size=8
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_in_place_adds_match_faiss(
    factory: str, codes: bool, steps: list[tuple[str, int]], seed: int
) -> None:
    """Whatever the mix of adds (past the capacity too) and removes, the reserved
    segment serialises, searches and reconstructs exactly as FAISS's own."""
    codes = codes and not factory.endswith("Flat")
    reserved, plain = pair(factory, 500, codes=codes)
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((4, DIM)).astype(np.float32)
    next_id = 0
    for op, n in steps:
        if op == "add":
            x = rows(reserved, n, rng)
            ids = np.arange(next_id, next_id + n, dtype=np.int64)
            next_id += n
            reserved.add(x, ids)
            plain.add(x, ids)
        elif reserved.ntotal:
            held = reserved.ids.to_array()
            gone = rng.choice(held, size=min(n, len(held)), replace=False)
            reserved.remove(gone)
            plain.remove(gone)
        same(reserved, plain, queries)


def test_reserved_area_is_used_until_full_then_faiss_takes_over() -> None:
    rng = np.random.default_rng(1)
    seg, _ = pair("IDMap2,Flat", 100)
    inner: Any = faiss.downcast_index(seg.index.index)
    seg.add(rows(seg, 60, rng), np.arange(60))
    assert not inner.codes.is_owned  # written in place, read through a view
    seg.add(rows(seg, 40, rng), np.arange(60, 100))
    assert not inner.codes.is_owned and seg.ntotal == 100
    seg.add(rows(seg, 1, rng), np.arange(100, 101))
    assert inner.codes.is_owned and seg.ntotal == 101  # copied out, grown by FAISS
    # The reverse map was rebuilt before FAISS's add: lookups by id work again.
    np.testing.assert_array_equal(
        seg.index.reconstruct_batch(np.array([0, 99, 100])),
        seg.reconstruct(np.array([0, 99, 100])),
    )


def test_reserve_refuses_what_it_cannot_do_in_place() -> None:
    assert not Segment(make_index(DIM, "HNSW8", "l2")).reserve(100)  # not flat codes
    assert not Segment(make_index(DIM, "IVF4,Flat", "l2")).reserve(100)
    full = Segment(make_index(DIM, "Flat", "l2"))
    full.add(np.zeros((1, DIM), np.float32), np.array([1]))
    assert not full.reserve(100)  # only an empty segment


def test_a_reserved_segments_id_map_never_moves_while_adds_fit() -> None:
    """The id map gets the reserved capacity up front: adds that fit never grow it
    by doubling (which left freed blocks in the heap, segment after segment)."""
    seg = Segment(make_index(DIM, "IDMap2,Flat", "l2"))
    assert seg.reserve(1000)
    rng = np.random.default_rng(3)

    def where() -> int:
        id_map = seg.index.id_map
        return int(faiss.rev_swig_ptr(id_map.data(), 1).__array_interface__["data"][0])

    seg.add(rng.standard_normal((10, DIM)).astype(np.float32), np.arange(10))
    start = where()
    for i in range(1, 20):
        seg.add(rng.standard_normal((50, DIM)).astype(np.float32), np.arange(50) + 50 * i)
        assert where() == start
    assert seg.ntotal == 960
    np.testing.assert_array_equal(seg.ids.to_array()[:10], np.arange(10))


def test_untrained_index_still_says_so() -> None:
    seg = Segment(make_index(DIM, "SQ8", "l2"))
    assert seg.reserve(100)
    with pytest.raises(RuntimeError, match="trained"):
        seg.add(np.zeros((3, DIM), np.float32), np.arange(3))


def test_wrong_dimension_is_refused_not_written() -> None:
    seg = Segment(make_index(DIM, "Flat", "l2"))
    assert seg.reserve(100)
    with pytest.raises(AssertionError):
        seg.add(np.zeros((3, DIM + 1), np.float32), np.arange(3))
    assert seg.ntotal == 0


def test_index_keeps_its_area_alive_without_the_segment() -> None:
    rng = np.random.default_rng(2)
    seg, _ = pair("Flat", 1000)
    x = rows(seg, 500, rng)
    seg.add(x, np.arange(500))
    index = seg.index
    del seg
    gc.collect()
    _d, ids = index.search(x[:10], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(10))


def test_shard_reserves_each_active_flat_segment() -> None:
    rng = np.random.default_rng(3)
    shard = Shard(
        "p",
        [Segment(make_index(DIM, "Flat", "l2"))],
        new_index=lambda: (make_index(DIM, "Flat", "l2"), None),
        segment_size=1024,
    )
    for start in range(0, 3000, 500):
        ids = np.arange(start, start + 500, dtype=np.int64)
        x = rng.standard_normal((500, DIM)).astype(np.float32)
        stamps = np.full(500, np.nan)
        shard.apply(Batch(ids, x, stamps, partition="p", position={"p": start + 500}))
    assert [s.ntotal for s in shard.segments] == [1000, 1000, 1000]
    for s in shard.segments:
        assert not faiss.downcast_index(s.index.index).codes.is_owned
    np.testing.assert_array_equal(np.sort(shard.ids()), np.arange(3000))
