"""FaissSink: incrementally updated, searchable, snapshotted FAISS indexes.

One shard per source partition (see :mod:`sinks.shard`). Adds run in worker threads;
searches run concurrently under each shard's readers-writer lock. Snapshots go to a
content-addressed store (:mod:`sinks.store`) every ``snapshot_every`` seconds and at
the end of a run, each holding every shard together with its partition position, so
that a restart resumes exactly after what the index holds.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import anyio
import faiss
import numpy as np
import numpy.typing as npt
from anyio.abc import TaskGroup

from sinks.floats import FloatStore, floats_path
from sinks.handover import HandOver
from sinks.ownership import Ownership
from sinks.search import SearchResults, prepare_queries, search_shards
from sinks.segment import Segment, faiss_message, make_index
from sinks.shard import DEFAULT_SEGMENT_BYTES, DEFAULT_SEGMENT_SIZE, Shard
from sinks.shared import combine
from sinks.snapshots import SnapshotListener, Snapshots
from sinks.store import DEFAULT_GRACE_SECONDS, SnapshotStore
from streams.errors import ConfigError
from streams.histogram import DEFAULT_SECONDS_BUCKETS, Histogram
from streams.records import Batch, Positions
from streams.sink import Sink

__all__ = ["FaissSink"]

log = logging.getLogger("embedstream.sink")

DEFAULT_FACTORY = "Flat"
DEFAULT_METRIC = "ip"

WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class FaissSink(HandOver, Snapshots, Sink[Batch]):
    """Writes batches into FAISS shards in a snapshot directory.

    Args:
        path: the snapshot directory (created when missing).
        factory: any ``faiss.index_factory`` string; default ``"Flat"``, or what the
            directory already holds.
        metric: ``"ip"`` (inner product; cosine on normalised vectors) or ``"l2"``;
            default ``"ip"``, or what the directory already holds.
        snapshot_every: seconds between periodic snapshots; ``None`` or 0 snapshots
            only at the end of the run. Shorter means less to replay after a crash
            and more frequent I/O; unchanged shards cost nothing.
        keep: how many snapshots to keep; older ones and the objects only they use
            are deleted.
        normalize_queries: record that vectors are L2-normalised, so searches
            normalise their queries too.
        train_size: for index types that need training (IVF, PQ), how many vectors
            to buffer before training once; every shard clones the trained index.
        max_deferred_bytes: while a snapshot writes a shard, up to this many bytes
            of new batches for it wait in memory instead of stalling ingestion;
            beyond it, ingestion waits for the snapshot (backpressure).
        codec: the :class:`operators.quantize.Codec` of a ``quantize`` stage
            before this sink: shards then hold its codes (``factory`` is ignored),
            and the trained codec is kept in snapshots.
        rerank: with a codec, keep the full-precision vectors on disk and re-score
            this many candidates per shard exactly at search time.
        segment_size: vectors per segment of a shard; appends go to a small active
            segment, so adds stay short and snapshots rewrite only changed segments.
        segment_bytes: flat-code indexes (Flat, SQ, PQ) also seal a segment at this
            many bytes of codes, which bounds the extra memory of FAISS growing it.
        worker: this process's name when several processes share ``path`` (Kafka
            consumer groups): it then writes its own manifest chain, holds only the
            shards of the partitions it is given (:meth:`claim`) and hands them
            over when they are taken away (:meth:`release`). ``None``: the only
            writer, holding every shard.
        release_timeout: seconds :meth:`release` waits for a partition's in-flight
            records before handing its shard over as of the last snapshot.
        gc_grace: in a directory shared by workers, unreferenced objects younger than
            this (seconds) are kept (another worker may be about to commit them),
            and chains of workers gone this long are removed.
        name: the stage name.

    Raises:
        ConfigError: the directory holds an index of another factory or metric.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        factory: str | None = None,
        metric: str | None = None,
        snapshot_every: float | None = 60.0,
        keep: int = 3,
        normalize_queries: bool = False,
        train_size: int = 50_000,
        max_deferred_bytes: int = 256 << 20,
        codec: Any = None,
        rerank: int = 0,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        worker: str | None = None,
        release_timeout: float = 20.0,
        gc_grace: float = DEFAULT_GRACE_SECONDS,
        name: str = "faiss",
    ) -> None:
        if metric is not None and metric not in ("ip", "l2"):
            raise ConfigError(f"unknown metric {metric!r}: use 'ip' or 'l2'")
        if keep < 1:
            raise ConfigError(f"keep must be at least 1, got {keep}")
        self.path = str(path)
        self.name = name
        self._factory_arg = factory
        self._metric_arg = metric
        self.factory = factory or DEFAULT_FACTORY
        self.metric = metric or DEFAULT_METRIC
        self.snapshot_every = snapshot_every or None
        self.keep = keep
        self.normalize_queries = normalize_queries
        self.train_size = max(1, train_size)
        self.max_deferred_bytes = max_deferred_bytes
        self.segment_size = max(1, segment_size)
        self.segment_bytes = segment_bytes
        self.codec = codec
        self.rerank = rerank if codec is not None else 0
        self.worker = worker
        self.release_timeout = release_timeout
        self.gc_grace = gc_grace
        self.ownership = Ownership(worker)
        if codec is not None:
            self.factory = {"sq8": "SQ8", "binary": "BFlat"}.get(codec.kind, f"PQ{codec.pq_m}x8")
        self._codec_object: str | None = None
        self.dim: int | None = None
        self.shards: dict[str, Shard] = {}
        self.store: SnapshotStore | None = None
        self._template: faiss.Index | None = None
        self._template_object: str | None = None
        self._training: list[Batch] = []
        self._training_rows = 0
        self._snapshot_lock = anyio.Lock()
        self._loop_scope: anyio.CancelScope | None = None
        self._listeners: list[SnapshotListener] = []
        self.freshness = Histogram(DEFAULT_SECONDS_BUCKETS)
        self._stats: dict[str, Any] = {
            "batches": 0,
            "records": 0,
            "snapshots": 0,
            "last_snapshot_seq": None,
            "last_snapshot_time": None,
            "last_snapshot_seconds": None,
            "last_snapshot_bytes": 0,
            "snapshot_bytes_total": 0,
            "deferred_batches": 0,
            "compactions": 0,
            "snapshot_failures": 0,
            "claimed_shards": 0,
            "released_shards": 0,
            "release_timeouts": 0,
            "unowned_batches": 0,
        }
        # How long each write() took: the ingestion stall, including snapshots.
        self.write_seconds = Histogram(WRITE_BUCKETS)
        self.snapshot_durations = Histogram(DEFAULT_SECONDS_BUCKETS)

    def __repr__(self) -> str:
        return (
            f"<FaissSink {self.path!r} {self.factory} {self.metric} dim={self.dim}"
            f" | shards {len(self.shards)}, ntotal {self.ntotal}>"
        )

    @property
    def ntotal(self) -> int:
        """Vectors held over all shards."""
        return sum(s.ntotal for s in self.shards.values())

    def add_snapshot_listener(self, fn: SnapshotListener) -> None:
        """Await ``fn(seq, positions)`` after every durable snapshot (e.g. to commit
        Kafka offsets)."""
        self._listeners.append(fn)

    # -- lifecycle -------------------------------------------------------------------

    async def open(self, task_group: TaskGroup) -> Positions:
        self.store = SnapshotStore(self.path, chain=self.worker)
        # A worker needs only the configuration now; shards are verified when claimed.
        only = None if self.worker is None else ()
        combined = await anyio.to_thread.run_sync(combine, self.path, only)
        positions: Positions = {}
        if combined is not None:
            self._adopt(combined)
            for fb in combined.fallbacks:
                log.warning(
                    "%s: fell back past snapshot %s of %s: %s",
                    self.path,
                    fb["seq"],
                    fb["worker"] or "-",
                    fb["reason"],
                )
            if self.worker is None:
                # The only writer: every shard is ours.
                positions = await self._take(combined, sorted(combined.shards))
        if self.snapshot_every:
            task_group.start_soon(self._snapshot_loop)
        return positions

    async def compact(self) -> int:
        """Rebuild segments of indexes that cannot remove ids (HNSW) whose replaced
        and deleted entries pile up; in a worker thread while ingestion goes on.

        Returns how many segments were rebuilt.
        """
        rebuilt = 0
        for shard in list(self.shards.values()):
            rebuilt += await anyio.to_thread.run_sync(shard.compact)
        self._stats["compactions"] += rebuilt
        return rebuilt

    async def close(self, *, ok: bool) -> None:
        if self._loop_scope is not None:
            self._loop_scope.cancel()
        try:
            if ok:
                if self._training:
                    await self._train_and_apply()
                await self.snapshot()
        finally:
            if self.store is not None:
                # Another writer may take the directory from here on.
                self.store.close()

    # -- writing ---------------------------------------------------------------------

    async def write(self, item: Batch) -> None:
        own = self.ownership
        if own.owned is not None:
            if item.partition not in own.owned:
                # Its partition was handed over: the new owner reads these records
                # again from the position our last snapshot of the shard holds.
                self._stats["unowned_batches"] += 1
                return
            own.arrive(item.partition, item.position)
        if len(item) == 0:
            if item.partition in self.shards and item.position:
                # Every record of it was rejected: still move the position past them.
                await self._apply(item)
            return
        if item.dim == 0 and item.deleted is not None and item.deleted.all():
            # Deletes that arrived before any vector: nothing to delete yet, but
            # the position must still advance.
            if item.partition in self.shards:
                await self._apply(item)
            return
        if self.codec is not None:
            await self._write_codes(item)
            return
        if self.dim is None:
            self.dim = item.dim
        elif item.dim != self.dim:
            raise ConfigError(
                f"a batch of partition {item.partition!r} has dimension {item.dim}; the "
                f"index at {self.path} has {self.dim}"
            )
        if self._template is None:
            self._template = make_index(self.dim, self.factory, self.metric)
        if not self._template.is_trained:
            self._training.append(item)
            self._training_rows += len(item)
            if self._training_rows >= self.train_size:
                await self._train_and_apply()
            return
        await self._apply(item)

    async def _write_codes(self, item: Batch) -> None:
        codec = self.codec
        if item.vectors.dtype != np.uint8 or not codec.is_trained:
            raise ConfigError(
                f"the sink at {self.path} has a codec, but a batch of partition "
                f"{item.partition!r} holds {item.vectors.dtype} vectors: put quantize(codec) "
                "right before the sink"
            )
        if item.vectors.shape[1] != codec.code_size:
            raise ConfigError(
                f"a batch of partition {item.partition!r} has {item.vectors.shape[1]}-byte codes;"
                f" the codec makes {codec.code_size}"
            )
        if self.rerank and item.floats is None:
            raise ConfigError("rerank needs quantize(codec, keep_floats=True)")
        if self.dim is None:
            self.dim = codec.dim
        if self._template is None:
            self._template = codec.empty_index()
        await self._apply(item)

    def _new_index(self) -> Any:
        """A new empty segment index: a clone of the (trained) template."""
        if self.codec is not None:
            return self.codec.empty_index()
        assert self._template is not None
        return faiss.clone_index(self._template)

    def _new_shard(self, name: str) -> Shard:
        assert self.dim is not None
        floats = FloatStore(floats_path(self.path, name), self.dim) if self.rerank else None
        segment = Segment(self._new_index(), codes=self.codec is not None)
        return Shard(
            name,
            [segment],
            self._new_index,
            floats=floats,
            segment_size=self.segment_size,
            segment_bytes=self.segment_bytes,
        )

    async def _apply(self, item: Batch) -> None:
        shard = self.shards.get(item.partition)
        if shard is None:
            shard = self._new_shard(item.partition)
            self.shards[item.partition] = shard
        started = time.perf_counter()
        while True:
            async with shard.gate:
                if not shard.capturing and not shard.draining:
                    await self._apply_now(shard, item)
                    break
                # A snapshot is writing this shard: queue the batch rather than
                # stall ingestion, up to a memory bound.
                if shard.deferred_bytes + item.nbytes <= self.max_deferred_bytes:
                    shard.deferred.append(item)
                    shard.deferred_bytes += item.nbytes
                    self._stats["deferred_batches"] += 1
                    break
                drained = shard.drained
            await drained.wait()
        self.write_seconds.observe([time.perf_counter() - started])

    async def _apply_now(self, shard: Shard, item: Batch) -> None:
        await anyio.to_thread.run_sync(shard.apply, item)
        self.freshness.observe(shard.searchable_at - item.timestamps)
        self._stats["batches"] += 1
        self._stats["records"] += len(item)

    async def _train_and_apply(self) -> None:
        assert self._template is not None
        batches, self._training, self._training_rows = self._training, [], 0
        sample = np.concatenate([b.vectors[: self.train_size] for b in batches])[: self.train_size]
        template = self._template

        def train() -> None:
            try:
                template.train(np.ascontiguousarray(sample, dtype=np.float32))
            except RuntimeError as exc:
                raise ConfigError(
                    f"training {self.factory!r} on {len(sample)} vectors failed: "
                    f"{faiss_message(exc)}; give more training vectors "
                    "(train_size / --train-size) or a smaller index"
                ) from None

        await anyio.to_thread.run_sync(train)
        for b in batches:
            await self._apply(b)

    # -- searching -------------------------------------------------------------------

    async def search(self, queries: npt.ArrayLike, k: int = 10) -> SearchResults:
        """Top-``k`` over all shards, while ingestion goes on.

        Never sees half of a batch. Queries are normalised when the sink was told
        vectors are (``normalize_queries``).

        Raises:
            ConfigError: nothing was ingested yet, or the queries' dimension differs.
        """
        if self.dim is None:
            raise ConfigError(f"{self.path}: the index is empty; nothing to search yet")
        q = prepare_queries(queries, self.dim, self.normalize_queries)
        return await anyio.to_thread.run_sync(
            search_shards, list(self.shards.values()), q, k, self.metric, self.rerank
        )

    @property
    def snapshotting(self) -> bool:
        """True while a snapshot is being written."""
        return self._snapshot_lock.locked()

    def searchable_positions(self) -> Positions:
        """Per shard, the position up to which records are searchable."""
        return {name: dict(s.position) for name, s in self.shards.items()}

    def histograms(self) -> dict[str, Histogram]:
        return {
            "freshness_seconds": self.freshness,
            "snapshot_duration_seconds": self.snapshot_durations,
            "write_seconds": self.write_seconds,
        }

    def statistics(self) -> dict[str, Any]:
        return {
            **self._stats,
            "ntotal": self.ntotal,
            "shards": {
                n: {"ntotal": s.ntotal, "position": dict(s.position)}
                for n, s in self.shards.items()
            },
            "freshness_p50_seconds": self.freshness.quantile(0.5),
            "freshness_p99_seconds": self.freshness.quantile(0.99),
        }
