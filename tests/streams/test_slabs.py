"""Slabs (streams.slabs): a stream's chunks one after another in reused memory,
what the raw decode makes of them, and batches of consecutive chunks as views."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import batch
from operators.decode import _Decoder
from streams.records import Batch, Chunk
from streams.slabs import SlabPool, follows, join_rows
from tests.helpers import collect
from tests.operators.test_batch import BatchSource


def _u8(view: np.ndarray) -> list[int]:
    return np.asarray(view).tolist()  # type: ignore[no-any-return]


def test_a_streams_joins_follow_each_other_in_one_slab() -> None:
    pool = SlabPool(slab_bytes=64)
    a1 = pool.join([b"\x01" * 8, b"\x02" * 8], "a")
    b1 = pool.join([b"\x09" * 4], "b")
    a2 = pool.join([b"\x03" * 4], "a")
    assert _u8(a1) == [1] * 8 + [2] * 8 and _u8(b1) == [9] * 4 and _u8(a2) == [3] * 4
    assert a2.base is a1.base and a2.ctypes.data == a1.ctypes.data + 16
    assert b1.base is not a1.base  # another stream, another slab
    assert pool.allocated == 2 and a1.flags.writeable


def test_a_slab_is_written_again_only_once_nothing_views_it() -> None:
    pool = SlabPool(slab_bytes=32, keep_bytes=32)
    first = pool.join([b"\x01" * 16], "a")
    second = pool.join([b"\x02" * 16], "a")  # fills the slab
    # Full and still viewed: the stream moves on to a new slab.
    third = pool.join([b"\x03" * 8], "a")
    assert third.base is not first.base and pool.allocated == 2
    assert _u8(first) == [1] * 16 and _u8(second) == [2] * 16
    retired = first.ctypes.data
    del first, second
    gc.collect()
    # Nothing views the retired slab now: the next slab needed is that one.
    fourth = pool.join([b"\x04" * 32], "b")
    assert fourth.ctypes.data == retired and pool.allocated == 2 and pool.reused == 1
    # A stream whose slab nothing views starts it over from the beginning.
    del third
    gc.collect()
    fifth = pool.join([b"\x05" * 4], "a")
    assert pool.reused == 2 and fifth.ctypes.data == fifth.base.ctypes.data
    assert _u8(fourth) == [4] * 32 and _u8(fifth) == [5] * 4


def test_a_join_larger_than_a_slab_gets_a_slab_of_its_size() -> None:
    pool = SlabPool(slab_bytes=16)
    big = pool.join([b"\x07" * 40], "a")
    assert _u8(big) == [7] * 40 and len(big.base) == 40


def test_spares_nothing_uses_are_kept_within_the_budget() -> None:
    pool = SlabPool(slab_bytes=16, keep_bytes=16)
    views = [pool.join([bytes([i]) * 16], "a") for i in range(4)]  # four full slabs
    pool.join([b"\x00"], "a")
    assert len(pool._spare) == 4  # all still viewed: in flight, not spare memory
    del views
    gc.collect()
    b1 = pool.join([b"\x00" * 16], "b")  # takes a spare
    b2 = pool.join([b"\x00" * 16], "b")  # b's slab is full and viewed: retired
    # Of the three idle spares, one is kept (keep_bytes) and taken for b2; b1's
    # slab stays a spare, in use.
    assert len(pool._spare) == 1 and pool._spare[0] is b1.base
    assert pool.allocated == 5 and b2.base is not b1.base


def test_trim_lets_go_of_spares_done_with_since_they_were_retired() -> None:
    pool = SlabPool(slab_bytes=16, keep_bytes=16)
    views = [pool.join([bytes([i]) * 16], "a") for i in range(4)]
    assert len(pool._spare) == 3  # retired while in use: kept, in flight
    pool.trim()
    assert len(pool._spare) == 3
    del views
    gc.collect()
    pool.trim()  # done with now: one kept (keep_bytes), the others let go
    assert len(pool._spare) == 1


def test_an_idle_stream_keeps_fewer_spares_than_a_flowing_one() -> None:
    pool = SlabPool(slab_bytes=16, keep_bytes=48)
    views = [pool.join([bytes([i]) * 16], "a") for i in range(5)]
    last = views.pop()  # the slab being filled stays in use
    del views
    gc.collect()
    last = pool.join([b"x" * 16], "a")  # retires a slab: spares trimmed to keep_bytes
    assert len(pool._spare) == 3
    allocated = pool.allocated
    for _ in range(3):  # flowing again: the spares are reused, nothing allocated
        last = pool.join([b"y" * 16], "a")
    assert pool.allocated == allocated
    del last
    pool.trim(16)  # idle: keep one
    assert len(pool._spare) == 1


def test_streams_beyond_the_limit_give_up_unused_slabs() -> None:
    pool = SlabPool(slab_bytes=16, streams=2)
    kept = pool.join([b"\x01"], "a")
    for name in "bcd":
        pool.join([b"\x02"], name)
    # "a" is still viewed, so it keeps its slab; the unused ones went.
    assert list(pool._filling) == ["a", "d"]
    assert _u8(kept) == [1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.lists(st.integers(0, 24), min_size=1, max_size=4),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_live_views_are_never_overwritten(ops: list[tuple[str, list[int], bool]]) -> None:
    pool = SlabPool(slab_bytes=48, keep_bytes=48, streams=2)
    live: list[tuple[np.ndarray, bytes]] = []
    for i, (stream, sizes, drop) in enumerate(ops):
        parts = [bytes([(i * 7 + j) % 251]) * n for j, n in enumerate(sizes)]
        live.append((pool.join(parts, stream), b"".join(parts)))
        if drop and live:
            live.pop(len(live) // 2)
        for view, want in live:
            assert view.tobytes() == want


def _chunk(x: np.ndarray, start: int, partition: str = "t-0") -> Chunk:
    n = len(x)
    return Chunk(
        partition,
        "t[0]",
        "f32",
        {"offset": start + n},
        np.arange(start, start + n),
        "offset",
        payloads=[r.tobytes() for r in x],
        keys=[str(start + i).encode() for i in range(n)],
        read_at=1.0,
    )


def test_raw_decode_batches_stay_intact_and_writable() -> None:
    rng = np.random.default_rng(1)
    dec = _Decoder("decode", None, 1 << 16, False, slab_bytes=4096)
    xs = [rng.standard_normal((50, 8)).astype("<f4") for _ in range(6)]
    kept = []
    for i, x in enumerate(xs):
        b, bad = dec.decode(_chunk(x, 100 * i, partition=f"t-{i % 2}"))
        assert not bad and b.vectors.flags.writeable  # normalize needs no copy
        kept.append(b)
    for b, x in zip(kept, xs, strict=True):
        np.testing.assert_array_equal(b.vectors, x)
    # One partition's chunks follow each other: joining them copies nothing.
    assert follows(kept[0].vectors, kept[2].vectors)
    assert not follows(kept[0].vectors, kept[1].vectors)


def test_a_chunk_decode_reads_record_by_record_leaves_the_slab_as_it_was() -> None:
    """A chunk the fast path gives up on (a key that is no decimal id, a value of
    another size) spends no slab space: the partition's next chunk still follows
    the one before, so batch still joins them without a copy."""
    rng = np.random.default_rng(2)
    dec = _Decoder("decode", None, 1 << 16, False, slab_bytes=1 << 16)
    xs = [rng.standard_normal((20, 8)).astype("<f4") for _ in range(4)]
    first, _ = dec.decode(_chunk(xs[0], 0))
    named = _chunk(xs[1], 20)
    named.keys[3] = b"doc-3"  # type: ignore[index]
    short = _chunk(xs[2], 40)
    short.payloads[5] = short.payloads[5][:16]  # type: ignore[index]
    for odd in (named, short):
        b, bad = dec.decode(odd)
        assert not np.shares_memory(b.vectors, first.vectors.base)
    assert [(r.reason, r.location) for r in bad] == [("wrong-dimension", 45)]
    nxt, _ = dec.decode(_chunk(xs[3], 60))
    assert follows(first.vectors, nxt.vectors)
    np.testing.assert_array_equal(nxt.vectors, xs[3])


def test_join_rows_makes_one_view_of_consecutive_rows_and_copies_others() -> None:
    slab = SlabPool(slab_bytes=384).take(384, "s")
    rows = slab.view(np.float32).reshape(24, 4)
    rows[:] = np.arange(96, dtype=np.float32).reshape(24, 4)
    a, b, c = rows[0:5], rows[5:12], rows[12:20]
    joined = join_rows([a, b, c])
    assert np.shares_memory(joined, slab)
    np.testing.assert_array_equal(joined, rows[:20])
    gapped = join_rows([a, c])  # rows 5..12 missing: a copy
    assert not np.shares_memory(gapped, slab)
    np.testing.assert_array_equal(gapped, np.concatenate([a, c]))
    swapped = join_rows([b, a])
    assert not np.shares_memory(swapped, slab)
    other = np.array(b)  # the same values, memory of its own
    assert not follows(a, other)
    np.testing.assert_array_equal(join_rows([a, other]), rows[:12])
    # Consecutive rows of any other array are copied: only slabs are joined in place.
    plain = np.arange(96, dtype=np.float32).reshape(24, 4)
    assert not follows(plain[:5], plain[5:12])
    assert not np.shares_memory(join_rows([plain[:5], plain[5:12]]), plain)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("slab_chunks", "rows", "lengths"),
    [(4.0, 10_000, [120] * 3), (3.5, 10_000, [90] * 4), (4.0, 50, [50, 50, 20] * 3)],
)
async def test_batches_of_a_partitions_chunks_are_views_of_its_slab(
    slab_chunks: float, rows: int, lengths: list[int]
) -> None:
    rng = np.random.default_rng(2)
    dim, per = 16, 30
    dec = _Decoder("decode", None, 1 << 16, False, slab_bytes=int(slab_chunks * per * dim * 4))
    xs = [rng.standard_normal((per, dim)).astype("<f4") for _ in range(12)]
    decoded: list[Batch | float] = []
    for i, x in enumerate(xs):
        b, _ = dec.decode(_chunk(x, per * i))
        decoded.append(b)
    # A batch of four chunks' vector bytes.
    out = await collect(BatchSource(decoded), batch(rows, max_bytes=4 * per * dim * 4))
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in out]), np.concatenate(xs))
    np.testing.assert_array_equal(
        np.concatenate([b.ids for b in out]), np.arange(per * len(xs), dtype=np.int64)
    )
    # Every batch is one view of decode's memory, none a copy: a batch never spans
    # two slabs. Where a slab holds three chunks and a batch four, or where a
    # batch of 50 rows leaves 20 at a slab's end, batches close at the slab's end.
    assert [len(b) for b in out] == lengths
    assert not any(b.vectors.flags.owndata for b in out)
    # (A batch that ends inside a chunk carries the last whole chunk's position.)
    ends = np.cumsum(lengths)
    assert [b.position["offset"] for b in out] == [int(e - e % per) for e in ends]
