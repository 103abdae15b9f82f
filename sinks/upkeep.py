"""Upkeep: what a sink does to its shards in the background, off the write path.

- **Expiry** (``--ttl``, :mod:`sinks.expiry`): a task sleeps until the earliest
  deadline of any shard and removes what is due, in worker threads.
- **Drift** (:mod:`sinks.retrain`): when the write path says a check is due, the
  codec's fit on the newest vectors is measured, and past the threshold a new codec
  generation is trained and swapped in. In its own task, apart from merges: a merge
  can run long (it applies the batches queued behind it), and a drift check must
  not wait for it to see a shift.
- **Maintenance**: when a segment seals, segments of older codec generations are
  re-encoded and sealed segments merged by the tiered policy (:mod:`sinks.merge`).
- **Compaction**: indexes that cannot remove ids (HNSW) are rebuilt without their
  tombstones (the snapshotter's loop calls it).

:class:`Upkeep` runs these tasks for one :class:`sinks.index.FaissSink`, which
also exposes each step to callers (``expire()``, ``maintain()``, ``merge()``...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import anyio
from anyio.abc import TaskGroup

from sinks.config import IndexConfig
from sinks.expiry import Expiry
from sinks.gate import WriteGate
from sinks.retrain import Retrainer
from sinks.segment import Segment
from sinks.shard import Shard
from sinks.snapshots import Snapshotter
from streams.statistics import SinkStatistics

__all__ = ["Upkeep"]


class Upkeep:
    """The background tasks of one sink (see the module docstring).

    Args:
        config: the sink's index configuration.
        shards: the sink's shards (read as they are when a task runs).
        stats: where merges and compactions are counted.
        gate: holds a shard's batches back while a merge reads its segments.
        snapshotter: its lock keeps snapshots and hand-overs off swapped segments.
        retrainer: drift checks, retraining and re-encoding.
        clock: the wall clock expiry reads.
        merge_factor: sealed segments merge in tiers of this many (below 2: never).
    """

    def __init__(
        self,
        config: IndexConfig,
        shards: Mapping[str, Shard],
        stats: SinkStatistics,
        gate: WriteGate,
        snapshotter: Snapshotter,
        retrainer: Retrainer,
        *,
        clock: Callable[[], float],
        merge_factor: int,
    ) -> None:
        self.config = config
        self.shards = shards
        self.stats = stats
        self.gate = gate
        self.snapshotter = snapshotter
        self.retrainer = retrainer
        self.clock = clock
        self.merge_factor = merge_factor
        # Set when a segment seals (merges may be due) or a drift check is due.
        self._maintenance_wanted = anyio.Event()
        self._drift_wanted = anyio.Event()

    def __repr__(self) -> str:
        return f"<Upkeep shards={len(self.shards)} merge_factor={self.merge_factor}>"

    def want_maintenance(self) -> None:
        """A segment sealed: re-encoding and merges may be due."""
        if self.merge_factor >= 2:
            self._maintenance_wanted.set()

    def want_drift_check(self) -> None:
        """Enough new vectors arrived for a drift check."""
        self._drift_wanted.set()

    def start(self, tg: TaskGroup) -> None:
        """Start the expiry, maintenance and drift tasks in ``tg``."""
        tg.start_soon(self._maintenance_loop)
        tg.start_soon(self._drift_loop)
        tg.start_soon(self._expiry_loop)

    async def _expiry_loop(self) -> None:
        # Sleeps until the earliest deadline, and at most a quarter of the ttl
        # (deadlines of vectors that arrive meanwhile are never sooner than that).
        while True:
            ttl = self.config.ttl
            if ttl is None:
                await anyio.sleep(1.0)
                continue
            deadline = min((e.next_deadline for _, e in self._expiring()), default=math.inf)
            await anyio.sleep(min(1.0, ttl / 4, max(0.0, deadline - self.clock())))
            await self.expire()

    def _expiring(self) -> list[tuple[Shard, Expiry]]:
        return [(s, s.expiry) for s in self.shards.values() if s.expiry is not None]

    async def expire(self, now: float | None = None) -> int:
        """Remove every vector whose deadline is ``now`` (default: the clock) or
        earlier, in worker threads. Returns how many."""
        done = 0
        for shard, expiry in self._expiring():
            if (now if now is not None else self.clock()) >= expiry.next_deadline:
                done += await anyio.to_thread.run_sync(shard.expire, now)
        return done

    async def _maintenance_loop(self) -> None:
        while True:
            await self._maintenance_wanted.wait()
            self._maintenance_wanted = anyio.Event()
            await self.retrainer.reencode()
            await self.merge()

    async def _drift_loop(self) -> None:
        while True:
            await self._drift_wanted.wait()
            self._drift_wanted = anyio.Event()
            await self.retrainer.check()

    async def maintain(self, *, final: bool = False) -> None:
        """Check the drift (and retrain past the threshold), re-encode segments of
        older codec generations, and merge sealed segments. ``final``: the stream
        ends, so check the drift now whatever arrived since the last look."""
        await self.retrainer.check(final=final)
        await self.retrainer.reencode()
        await self.merge()

    async def compact(self) -> int:
        """Rebuild segments of indexes that cannot remove ids (HNSW) whose replaced
        and deleted entries pile up, in worker threads. Returns how many were."""
        rebuilt = 0
        for shard in list(self.shards.values()):
            rebuilt += await anyio.to_thread.run_sync(shard.compact)
        self.stats.compactions += rebuilt
        return rebuilt

    async def merge(self) -> int:
        """Merge sealed segments by the tiered policy in every shard, in worker
        threads: batches for a shard whose segments are being read queue meanwhile
        (as during a snapshot). Returns how many merges were done."""
        if self.merge_factor < 2:
            return 0
        done = 0
        # No snapshot or hand-over while segments are swapped.
        async with self.snapshotter.lock:
            token = self.config.token
            for shard in list(self.shards.values()):
                while (group := shard.merge_plan(self.merge_factor, token)) is not None:
                    self.snapshotter.store._step(f"merge:{shard.name}:start")
                    merged = await self._merge_one(shard, group)
                    if not merged:
                        break
                    self.snapshotter.store._step(f"merge:{shard.name}:swapped")
                    done += 1
        self.stats.merges += done
        return done

    async def _merge_one(self, shard: Shard, group: list[Segment]) -> bool:
        async def run() -> bool:
            return await anyio.to_thread.run_sync(shard.merge, group)

        if group[0].removable:
            # Removals mutate these segments: hold the shard's batches back meanwhile.
            return await self.gate.capture(shard, run)
        return await run()
