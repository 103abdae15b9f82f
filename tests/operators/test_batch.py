from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import numpy as np
import pytest

from operators import batch, normalize
from operators.batch import last_wins
from streams import Batch, Chunk, ConfigError, Source
from streams.records import Positions
from tests.helpers import collect

pytestmark = pytest.mark.anyio


def mk(ids: list[int], part: str = "p", pos: int = 0, dim: int = 2) -> Batch:
    a = np.asarray(ids, dtype=np.int64)
    v = np.repeat(a[:, None].astype(np.float32), dim, axis=1)
    return Batch(a, v, np.zeros(len(a)), part, {"offset": pos})


class BatchSource(Source):
    """Feeds prepared batches (standing in for decode's output), with pauses."""

    def __init__(self, items: list[Batch | float]) -> None:
        self.items = items

    async def chunks(self, start: Positions) -> AsyncIterator[Chunk]:
        for it in self.items:
            if isinstance(it, float):
                await anyio.sleep(it)
            else:
                yield it  # type: ignore[misc]


async def test_exact_sizes_and_positions_at_chunk_boundaries() -> None:
    src = BatchSource([mk(list(range(i * 3, i * 3 + 3)), pos=i + 1) for i in range(5)])
    out = await collect(src, batch(4))
    assert [len(b) for b in out] == [4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([b.ids for b in out]), np.arange(15))
    # Batch 1 ends inside input 2 -> position of input 1 (the last completed one);
    # batch 2 ends inside input 3 -> position 2; batch 3 ends exactly at input 4.
    assert [b.position["offset"] for b in out] == [1, 2, 4, 5]


async def test_latency_flushes_a_partial_batch() -> None:
    src = BatchSource([mk([1, 2], pos=1), 0.2, mk([3], pos=2)])
    out = await collect(src, batch(100, max_latency=0.02))
    assert [b.ids.tolist() for b in out] == [[1, 2], [3]]


async def test_partitions_are_batched_apart() -> None:
    src = BatchSource([mk([1], "a", 1), mk([2], "b", 1), mk([3], "a", 2), mk([4], "b", 2)])
    out = await collect(src, batch(2))
    assert sorted((b.partition, b.ids.tolist()) for b in out) == [("a", [1, 3]), ("b", [2, 4])]


async def test_byte_budget() -> None:
    src = BatchSource([mk(list(range(100)), pos=1, dim=64)])
    out = await collect(src, batch(1000, max_bytes=64 * 4 * 25))
    assert max(len(b) for b in out) <= 25 and sum(len(b) for b in out) == 100


def test_last_wins_within_a_batch() -> None:
    b = mk([5, 1, 5, 2, 1])
    b.vectors[:, 0] = np.arange(5)
    out = last_wins(b)
    assert out.ids.tolist() == [5, 2, 1]
    assert out.vectors[:, 0].tolist() == [2, 3, 4]


async def test_normalize_unit_rows_and_zero_stays_zero() -> None:
    b = mk([1, 2, 3])
    b.vectors[:] = [[3, 4], [0, 0], [1, 0]]
    (out,) = await collect(BatchSource([b]), normalize())
    np.testing.assert_allclose(out.vectors, [[0.6, 0.8], [0, 0], [1, 0]], rtol=1e-6)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError):
        batch(0)
    with pytest.raises(ConfigError):
        batch(10, max_latency=0)
