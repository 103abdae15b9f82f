"""How a FaissSink's shards come from the directory and move between workers.

Taking shards over from what the directory holds (on open, and on
:meth:`HandOver.claim` when a consumer group assigns partitions) and handing them
over (:meth:`HandOver.release`) when several workers share one directory; see
:mod:`sinks.shared` for the directory's side and :mod:`sinks.ownership` for the
bookkeeping.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
import msgspec

from sinks.config import IndexConfig
from sinks.gate import WriteGate
from sinks.ownership import Ownership
from sinks.search import load_shard
from sinks.shard import Shard
from sinks.shared import Combined, combine
from sinks.snapshots import Snapshotter
from streams.errors import ConfigError, SnapshotError
from streams.records import Positions
from streams.statistics import SinkStatistics

__all__ = ["HandOver"]

log = logging.getLogger("embedstream.sink")


class HandOver:
    """Loads shards from the sink's directory and hands them to other workers.

    Args:
        snapshotter: the sink's snapshotter (its store, and its lock, which claims
            and releases hold so that no snapshot sees shards change).
        config: the index configuration, adopted from the directory.
        shards: the sink's shards, shared with it.
        gate: forgets the gates of shards handed over.
        ownership: which shards this worker holds.
        stats: the sink's counters.
        prepare: called with each shard loaded from disk, to make it writable.
        drop_training: forgets buffered rows of partitions handed over (the next
            owner reads them again).
        release_timeout: seconds :meth:`release` waits for in-flight records.
    """

    def __init__(
        self,
        snapshotter: Snapshotter,
        config: IndexConfig,
        shards: dict[str, Shard],
        gate: WriteGate,
        ownership: Ownership,
        stats: SinkStatistics,
        *,
        prepare: Callable[[Shard], None],
        drop_training: Callable[[Sequence[str]], None],
        release_timeout: float,
    ) -> None:
        self.snapshotter = snapshotter
        self.config = config
        self.shards = shards
        self.gate = gate
        self.ownership = ownership
        self.stats = stats
        self.prepare = prepare
        self.drop_training = drop_training
        self.release_timeout = release_timeout

    def __repr__(self) -> str:
        return f"<HandOver {self.ownership!r}>"

    def adopt(self, combined: Combined) -> None:
        """Take the index configuration the directory holds."""
        self.config.adopt(combined.config, self.snapshotter.store)

    async def take(self, combined: Combined | None, names: Sequence[str]) -> Positions:
        """Load ``names`` from the directory's newest state and own them; returns
        where each resumes (a shard the directory does not hold yet is missing)."""
        store = self.snapshotter.store
        positions: Positions = {}
        config = combined.config if combined is not None else None
        for name in names:
            state = combined.shards.get(name) if combined is not None else None
            self.ownership.claimed(name, state)
            if state is None:
                continue
            assert config is not None
            codec = state.loaded.manifest.codec
            if self.config.codec_object is not None and codec != self.config.codec_object:
                raise ConfigError(
                    f"shard {name} of {self.config.path} holds codes of another trained codec "
                    "than this worker's (workers started together on an empty directory each "
                    "trained one); start one worker until its first snapshot, then the others"
                )
            shard = self.ownership.reusable(name, state)
            if shard is None:
                shard = await anyio.to_thread.run_sync(load_shard, store, state.entry, config)
                shard.saved_seq = state.loaded.seq
                self.prepare(shard)
            shard.saved_entry = msgspec.structs.replace(
                state.entry, epoch=self.ownership.epochs[name]
            )
            self.shards[name] = shard
            positions[name] = dict(shard.position)
            self.stats.claimed_shards += 1
        return positions

    async def claim(self, partitions: Sequence[str]) -> Positions:
        """Take over ``partitions``: load each one's newest shard from the directory
        (whichever worker wrote it) and return the positions to resume from."""
        async with self.snapshotter.lock:
            root = self.snapshotter.store.root
            combined = await anyio.to_thread.run_sync(combine, root, partitions)
            if combined is not None:
                self.adopt(combined)
            positions = await self.take(combined, partitions)
            # Handed-over shards not given back stay with their new owners.
            self.ownership.released.clear()
            return positions

    async def release(
        self,
        partitions: Sequence[str],
        upto: Positions,
        snapshot: Callable[[], Awaitable[int | None]],
    ) -> None:
        """Hand ``partitions`` over: wait until the records the source emitted for
        them (up to ``upto``) have arrived, ``snapshot()``, and drop their shards.

        After ``release_timeout`` seconds the shards are handed over as of their
        last snapshot; the next owner reads the rest again, so nothing is lost or
        doubled either way.
        """
        own = self.ownership
        names = [n for n in partitions if own.owned is not None and n in own.owned]
        if not names:
            return
        with anyio.move_on_after(self.release_timeout) as scope:
            await own.wait_arrived({n: upto.get(n, {}) for n in names})
            self.drop_training(names)
            try:
                await snapshot()
            except SnapshotError as exc:
                log.warning("handing over %s as of its last snapshot: %s", names, exc)
        if scope.cancelled_caught:
            self.stats.release_timeouts += 1
            log.warning(
                "records of %s did not arrive within %ss; handing over as of the last snapshot",
                names,
                self.release_timeout,
            )
        async with self.snapshotter.lock:
            for name in names:
                own.release(name, self.shards.pop(name, None))
                self.gate.forget(name)
                self.stats.released_shards += 1
