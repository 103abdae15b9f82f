"""The event-loop side of writing: applying batches to shards in worker threads, and
holding them back while a snapshot captures a shard.

A snapshot writes a shard's changed segments in a worker thread under the shard's
read lock. Rather than stall ingestion on that lock, batches for the shard queue in
memory (up to ``max_deferred_bytes``, then ingestion waits: backpressure) and are
applied, in order, as soon as the capture is done. New batches keep queueing behind
the queue while it drains, so order is kept and a write never waits for an apply.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from sinks.shard import Shard
from streams.histogram import Histogram
from streams.records import Batch
from streams.statistics import SinkStatistics

__all__ = ["WriteGate"]

T = TypeVar("T")


class _ShardGate:
    """One shard's gate: whether a capture runs, and what waits for it."""

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.capturing = False
        self.draining = False
        self.deferred: list[Batch] = []
        self.deferred_bytes = 0
        self.drained = anyio.Event()
        self.drained.set()


class WriteGate:
    """Applies batches to shards, deferring them while a snapshot captures a shard.

    Args:
        max_deferred_bytes: most bytes of batches queued per shard during a capture.
        stats: the sink's counters (batches, records, deferred batches).
        freshness: event time to searchable, per record.
        write_seconds: how long each write took, deferral included.
    """

    def __init__(
        self,
        max_deferred_bytes: int,
        stats: SinkStatistics,
        freshness: Histogram,
        write_seconds: Histogram,
    ) -> None:
        self.max_deferred_bytes = max_deferred_bytes
        self.stats = stats
        self.freshness = freshness
        self.write_seconds = write_seconds
        self._gates: dict[str, _ShardGate] = {}
        # Set (and replaced) after every applied batch: searches waiting for a
        # position look again.
        self.applied = anyio.Event()

    def __repr__(self) -> str:
        queued = sum(len(g.deferred) for g in self._gates.values())
        return f"<WriteGate shards={len(self._gates)} queued={queued}>"

    def _gate(self, shard: Shard) -> _ShardGate:
        gate = self._gates.get(shard.name)
        if gate is None:
            gate = self._gates[shard.name] = _ShardGate()
        return gate

    def forget(self, name: str) -> None:
        """Drop the gate of a shard this sink no longer holds."""
        self._gates.pop(name, None)

    async def apply(self, shard: Shard, item: Batch) -> None:
        """Apply ``item`` now, or queue it while a capture of ``shard`` runs."""
        gate = self._gate(shard)
        started = time.perf_counter()
        while True:
            async with gate.lock:
                if not gate.capturing and not gate.draining:
                    await self._apply_now(shard, item)
                    break
                if gate.deferred_bytes + item.nbytes <= self.max_deferred_bytes:
                    gate.deferred.append(item)
                    gate.deferred_bytes += item.nbytes
                    self.stats.deferred_batches += 1
                    break
                drained = gate.drained
            await drained.wait()
        self.write_seconds.observe([time.perf_counter() - started])

    async def _apply_now(self, shard: Shard, item: Batch) -> None:
        await anyio.to_thread.run_sync(shard.apply, item)
        self.freshness.observe(shard.searchable_at - item.timestamps)
        self.stats.batches += 1
        self.stats.records += len(item)
        self.applied.set()
        self.applied = anyio.Event()

    async def capture(self, shard: Shard, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await fn()`` (a capture of ``shard``) while its batches queue, then
        apply the queue (one at a time, so ingestion can keep queueing meanwhile)."""
        gate = self._gate(shard)
        async with gate.lock:
            gate.capturing = gate.draining = True
            gate.drained = anyio.Event()
        try:
            return await fn()
        finally:
            with anyio.CancelScope(shield=True):
                async with gate.lock:
                    gate.capturing = False
                while True:
                    async with gate.lock:
                        if not gate.deferred:
                            gate.deferred_bytes = 0
                            gate.draining = False
                            gate.drained.set()
                            break
                        queued = gate.deferred.pop(0)
                        gate.deferred_bytes -= queued.nbytes
                    await self._apply_now(shard, queued)
