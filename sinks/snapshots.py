"""How a FaissSink writes snapshots while ingestion goes on.

Every ``snapshot_every`` seconds (and at the end, and when handing shards over) the
changed segments of every shard are written into the content-addressed store while
new batches for that shard queue in memory; then one manifest names every shard with
its position and ``CURRENT`` moves to it (:mod:`sinks.store`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import faiss

from sinks.ownership import Ownership
from sinks.shard import Capture, Shard
from sinks.shared import current_manifests, latest_epochs, retire_chains
from sinks.store import SnapshotStore
from streams.errors import SnapshotError
from streams.histogram import Histogram
from streams.records import Batch, Positions

__all__ = ["Snapshots"]

log = logging.getLogger("embedstream.sink")

SnapshotListener = Callable[[int, Positions], Awaitable[None]]


class Snapshots:
    """The part of :class:`sinks.FaissSink` that writes snapshots (a mixin: it works
    on the sink's own state)."""

    path: str
    worker: str | None
    keep: int
    gc_grace: float
    snapshot_every: float | None
    ownership: Ownership
    store: SnapshotStore | None
    shards: dict[str, Shard]
    dim: int | None
    factory: str
    metric: str
    normalize_queries: bool
    rerank: int
    codec: Any
    snapshot_durations: Histogram
    _template: Any
    _template_object: str | None
    _codec_object: str | None
    _snapshot_lock: anyio.Lock
    _listeners: list[SnapshotListener]
    _loop_scope: anyio.CancelScope | None
    _stats: dict[str, Any]

    if TYPE_CHECKING:

        async def compact(self) -> int: ...

        async def _apply_now(self, shard: Shard, item: Batch) -> None: ...

    async def _snapshot_loop(self) -> None:
        assert self.snapshot_every
        with anyio.CancelScope() as scope:
            self._loop_scope = scope
            while True:
                await anyio.sleep(self.snapshot_every)
                try:
                    await self.snapshot()
                except SnapshotError as exc:
                    # A full disk or a failing device must not stop ingestion: the
                    # previous snapshot stays in force, no offset is committed, and
                    # the next interval tries again.
                    self._stats["snapshot_failures"] += 1
                    log.warning("%s (will retry in %ss)", exc, self.snapshot_every)
                    continue
                await self.compact()

    async def _capture(self, shard: Shard, store: SnapshotStore) -> Capture:
        """Write ``shard`` into ``store`` while its new batches wait in a queue, then
        apply them (one at a time, so ingestion can keep queueing meanwhile)."""
        async with shard.gate:
            shard.capturing = shard.draining = True
            shard.drained = anyio.Event()
        try:
            return await anyio.to_thread.run_sync(shard.capture, store)
        finally:
            with anyio.CancelScope(shield=True):
                async with shard.gate:
                    shard.capturing = False
                # Apply the queue in order; new batches keep queueing behind it
                # (``draining``), so a write never waits for an apply here.
                while True:
                    async with shard.gate:
                        if not shard.deferred:
                            shard.deferred_bytes = 0
                            shard.draining = False
                            shard.drained.set()
                            break
                        queued = shard.deferred.pop(0)
                        shard.deferred_bytes -= queued.nbytes
                    await self._apply_now(shard, queued)

    # -- snapshots -------------------------------------------------------------------

    async def snapshot(self) -> int | None:
        """Write a snapshot of every shard now (only changed shards cost I/O).

        Returns the new seq, or ``None`` when nothing changed since the last one.

        Raises:
            SnapshotError: the snapshot could not be written; the previous one stays
                in force.
        """
        async with self._snapshot_lock:
            store = self.store
            if store is None or self.dim is None:
                return None
            saved_config = self._template_object or self._codec_object
            if not any(s.dirty for s in self.shards.values()) and saved_config:
                return None
            started = time.perf_counter()
            try:
                seq, written = await self._write_snapshot(store)
            except (OSError, RuntimeError) as exc:
                raise SnapshotError(
                    f"{self.path}: writing a snapshot failed ({exc}); the previous snapshot "
                    "is intact"
                ) from exc
            seconds = time.perf_counter() - started
            self.snapshot_durations.observe([seconds])
            st = self._stats
            st.update(
                snapshots=st["snapshots"] + 1,
                last_snapshot_seq=seq,
                last_snapshot_time=time.time(),
                last_snapshot_seconds=seconds,
                last_snapshot_bytes=written,
                snapshot_bytes_total=st["snapshot_bytes_total"] + written,
            )
            positions = self.saved_positions()
            for fn in self._listeners:
                await fn(seq, positions)
            store._step("snapshot:listeners-done")
            return seq

    async def _write_snapshot(self, store: SnapshotStore) -> tuple[int, int]:
        written = 0
        entries: list[dict[str, Any]] = []
        saved: list[tuple[Shard, Capture, dict[str, Any]]] = []
        if self.codec is not None and self._codec_object is None:
            state = self.codec.state()
            self._codec_object = await anyio.to_thread.run_sync(store.put_object, state)
            written += len(state)
        if self._template_object is None and self._template is not None and self.codec is None:
            data = faiss.serialize_index(self._template)
            self._template_object = await anyio.to_thread.run_sync(store.put_object, data)
            written += len(data)
        for name in sorted(self.shards):
            shard = self.shards[name]
            if shard.dirty:
                cap = await self._capture(shard, store)
                keys = floats_map = None
                if cap.keys_bytes:
                    keys = await anyio.to_thread.run_sync(store.put_object, cap.keys_bytes)
                if cap.float_map is not None:
                    floats_map = await anyio.to_thread.run_sync(store.put_object, cap.float_map)
                written += cap.nbytes + len(cap.keys_bytes or b"")
                entry = {
                    "name": name,
                    "epoch": self.ownership.epoch(name),
                    "segments": cap.segments,
                    "keys": keys,
                    "ntotal": cap.ntotal,
                    "position": cap.position,
                }
                if floats_map is not None:
                    entry.update(floats_map=floats_map, float_rows=cap.float_rows)
                saved.append((shard, cap, entry))
            else:
                assert shard.saved_entry is not None
                entry = shard.saved_entry
            entries.append(entry)
        # The other workers' current manifests, read once for both the hand-over
        # bookkeeping and the retirement of departed workers' chains.
        others = None
        if self.worker is not None:
            others = await anyio.to_thread.run_sync(current_manifests, self.path, self.worker)
        if self.ownership.handed_off:
            newer = await anyio.to_thread.run_sync(latest_epochs, self.path, self.worker, others)
            self.ownership.superseded(newer)
            entries.extend(self.ownership.handed_off.values())
        manifest = {
            "worker": self.worker,
            "dim": self.dim,
            "metric": self.metric,
            "factory": self.factory,
            "normalize_queries": self.normalize_queries,
            "template": self._template_object,
            "quantize": self.codec.kind if self.codec is not None else None,
            "codec": self._codec_object,
            "binary": bool(self.codec is not None and self.codec.binary),
            "rerank": self.rerank,
            "ntotal": sum(int(e["ntotal"]) for e in entries),
            "shards": entries,
        }

        def commit() -> int:
            seq = store.commit(manifest)
            store.prune(self.keep, grace=self.gc_grace)
            if self.worker is not None:
                current = {**(others or {}), self.worker: manifest}
                retire_chains(self.path, self.worker, grace=self.gc_grace, manifests=current)
            return seq

        seq = await anyio.to_thread.run_sync(commit)
        for shard, cap, entry in saved:
            shard.saved(cap, entry)
        return seq, written

    def saved_positions(self) -> Positions:
        """Per shard, the position held by the last durable snapshot."""
        return {
            name: dict(s.saved_entry["position"])
            for name, s in self.shards.items()
            if s.saved_entry is not None
        }
