"""How a FaissSink writes snapshots while ingestion goes on.

Every ``snapshot_every`` seconds (and at the end, and when handing shards over) the
changed segments of every shard are written into the content-addressed store while
new batches for that shard queue in the :class:`~sinks.gate.WriteGate`; then one
manifest names every shard with its position and ``CURRENT`` moves to it
(:mod:`sinks.store`). Listeners (the Kafka source's offset commit) hear of each
durable snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import msgspec

from sinks.config import IndexConfig
from sinks.gate import WriteGate
from sinks.manifest import ManifestBody, ShardManifest
from sinks.ownership import Ownership
from sinks.shard import Capture, Shard
from sinks.shared import current_manifests, latest_epochs, retire_chains
from sinks.store import SnapshotStore
from streams.errors import SnapshotError
from streams.histogram import Histogram
from streams.records import Positions
from streams.statistics import SinkStatistics

__all__ = ["SnapshotListener", "Snapshotter"]

log = logging.getLogger("embedstream.sink")

SnapshotListener = Callable[[int, Positions], Awaitable[None]]


class Snapshotter:
    """Writes snapshots of a sink's shards into its store.

    Args:
        store: the sink's (writable) snapshot store.
        config: the index configuration (written into every manifest).
        shards: the sink's shards, shared with it (read here, never replaced).
        gate: queues a shard's batches while it is captured.
        ownership: which shards are this worker's, and the ones it handed over.
        stats: the sink's counters.
        durations: how long each snapshot took.
        keep: manifests kept; older ones and objects only they use are deleted.
        gc_grace: in a shared directory, seconds unreferenced objects are kept.
    """

    def __init__(
        self,
        store: SnapshotStore,
        config: IndexConfig,
        shards: dict[str, Shard],
        gate: WriteGate,
        ownership: Ownership,
        stats: SinkStatistics,
        durations: Histogram,
        *,
        keep: int,
        gc_grace: float,
    ) -> None:
        self.store = store
        self.config = config
        self.shards = shards
        self.gate = gate
        self.ownership = ownership
        self.stats = stats
        self.durations = durations
        self.keep = keep
        self.gc_grace = gc_grace
        self.listeners: list[SnapshotListener] = []
        # Held while a snapshot is written, and by claims and releases (which must
        # not change the shards under a snapshot).
        self.lock = anyio.Lock()
        self._listening = anyio.Lock()

    def __repr__(self) -> str:
        return f"<Snapshotter {self.store.root} seq={self.stats.last_snapshot_seq}>"

    @property
    def worker(self) -> str | None:
        return self.ownership.worker

    async def loop(self, every: float, compact: Callable[[], Awaitable[int]]) -> None:
        """Snapshot every ``every`` seconds, then compact (runs until cancelled)."""
        while True:
            await anyio.sleep(every)
            try:
                await self.snapshot()
            except SnapshotError as exc:
                # A full disk or a failing device must not stop ingestion: the
                # previous snapshot stays in force, no offset is committed, and the
                # next interval tries again.
                self.stats.snapshot_failures += 1
                log.warning("%s (will retry in %ss)", exc, every)
                continue
            await compact()

    async def snapshot(self) -> int | None:
        """Write a snapshot of every shard now (only changed shards cost I/O).

        Returns the new seq, or ``None`` when nothing changed since the last one.

        Raises:
            SnapshotError: the snapshot could not be written; the previous one stays
                in force.
        """
        async with self.lock:
            if self.config.dim is None:
                return None
            if not any(s.dirty for s in self.shards.values()) and self.config.saved:
                return None
            started = time.perf_counter()
            try:
                seq, written = await self._write()
            except (OSError, RuntimeError) as exc:
                raise SnapshotError(
                    f"{self.store.root}: writing a snapshot failed ({exc}); the previous "
                    "snapshot is intact"
                ) from exc
            seconds = time.perf_counter() - started
            self.durations.observe([seconds])
            st = self.stats
            st.snapshots += 1
            st.last_snapshot_seq = seq
            st.last_snapshot_time = time.time()
            st.last_snapshot_seconds = seconds
            st.last_snapshot_bytes = written
            st.snapshot_bytes_total += written
            positions = self.saved_positions()
        # Listeners (the Kafka source commits offsets) run after the lock is let go:
        # a commit may wait for a consumer-group rebalance, whose hand-over claims or
        # releases shards under this lock. Their own lock keeps them one at a time.
        async with self._listening:
            for fn in self.listeners:
                await fn(seq, positions)
            self.store._step("snapshot:listeners-done")
        return seq

    async def _capture(self, shard: Shard) -> tuple[Capture, ShardManifest]:
        """Write ``shard``'s changed segments, key map and float map; its entry."""
        store = self.store
        cap = await self.gate.capture(shard, lambda: anyio.to_thread.run_sync(shard.capture, store))
        keys = floats_map = expiry = None
        if cap.keys_bytes:
            keys = await anyio.to_thread.run_sync(store.put_object, cap.keys_bytes)
        if cap.expiry_bytes is not None:
            expiry = await anyio.to_thread.run_sync(store.put_object, cap.expiry_bytes)
        if cap.float_map is not None:
            floats_map = await anyio.to_thread.run_sync(store.put_object, cap.float_map)
        entry = ShardManifest(
            name=shard.name,
            ntotal=cap.ntotal,
            position=cap.position,
            segments=cap.segments,
            epoch=self.ownership.epoch(shard.name),
            keys=keys,
            floats_map=floats_map,
            float_rows=cap.float_rows if floats_map is not None else 0,
            expiry=expiry,
            expired=cap.expired,
        )
        return cap, entry

    async def _write(self) -> tuple[int, int]:
        store = self.store
        written = await anyio.to_thread.run_sync(self.config.save, store)
        entries: list[ShardManifest] = []
        saved: list[tuple[Shard, Capture, ShardManifest]] = []
        for name in sorted(self.shards):
            shard = self.shards[name]
            if shard.dirty:
                cap, entry = await self._capture(shard)
                written += cap.nbytes + len(cap.keys_bytes or b"") + len(cap.expiry_bytes or b"")
                saved.append((shard, cap, entry))
            else:
                assert shard.saved_entry is not None
                entry = shard.saved_entry
            entries.append(entry)
        # The other workers' current manifests, read once for both the hand-over
        # bookkeeping and the retirement of departed workers' chains.
        worker = self.worker
        others = None
        if worker is not None:
            others = await anyio.to_thread.run_sync(current_manifests, store.root, (worker,))
        if self.ownership.handed_off:
            newer = await anyio.to_thread.run_sync(latest_epochs, store.root, worker, others)
            self.ownership.superseded(newer)
            entries.extend(self.ownership.handed_off.values())
        manifest = ManifestBody(
            **msgspec.structs.asdict(self.config.manifest()),
            worker=worker,
            ntotal=sum(e.ntotal for e in entries),
            shards=entries,
        )

        def commit() -> int:
            seq = store.commit(manifest)
            store.prune(self.keep, grace=self.gc_grace)
            if worker is not None:
                current = {**(others or {}), worker: manifest}
                retire_chains(store.root, worker, grace=self.gc_grace, manifests=current)
            return seq

        seq = await anyio.to_thread.run_sync(commit)
        for shard, cap, entry in saved:
            shard.saved(cap, entry, seq)
        return seq, written

    def saved_positions(self) -> Positions:
        """Per shard, the position held by the last durable snapshot."""
        return {
            name: dict(s.saved_entry.position)
            for name, s in self.shards.items()
            if s.saved_entry is not None
        }
