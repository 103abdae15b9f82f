"""FaissSink: incrementally updated, searchable, snapshotted FAISS indexes.

A front object composed of parts, each owning its own state:

- :class:`~sinks.config.IndexConfig`: what kind of index (dimension, factory,
  metric, trained template or codec), adopted from the directory;
- the shards (:class:`~sinks.shard.Shard`, thread-side index structures: segments,
  id sets, readers-writer lock), one per source partition;
- :class:`~sinks.gate.WriteGate`: the event-loop side, applying batches in worker
  threads and queueing them while a snapshot captures their shard;
- :class:`~sinks.snapshots.Snapshotter`: periodic, atomic snapshots with the
  positions;
- :class:`~sinks.handover.HandOver`: shards loaded from the directory and moved
  between workers;
- :class:`~sinks.upkeep.Upkeep`: background expiry, drift checks and retraining,
  re-encoding, merges and compaction.

Following one batch: :meth:`FaissSink.write` checks ownership and the dimension,
buffers it while an index trains, then ``WriteGate.apply`` runs ``Shard.apply`` in a
worker thread. Searches run concurrently under each shard's read lock.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
from anyio.abc import TaskGroup

from sinks.config import DEFAULT_FACTORY, DEFAULT_METRIC, IndexConfig
from sinks.filters import Filter, parse_filter
from sinks.floats import FloatStore, floats_path
from sinks.freshness import After, SearchTimeout, check_after, position_value, reached, unreached
from sinks.gate import WriteGate
from sinks.handover import HandOver
from sinks.merge import DEFAULT_MERGE_FACTOR
from sinks.ownership import Ownership
from sinks.params import parse_params
from sinks.payloads import parse_payload_index
from sinks.retrain import DEFAULT_RETRAIN_THRESHOLD, Retrainer
from sinks.search import SearchResults, prepare_queries, search_shards
from sinks.segment import Segment, faiss_message
from sinks.shard import DEFAULT_SEGMENT_BYTES, DEFAULT_SEGMENT_SIZE, Shard
from sinks.shared import combine
from sinks.snapshots import SnapshotListener, Snapshotter
from sinks.store import DEFAULT_GRACE_SECONDS, SnapshotStore
from sinks.upkeep import Upkeep
from streams.errors import ConfigError
from streams.histogram import DEFAULT_SECONDS_BUCKETS, Histogram
from streams.records import Batch, Positions
from streams.sink import Sink
from streams.statistics import ShardStatistics, SinkStatistics

__all__ = ["DEFAULT_FACTORY", "DEFAULT_METRIC", "FaissSink"]

log = logging.getLogger("embedstream.sink")

WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class FaissSink(Sink[Batch]):
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
        merge_factor: sealed segments merge in tiers of this many
            (:mod:`sinks.merge`), so a shard keeps a number of segments logarithmic
            in its size; below 2, segments never merge.
        retrain_threshold: for indexes trained from data (IVF, PQ, SQ), retrain
            when the codec's fit on recent vectors is this many times worse than on
            its training sample (:mod:`sinks.retrain`); 0 never retrains. The
            training sample kept for it costs ``train_size x dim x 6`` bytes.
        ttl: seconds after its event time (the record's ``ts``, else the Kafka
            timestamp, else when it is indexed) a vector expires: it is removed
            from the index at its deadline (:mod:`sinks.expiry`); an upsert renews
            it. ``None``: what the directory holds, else never.
        clock: the wall clock expiry reads (a fake one in tests).
        payload_index: payload fields to index for fast filters, field -> type
            (``keyword``, ``int``, ``float``, ``bool``; :mod:`sinks.payloads`), added
            to those the directory declares. Undeclared fields are stored and
            returned too, and filters on them scan.
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
        merge_factor: int = DEFAULT_MERGE_FACTOR,
        retrain_threshold: float = DEFAULT_RETRAIN_THRESHOLD,
        ttl: float | None = None,
        clock: Callable[[], float] = time.time,
        payload_index: Mapping[str, str] | None = None,
        worker: str | None = None,
        release_timeout: float = 20.0,
        gc_grace: float = DEFAULT_GRACE_SECONDS,
        name: str = "faiss",
    ) -> None:
        if keep < 1:
            raise ConfigError(f"keep must be at least 1, got {keep}")
        if retrain_threshold and retrain_threshold <= 1:
            raise ConfigError(
                f"retrain_threshold must be above 1 (or 0 to never retrain), got "
                f"{retrain_threshold}"
            )
        self.path = str(path)
        self.name = name
        self.config = IndexConfig(
            self.path,
            factory=factory,
            metric=metric,
            normalize_queries=normalize_queries,
            codec=codec,
            rerank=rerank,
        )
        self.snapshot_every = snapshot_every or None
        self.keep = keep
        self.train_size = max(1, train_size)
        self.segment_size = max(1, segment_size)
        self.segment_bytes = segment_bytes
        self.merge_factor = merge_factor
        self.retrain_threshold = retrain_threshold
        if codec is not None:
            # Batches then arrive without their floats, unless rerank keeps them.
            codec.retrains = bool(retrain_threshold)
        self.retrainer: Retrainer | None = None
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"ttl must be above 0 seconds, got {ttl}")
        self.config.ttl_arg = self.config.ttl = ttl
        self.config.declare(
            parse_payload_index(f"{k}:{v}" for k, v in (payload_index or {}).items())
        )
        self.clock = clock
        self.worker = worker
        self.release_timeout = release_timeout
        self.gc_grace = gc_grace
        self.shards: dict[str, Shard] = {}
        self.ownership = Ownership(worker)
        self.stats = SinkStatistics()
        self.freshness = Histogram(DEFAULT_SECONDS_BUCKETS)
        # How long each write() took: the ingestion stall, including snapshots.
        self.write_seconds = Histogram(WRITE_BUCKETS)
        self.snapshot_durations = Histogram(DEFAULT_SECONDS_BUCKETS)
        self.gate = WriteGate(max_deferred_bytes, self.stats, self.freshness, self.write_seconds)
        self.store: SnapshotStore | None = None
        self.snapshotter: Snapshotter | None = None
        self.handover: HandOver | None = None
        self._listeners: list[SnapshotListener] = []
        self._training: list[Batch] = []
        self._training_rows = 0
        self._loop_scope: anyio.CancelScope | None = None
        self._loop_done = anyio.Event()
        self.upkeep: Upkeep | None = None

    def __repr__(self) -> str:
        return (
            f"<FaissSink {self.path!r} {self.factory} {self.metric} dim={self.dim}"
            f" | shards {len(self.shards)}, ntotal {self.ntotal}>"
        )

    # The configuration, as the directory and the arguments settled it.

    @property
    def factory(self) -> str:
        return self.config.factory

    @property
    def metric(self) -> str:
        return self.config.metric

    @property
    def dim(self) -> int | None:
        return self.config.dim

    @property
    def codec(self) -> Any:
        return self.config.codec

    @property
    def rerank(self) -> int:
        return self.config.rerank

    @property
    def normalize_queries(self) -> bool:
        return self.config.normalize_queries

    @property
    def ntotal(self) -> int:
        """Vectors held over all shards."""
        return sum(s.ntotal for s in self.shards.values())

    def add_snapshot_listener(self, fn: SnapshotListener) -> None:
        """Await ``fn(seq, positions)`` after every durable snapshot (e.g. to commit
        Kafka offsets)."""
        self._listeners.append(fn)
        if self.snapshotter is not None:
            self.snapshotter.listeners.append(fn)

    # -- lifecycle -------------------------------------------------------------------

    async def open(self, task_group: TaskGroup) -> Positions:
        store = self.store = SnapshotStore(self.path, chain=self.worker)
        self.snapshotter = Snapshotter(
            store,
            self.config,
            self.shards,
            self.gate,
            self.ownership,
            self.stats,
            self.snapshot_durations,
            keep=self.keep,
            gc_grace=self.gc_grace,
        )
        self.snapshotter.listeners.extend(self._listeners)
        self.retrainer = Retrainer(
            self.config,
            self.shards,
            self.stats,
            self.snapshotter.lock,
            threshold=self.retrain_threshold,
            capacity=self.train_size,
        )
        self.upkeep = Upkeep(
            self.config,
            self.shards,
            self.stats,
            self.gate,
            self.snapshotter,
            self.retrainer,
            clock=self.clock,
            merge_factor=self.merge_factor,
        )
        self.handover = HandOver(
            self.snapshotter,
            self.config,
            self.shards,
            self.gate,
            self.ownership,
            self.stats,
            prepare=self._prepare,
            drop_training=self._drop_training,
            release_timeout=self.release_timeout,
        )
        # A worker needs only the configuration now; shards are verified when claimed.
        only = None if self.worker is None else ()
        combined = await anyio.to_thread.run_sync(combine, self.path, only)
        positions: Positions = {}
        if combined is not None:
            self.handover.adopt(combined)
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
                positions = await self.handover.take(combined, sorted(combined.shards))
        # Made here, not in the task: a close() before the task first runs must
        # still cancel it (it would otherwise run on and keep the task group open).
        self._loop_scope = anyio.CancelScope()
        task_group.start_soon(self._background, self._loop_scope)
        return positions

    async def _background(self, scope: anyio.CancelScope) -> None:
        """Periodic snapshots (and compaction), and maintenance (merges, drift
        checks, retraining) when a segment seals or a check is due; cancelled by
        :meth:`close`."""
        try:
            with scope:
                async with anyio.create_task_group() as tg:
                    if self.snapshot_every:
                        assert self.snapshotter is not None
                        tg.start_soon(self.snapshotter.loop, self.snapshot_every, self.compact)
                    assert self.upkeep is not None
                    self.upkeep.start(tg)
        finally:
            self._loop_done.set()

    # The upkeep tasks' steps (:mod:`sinks.upkeep`), for callers that want one now.

    async def expire(self, now: float | None = None) -> int:
        """Remove every vector whose deadline is ``now`` (default: the clock) or
        earlier, in worker threads (the expiry task does this at each deadline).
        Returns how many."""
        return 0 if self.upkeep is None else await self.upkeep.expire(now)

    async def maintain(self, *, final: bool = False) -> None:
        """Check the drift (and retrain past the threshold), re-encode segments of
        older codec generations, and merge sealed segments. ``final``: the stream
        ends, so check the drift now whatever arrived since the last look."""
        if self.upkeep is not None:
            await self.upkeep.maintain(final=final)

    async def retrain(self, reason: str = "requested") -> bool:
        """Retrain the index's codec now on the sample of vectors seen, and
        re-encode the sealed segments into it (:mod:`sinks.retrain`). Returns False
        when the index is not trained from data or nothing was seen yet."""
        if self.retrainer is None or not self.retrainer.watching:
            return False
        return await self.retrainer.retrain(reason)

    async def compact(self) -> int:
        """Rebuild segments of indexes that cannot remove ids (HNSW) whose replaced
        and deleted entries pile up; in a worker thread while ingestion goes on.
        Returns how many segments were rebuilt."""
        return 0 if self.upkeep is None else await self.upkeep.compact()

    async def merge(self) -> int:
        """Merge sealed segments by the tiered policy (:mod:`sinks.merge`) in every
        shard, in worker threads: batches for a shard whose segments are being read
        queue meanwhile (as during a snapshot). Returns how many merges were done."""
        return 0 if self.upkeep is None else await self.upkeep.merge()

    async def close(self, *, ok: bool) -> None:
        if self._loop_scope is not None:
            self._loop_scope.cancel()
        try:
            if ok:
                if self._loop_scope is not None:
                    # A merge or re-encode running in a worker thread finishes its swap
                    # after the cancel; the final maintenance must come after it, or a
                    # merge of an older codec generation lands after the re-encoding.
                    await self._loop_done.wait()
                if self._training:
                    await self._train_and_apply()
                await self.maintain(final=True)
                await self.snapshot()
        finally:
            for shard in self.shards.values():
                if shard.floats is not None:
                    shard.floats.close()  # appends end; searches still read the mapping
            if self.store is not None:
                # Another writer may take the directory from here on.
                self.store.close()

    async def snapshot(self) -> int | None:
        """Write a snapshot of every shard now (only changed shards cost I/O).

        Returns the new seq, or ``None`` when nothing changed (or before
        :meth:`open`).

        Raises:
            SnapshotError: the snapshot could not be written; the previous one stays
                in force.
        """
        if self.snapshotter is None:
            return None
        return await self.snapshotter.snapshot()

    def saved_positions(self) -> Positions:
        """Per shard, the position held by the last durable snapshot."""
        return {} if self.snapshotter is None else self.snapshotter.saved_positions()

    @property
    def snapshotting(self) -> bool:
        """True while a snapshot is being written."""
        return self.snapshotter is not None and self.snapshotter.lock.locked()

    # -- moving partitions (several workers sharing one directory) --------------------

    @property
    def moves_partitions(self) -> bool:
        """True when partitions (and their shards) move between workers."""
        return self.worker is not None

    async def claim(self, partitions: Sequence[str]) -> Positions:
        """Take over ``partitions``: load each one's newest shard from the directory
        (whichever worker wrote it) and return the positions to resume from; a
        partition without a shard yet is missing from the result."""
        assert self.handover is not None, "claim() before open()"
        return await self.handover.claim(partitions)

    async def release(self, partitions: Sequence[str], upto: Positions) -> None:
        """Hand ``partitions`` over once the records the source emitted for them (up
        to ``upto``) have arrived: snapshot, then drop their shards (after
        ``release_timeout``, as of the last snapshot)."""
        assert self.handover is not None, "release() before open()"
        await self.handover.release(partitions, upto, self.snapshot)

    def _drop_training(self, names: Sequence[str]) -> None:
        # Vectors waiting for training are in no shard yet: the next owner reads them.
        self._training = [b for b in self._training if b.partition not in names]
        self._training_rows = sum(len(b) for b in self._training)

    # -- writing ---------------------------------------------------------------------

    async def write(self, item: Batch) -> None:
        own = self.ownership
        if own.owned is not None:
            if item.partition not in own.owned:
                # Its partition was handed over: the new owner reads these records
                # again from the position our last snapshot of the shard holds.
                self.stats.unowned_batches += 1
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
        config = self.config
        assert self.retrainer is not None and self.upkeep is not None, "write() before open()"
        if config.codec is not None:
            self._check_codes(item)
            config.check_dim(config.codec.dim, item.partition)
            config.ensure_template()
            if self.retrainer.observe(item):
                self.upkeep.want_drift_check()
            await self._apply(item)
            return
        config.check_dim(item.dim, item.partition)
        if self.retrainer.observe(item):
            self.upkeep.want_drift_check()
        if not config.ensure_template().is_trained:
            self._training.append(item)
            self._training_rows += len(item)
            if self._training_rows >= self.train_size:
                await self._train_and_apply()
            return
        await self._apply(item)

    def _check_codes(self, item: Batch) -> None:
        codec = self.config.codec
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

    def _prepare(self, shard: Shard) -> None:
        """Make a shard loaded from disk writable by this sink."""
        shard.new_index = self.config.fresh
        if shard.schema != self.config.payload_index:
            shard.schema = dict(self.config.payload_index)
            for seg in shard.segments:
                seg.payloads = seg.payloads.with_schema(shard.schema)
        shard.ttl = self.config.ttl
        shard.clock = self.clock
        shard.codec = self.codec if self.codec is not None and self.codec.trainable else None
        shard.segment_size = self.segment_size
        shard.segment_bytes = self.segment_bytes

    def _new_shard(self, name: str) -> Shard:
        dim = self.config.dim
        assert dim is not None
        floats = FloatStore(floats_path(self.path, name), dim) if self.rerank else None
        index, template = self.config.fresh()
        segment = Segment(index, codes=self.codec is not None, template=template)
        shard = Shard(
            name,
            [segment],
            self.config.fresh,
            floats=floats,
            segment_size=self.segment_size,
            segment_bytes=self.segment_bytes,
            schema=self.config.payload_index,
        )
        shard.ttl = self.config.ttl
        shard.clock = self.clock
        shard.codec = self.codec if self.codec is not None and self.codec.trainable else None
        return shard

    async def _apply(self, item: Batch) -> None:
        shard = self.shards.get(item.partition)
        if shard is None:
            shard = self.shards[item.partition] = self._new_shard(item.partition)
        sealed = len(shard.segments)
        await self.gate.apply(shard, item)
        if len(shard.segments) != sealed and self.upkeep is not None:
            self.upkeep.want_maintenance()  # a segment sealed: merges may be due

    async def _train_and_apply(self) -> None:
        template = self.config.ensure_template()
        batches, self._training, self._training_rows = self._training, [], 0
        arrived = np.concatenate([b.vectors[: 2 * self.train_size] for b in batches])
        sample, holdout = arrived[: self.train_size], arrived[self.train_size :]

        retrainer = self.retrainer
        assert retrainer is not None

        def train() -> None:
            data = np.ascontiguousarray(sample, dtype=np.float32)
            try:
                template.train(data)
            except RuntimeError as exc:
                raise ConfigError(
                    f"training {self.factory!r} on {len(sample)} vectors failed: "
                    f"{faiss_message(exc)}; give more training vectors "
                    "(train_size / --train-size) or a smaller index"
                ) from None
            self.config.set_template(template)
            retrainer.trained(np.ascontiguousarray(holdout[: self.train_size // 2], np.float32))

        await anyio.to_thread.run_sync(train)
        for b in batches:
            await self._apply(b)

    # -- searching -------------------------------------------------------------------

    async def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        params: str | Mapping[str, Any] | None = None,
        *,
        filter: str | Mapping[str, Any] | Filter | None = None,
        with_payload: bool = False,
        after: After | None = None,
        timeout: float = 1.0,
    ) -> SearchResults:
        """Top-``k`` over all shards, while ingestion goes on.

        Never sees half of a batch. Queries are normalised when the sink was told
        vectors are (``normalize_queries``). ``params``: search-time parameters
        (``"nprobe=32,efSearch=128"`` or a mapping; :mod:`sinks.params`), by default
        the ones ``embedstream tune`` stored with the index. ``after``: per shard, a
        record that must be searchable first (a Kafka offset: ``{"emb-0": 1234}``,
        see :func:`streams.kafka.after_record`); waits up to ``timeout`` seconds.
        The answer's ``positions`` say up to where each shard was searched.
        ``filter``: only vectors whose payload passes it (JSON text or an object,
        :mod:`sinks.filters`); ``with_payload``: return each result's payload.

        Raises:
            ConfigError: nothing was ingested yet, the queries' dimension differs,
                a parameter does not apply to the index, or the filter is bad
                (:class:`sinks.filters.FilterError`).
            SearchTimeout: ``after`` was not reached within ``timeout``.
        """
        where = None if filter is None else parse_filter(filter, self.config.payload_index)
        if after:
            await self.wait_searchable(after, timeout)
        if self.dim is None:
            raise ConfigError(f"{self.path}: the index is empty; nothing to search yet")
        chosen = self.config.search_params if params is None else parse_params(params)
        q = prepare_queries(queries, self.dim, self.normalize_queries)
        shards = list(self.shards.values())
        return await anyio.to_thread.run_sync(
            lambda: search_shards(
                shards, q, k, self.metric, self.rerank, chosen, where, with_payload
            )
        )

    def searchable_positions(self) -> Positions:
        """Per shard, the position up to which records are searchable."""
        return {name: s.searchable_position() for name, s in self.shards.items()}

    async def wait_searchable(self, after: After, timeout: float = 1.0) -> None:
        """Return once every shard named in ``after`` has made its record
        searchable (:mod:`sinks.freshness`).

        Raises:
            SearchTimeout: not within ``timeout`` seconds (with the positions
                reached; a shard this worker does not hold never gets there).
        """
        after = check_after(after)
        with anyio.move_on_after(timeout):
            while True:
                applied = self.gate.applied
                if reached(self.searchable_positions(), after):
                    return
                await applied.wait()
        positions = self.searchable_positions()
        if reached(positions, after):
            return
        waiting = unreached(positions, after)
        raise SearchTimeout(
            f"not searchable within {timeout:g}s: "
            + ", ".join(
                f"{name} at {position_value(positions[name]) if name in positions else 'nothing'}"
                f" (waiting for {after[name]})"
                for name in waiting
            ),
            {name: position_value(p) for name, p in positions.items()},
            waiting,
        )

    def histograms(self) -> dict[str, Histogram]:
        return {
            "freshness_seconds": self.freshness,
            "snapshot_duration_seconds": self.snapshot_durations,
            "write_seconds": self.write_seconds,
        }

    def statistics(self) -> SinkStatistics:
        st = self.stats
        st.ntotal = self.ntotal
        st.shards = {
            n: ShardStatistics(s.ntotal, dict(s.position), len(s.segments))
            for n, s in self.shards.items()
        }
        st.codec_generation = self.config.generation
        st.expired = sum(s.expired for s in self.shards.values())
        st.mapped_bytes = sum(s.mapped_bytes for s in self.shards.values())
        st.freshness_p50_seconds = self.freshness.quantile(0.5)
        st.freshness_p99_seconds = self.freshness.quantile(0.99)
        return SinkStatistics(**{f: getattr(st, f) for f in st.__dataclass_fields__})
