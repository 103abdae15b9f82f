"""batch: regroup decoded rows into batches of a target size, per partition.

A batch is emitted when it reaches ``size`` rows or ``max_bytes`` bytes, or when its
oldest row has waited ``max_latency`` seconds, whichever comes first. Each partition
is batched on its own, so a batch always belongs to one partition (and so to one
shard).

A batch of consecutive chunks that were written into one slab of memory
(:mod:`streams.slabs`: ``decode``'s joins, the Kafka source's rows) is a view of the
slab, not a copy. A batch never spans two slabs: where a partition's next chunk
starts a new slab, what is pending is emitted as it is. ``max_bytes`` counts the
bytes of the vectors, so that a slab of that size holds one whole batch.

Positions: a batch that ends exactly where an input ended carries that input's
position. A batch that ends in the middle of an input carries the position of the
last input that it completed (or none), so a restart may re-read a few rows; the
sink's upsert by id makes re-reading harmless.

Inside a batch the last operation on an id wins: earlier rows with the same id are
dropped, vectorised.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import numpy as np

from streams.channel import Inbox
from streams.errors import ConfigError
from streams.operator import Operator
from streams.records import Batch, Position
from streams.slabs import follows, starts_slab, viewed

__all__ = ["batch", "concat", "last_wins"]


def last_wins(b: Batch) -> Batch:
    """``b`` with only the last row of every repeated id (order otherwise kept)."""
    ids = b.ids
    if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return b
    # Index of the last occurrence of each id: unique over the reversed array.
    _, first_rev = np.unique(ids[::-1], return_index=True)
    if len(first_rev) == len(ids):
        return b
    return b.take(np.sort(len(ids) - 1 - first_rev))


def concat(parts: list[Batch], position: Position) -> Batch:
    """One batch holding ``parts`` in order, with ``position``."""
    return Batch.concat(parts, position)


@dataclass
class _Pending:
    parts: list[Batch] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0
    # Position of the last input fully held by this buffer, or of earlier output.
    position: Position = field(default_factory=dict)
    # Whether the parts' vectors lie one after the other in one array's memory, so
    # that joining them copies nothing.
    views: bool = False


class _Batcher:
    def __init__(self, size: int, max_bytes: int | None) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.pending: dict[str, _Pending] = {}

    def add(self, b: Batch, now: float) -> list[Batch]:
        """Buffer ``b``; return the batches that are full now."""
        if not b.created:
            b.created = now
        p = self.pending.get(b.partition)
        if p is None:
            p = self.pending[b.partition] = _Pending(since=now)
        elif not p.parts:
            p.since = now
        out: list[Batch] = []
        limit = self.size
        if self.max_bytes is not None and len(b):
            # Bytes of the rows' vectors (and floats), not their ids and times: a
            # slab of max_bytes (streams.slabs) then holds exactly one batch.
            floats = 0 if b.floats is None else b.floats.nbytes
            row = (b.vectors.nbytes + floats) // len(b)
            limit = min(limit, max(1, self.max_bytes // max(1, row)))
        start, n = 0, len(b)
        if n == 0 and not p.parts and b.position:
            # All of an input was rejected (or it held nothing): pass its position on
            # at once, so the sink moves past those records.
            p.position = {**p.position, **b.position}
            return [b]
        if p.views and starts_slab(b.vectors):
            # What is pending is one view of a slab, and ``b`` starts the next one:
            # joining them would copy it all, so what is pending goes as it is.
            position = p.position
            out.append(self._emit(b.partition, position))
            p = self.pending[b.partition] = _Pending(since=now, position=position)
        while start < n:
            take = min(max(limit - p.rows, 1), n - start)
            whole = start == 0 and take == n
            part = b if whole else b.take(slice(start, start + take), p.position)
            if p.parts:
                p.views = p.views and follows(p.parts[-1].vectors, part.vectors)
            else:
                p.views = viewed(part.vectors)
            p.parts.append(part)
            p.rows += take
            start += take
            if p.rows >= limit:
                # A batch that ends mid-input keeps the last completed position;
                # one that ends with the input holds every stream it completed (a
                # batch spanning two files keeps both files' progress).
                position = {**p.position, **b.position} if start == n else p.position
                out.append(self._emit(b.partition, position))
                p = self.pending[b.partition] = _Pending(since=now, position=position)
        p.position = {**p.position, **b.position}
        return out

    def _emit(self, partition: str, position: Position) -> Batch:
        p = self.pending.pop(partition)
        return last_wins(concat(p.parts, position))

    def flush(self, partition: str) -> Batch | None:
        p = self.pending.get(partition)
        if p is None or not p.parts:
            return None
        return self._emit(partition, p.position)

    def expired(self, now: float, max_latency: float) -> list[str]:
        return [k for k, p in self.pending.items() if p.parts and now - p.since >= max_latency]

    def next_deadline(self, max_latency: float) -> float | None:
        times = [p.since + max_latency for p in self.pending.values() if p.parts]
        return min(times) if times else None


def batch(
    size: int = 4096,
    *,
    max_latency: float = 0.05,
    max_bytes: int | None = None,
    name: str = "batch",
) -> Operator[Batch, Batch]:
    """Regroup batches to ``size`` rows per partition.

    Args:
        size: rows per batch. Larger batches amortise per-batch costs (a FAISS add,
            a thread hop); smaller ones make records searchable sooner.
        max_latency: seconds a row may wait for its batch to fill. This bounds the
            freshness cost of batching when input is slow.
        max_bytes: also emit once a batch holds this many bytes of vectors.
        name: the stage name.
    """
    if size < 1:
        raise ConfigError(f"batch: size must be at least 1, got {size}")
    if max_latency <= 0:
        raise ConfigError(f"batch: max_latency must be positive, got {max_latency}")
    if max_bytes is not None and max_bytes < 1:
        raise ConfigError(f"batch: max_bytes must be positive, got {max_bytes}")

    async def run(inbox: Inbox[Batch]) -> AsyncIterator[Batch]:
        state = _Batcher(size, max_bytes)
        clock = time.monotonic
        while True:
            deadline = state.next_deadline(max_latency)
            timeout = None if deadline is None else max(deadline - clock(), 0.0)
            try:
                item = await inbox.receive(timeout=timeout)
            except TimeoutError:
                for part in state.expired(clock(), max_latency):
                    out = state.flush(part)
                    if out is not None:
                        yield out
                continue
            except anyio.EndOfStream:
                break
            for out in state.add(item, clock()):
                yield out
        for part in list(state.pending):
            out = state.flush(part)
            if out is not None:
                yield out

    return Operator(name, run)
