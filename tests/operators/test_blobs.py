"""Reusable join buffers (operators.blobs) and what the raw decode makes of them."""

from __future__ import annotations

import numpy as np

from operators.blobs import BlobPool
from operators.decode import _Decoder
from streams.records import Chunk


def test_a_buffer_is_reused_only_once_nothing_views_it() -> None:
    pool = BlobPool(keep=2)
    first = np.frombuffer(pool.join([b"\x01" * 8, b"\x02" * 8]), dtype=np.uint8)
    assert first.tolist() == [1] * 8 + [2] * 8
    # While ``first`` is alive its buffer is not written again.
    second = np.frombuffer(pool.join([b"\x03" * 4]), dtype=np.uint8)
    assert first.tolist() == [1] * 8 + [2] * 8 and second.tolist() == [3] * 4
    assert (pool.reused, pool.allocated) == (0, 2)
    del first
    third = np.frombuffer(pool.join([b"\x04" * 2]), dtype=np.uint8)
    assert third.tolist() == [4, 4] and second.tolist() == [3] * 4
    assert (pool.reused, pool.allocated) == (1, 2)
    # All kept buffers busy: a buffer of its own, not kept.
    fourth = np.frombuffer(pool.join([b"\x05"]), dtype=np.uint8)
    assert fourth.tolist() == [5] and pool.allocated == 3 and len(pool._buffers) == 2


def _chunk(x: np.ndarray, start: int) -> Chunk:
    n = len(x)
    return Chunk(
        "t-0",
        "t[0]",
        "f32",
        {"offset": start + n},
        np.arange(start, start + n),
        "offset",
        payloads=[r.tobytes() for r in x],
        keys=[str(start + i).encode() for i in range(n)],
        read_at=1.0,
    )


def test_raw_decode_reuses_buffers_and_batches_stay_intact() -> None:
    rng = np.random.default_rng(1)
    dec = _Decoder("decode", None, 1 << 16, False)
    xs = [rng.standard_normal((50, 8)).astype("<f4") for _ in range(4)]
    kept = []
    for i, x in enumerate(xs):
        b, bad = dec.decode(_chunk(x, 100 * i))
        assert not bad and b.vectors.flags.writeable  # normalize needs no copy
        kept.append(b)
    # Four batches alive at once: four buffers, none overwritten.
    for b, x in zip(kept, xs, strict=True):
        np.testing.assert_array_equal(b.vectors, x)
    assert dec.blobs.allocated == 4 and dec.blobs.reused == 0
    kept.clear()
    b, _ = dec.decode(_chunk(xs[0], 1000))
    np.testing.assert_array_equal(b.vectors, xs[0])
    assert dec.blobs.reused == 1
