"""What sources and sinks report about themselves, typed.

:meth:`streams.source.Source.statistics` and :meth:`streams.sink.Sink.statistics`
return these; :class:`~streams.pipeline.PipelineMetrics` carries them to the
terminal view, ``/stats`` and ``/metrics``. Fields a source or sink has nothing to
say about keep their defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from streams.records import Position

__all__ = ["PartitionLagStatistics", "ShardStatistics", "SinkStatistics", "SourceStatistics"]


@dataclass(slots=True)
class ShardStatistics:
    """One shard of a sink: what it holds and up to where."""

    ntotal: int
    position: Position
    segments: int = 1


@dataclass(slots=True)
class SinkStatistics:
    """A sink's counters (a FAISS sink fills all of them).

    Attributes:
        batches: batches applied.
        records: rows applied (upserts and deletes).
        ntotal: vectors searchable now (``None``: a sink without an index).
        shards: per shard, its size and position.
        snapshots: snapshots written.
        last_snapshot_seq: seq of the newest snapshot this sink wrote.
        last_snapshot_time: when it was written (epoch seconds).
        last_snapshot_seconds: how long it took.
        last_snapshot_bytes: bytes it wrote (unchanged shards cost none).
        snapshot_bytes_total: bytes all snapshots wrote.
        snapshot_failures: snapshots that failed (and were retried later).
        deferred_batches: batches queued while a snapshot captured their shard.
        compactions: segments rebuilt without their deleted entries.
        merges: merges of sealed segments (:mod:`sinks.merge`).
        retrains: codec retrains on drift (:mod:`sinks.retrain`).
        retrain_failures: retrains or re-encodes that failed (the codec stayed).
        reencoded_segments: segments re-encoded into a newer codec generation.
        codec_generation: the index's codec generation (0: first training).
        expired: vectors that expired (``ttl``) and were removed.
        mapped_bytes: bytes of snapshot objects searched in place (page cache).
        codec_drift: the last measured drift (recent fit / training fit).
        last_retrain_time: when the last retrain happened (epoch seconds).
        claimed_shards: shards taken over from the directory (scale-out).
        released_shards: shards handed over to another worker.
        release_timeouts: hand-overs that did not wait for every emitted record.
        unowned_batches: batches of partitions handed over, ignored.
        freshness_p50_seconds: median event-time-to-searchable.
        freshness_p99_seconds: its 99th percentile.
    """

    batches: int = 0
    records: int = 0
    ntotal: int | None = None
    shards: dict[str, ShardStatistics] = field(default_factory=dict)
    snapshots: int = 0
    last_snapshot_seq: int | None = None
    last_snapshot_time: float | None = None
    last_snapshot_seconds: float | None = None
    last_snapshot_bytes: int = 0
    snapshot_bytes_total: int = 0
    snapshot_failures: int = 0
    deferred_batches: int = 0
    compactions: int = 0
    merges: int = 0
    retrains: int = 0
    retrain_failures: int = 0
    reencoded_segments: int = 0
    codec_generation: int = 0
    codec_drift: float | None = None
    expired: int = 0
    mapped_bytes: int = 0
    last_retrain_time: float | None = None
    claimed_shards: int = 0
    released_shards: int = 0
    release_timeouts: int = 0
    unowned_batches: int = 0
    freshness_p50_seconds: float = math.nan
    freshness_p99_seconds: float = math.nan


@dataclass(slots=True)
class PartitionLagStatistics:
    """How far behind one source partition is."""

    topic: str
    partition: int
    records: int
    seconds: float
    position: int
    highwater: int


@dataclass(slots=True)
class SourceStatistics:
    """A source's counters (a Kafka source fills them; a file source has none).

    Attributes:
        rebalances: consumer-group assignments seen.
        commits: offset commits after durable snapshots.
        consumer_restarts: clients replaced after they stopped making progress.
        lag: per partition, records and seconds behind.
        first_assignment_at: ``time.perf_counter()`` when partitions were first
            assigned (the group join done), or ``None``.
        until_idle: the source's idle limit, when it stops on idling.
    """

    rebalances: int = 0
    commits: int = 0
    consumer_restarts: int = 0
    lag: dict[str, PartitionLagStatistics] = field(default_factory=dict)
    first_assignment_at: float | None = None
    until_idle: float | None = None
