"""Retraining on drift: a new codec generation when the stream moved away from what
the index was trained on.

For an index trained from data (IVF, PQ, SQ factories, and the ``sq8``/``pq``
codecs of a ``quantize`` stage, whose batches carry their float vectors for this),
:class:`Retrainer` watches the drift (:mod:`sinks.drift`) as batches arrive. Past the threshold
(``retrain_threshold``, ``--retrain-threshold``; 0 turns it off) it retrains, off
the write path:

1. **Train** a new template on the monitor's sample (half a uniform reservoir of
   every vector seen, half the newest vectors), in a worker thread, while ingestion
   goes on into the current generation.
2. **Swap** it in: new segments clone it from then on, and each shard's active
   segment is sealed so no segment mixes generations. This is one step under the
   snapshot lock; the configuration of the next manifest names the new template,
   its generation, and the retrain (:class:`sinks.manifest.RetrainRecord`).
3. **Re-encode** the older generations' sealed segments, one at a time: decoded
   under the shard's read lock, added to a segment of the new template without it,
   and swapped in under the write lock (ids replaced or deleted meanwhile are
   removed at the swap), so searches see the old segment or its copy, never both.
   Quantize codes are encoded again from their floats on disk (``rerank``); without
   them, older segments keep their generation (see :meth:`Retrainer.reencode`).

Searches are correct throughout: every segment is searched with its own trained
index, whatever its generation; only merges need segments of one generation (each
segment records its template, and :meth:`sinks.shard.Shard.merge_plan` groups by
it). A crash between steps loses nothing: a snapshot names each segment's template,
and a restarted sink re-encodes whatever is still of an older one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import numpy as np

from sinks.config import IndexConfig
from sinks.drift import DEFAULT_RETRAIN_THRESHOLD, DriftMonitor, codec_fit
from sinks.manifest import RetrainRecord
from sinks.segment import faiss_message, make_index
from sinks.shard import Shard
from streams.records import Batch
from streams.statistics import SinkStatistics

__all__ = ["DEFAULT_RETRAIN_THRESHOLD", "Retrainer"]

log = logging.getLogger("embedstream.retrain")

# Fewest vectors a drift baseline is measured on.
_MIN_HOLDOUT = 256


class Retrainer:
    """Drift detection, retraining and re-encoding for one sink.

    Args:
        config: the sink's index configuration (its template is replaced).
        shards: the sink's shards (their segments are re-encoded).
        stats: where retrains and re-encoded segments are counted.
        lock: held while templates or segments are swapped (the snapshot lock).
        threshold: drift above which the index is retrained; 0: never.
        capacity: the reservoir size (training vectors kept).
    """

    def __init__(
        self,
        config: IndexConfig,
        shards: Mapping[str, Shard],
        stats: SinkStatistics,
        lock: anyio.Lock,
        *,
        threshold: float,
        capacity: int,
    ) -> None:
        self.config = config
        self.shards = shards
        self.stats = stats
        self.lock = lock
        self.threshold = threshold
        self.capacity = capacity
        self.monitor: DriftMonitor | None = None
        self._watching: bool | None = None
        self._busy = anyio.Lock()

    def __repr__(self) -> str:
        return f"<Retrainer threshold={self.threshold} generation={self.config.generation}>"

    @property
    def watching(self) -> bool:
        """True when this sink's index is trained from data and retraining is on."""
        if self._watching is None:
            config = self.config
            self._watching = bool(self.threshold) and config.dim is not None and config.retrainable
        return self._watching

    def observe(self, batch: Batch) -> bool:
        """Take an arriving batch's vectors into the sample (cheap: copies into two
        preallocated arrays). Returns True when a drift check is due."""
        # A quantize codec's batches carry their floats (the vectors are codes).
        vectors = batch.vectors if self.config.codec is None else batch.floats
        if not self.watching or vectors is None or vectors.dtype != np.float32 or not len(batch):
            return False
        monitor = self.monitor
        if monitor is None:
            assert self.config.dim is not None
            monitor = self.monitor = DriftMonitor(self.config.dim, self.capacity)
            if self.config.template is not None and self.config.template.is_trained:
                # Adopted from the directory, trained before this run.
                monitor.trained(self.config.codec_fit)
        vecs = vectors
        if batch.deleted is not None and batch.deleted.any():
            vecs = vecs[~batch.deleted]
        monitor.observe(vecs)
        return monitor.due()

    def trained(self, holdout: Any) -> None:
        """The first training is done (blocking: call in a worker thread).
        ``holdout``: vectors that arrived with the training sample but were not in
        it; with enough of them they give the drift baseline now, else the vectors
        that come next do."""
        fit = codec_fit(self.config.template, holdout) if len(holdout) >= _MIN_HOLDOUT else None
        self.config.codec_fit = fit
        self.config.trained_here = True
        if self.monitor is not None:
            self.monitor.trained(fit)

    async def check(self, *, final: bool = False) -> bool:
        """Measure the drift if enough vectors arrived since the last look, and
        retrain past the threshold. ``final``: the stream ends here, so look now
        and retrain without waiting for more vectors. Returns True when it
        retrained."""
        async with self._busy:  # one check at a time (the loop's and close()'s)
            return await self._check(final)

    async def _check(self, final: bool) -> bool:
        monitor = self.monitor
        if monitor is None or not (monitor.due() or (final and monitor.ready and monitor.baseline)):
            return False
        template = self.config.template
        baseline = monitor.baseline
        if not baseline:
            # The first vectors the codec was not trained on: they set the baseline.
            first = monitor.first()
            baseline = await anyio.to_thread.run_sync(codec_fit, template, first)
            if not baseline:
                return False
            monitor.baseline = self.config.codec_fit = baseline
        window, seen = monitor.window()
        fit = await anyio.to_thread.run_sync(codec_fit, template, window)
        if template is not self.config.template:
            return False  # retrained meanwhile
        drift = fit / baseline
        monitor.last_drift = self.stats.codec_drift = drift
        if drift <= self.threshold:
            monitor.drifted_at = None  # a passing blip
            return False
        if monitor.drifted_at is None:
            monitor.drifted_at = seen - len(window)
        if monitor.seen - monitor.drifted_at < monitor.ring_size and not final:
            # Train once the newest vectors are all from after the shift, so the new
            # codec learns where the stream went, not the moment it left.
            return False
        return await self._retrain(f"drift {drift:.2f} above the threshold {self.threshold:g}")

    async def retrain(self, reason: str = "requested") -> bool:
        """Train a new codec generation on the sample, swap it in, and re-encode the
        older segments (see the module docstring). Returns False when there is
        nothing to train on or training failed (the current codec stays; a warning
        says why)."""
        async with self._busy:
            return await self._retrain(reason)

    async def _retrain(self, reason: str) -> bool:
        monitor, config = self.monitor, self.config
        if monitor is None or monitor.filled == 0 or config.dim is None:
            return False
        sample = monitor.training_sample()
        dim, factory, metric, codec = config.dim, config.factory, config.metric, config.codec

        def train() -> tuple[Any, float]:
            started = time.perf_counter()
            if codec is not None:
                index = codec.trained_index(sample)
            else:
                index = make_index(dim, factory, metric)
                index.train(sample)
            return index, time.perf_counter() - started

        try:
            index, seconds = await anyio.to_thread.run_sync(train)
        except RuntimeError as exc:
            self.stats.retrain_failures += 1
            log.warning(
                "retraining %r on %d vectors failed (%s); the current codec stays",
                factory,
                len(sample),
                faiss_message(exc),
            )
            return False
        record = RetrainRecord(
            generation=config.generation + 1,
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            reason=reason,
            drift=monitor.last_drift,
            sample=len(sample),
            seconds=round(seconds, 3),
        )
        # Shielded: a cancel (the sink closing) between the swap and the rolls would
        # leave active segments of the older generation that nothing re-encodes.
        with anyio.CancelScope(shield=True):
            async with self.lock:
                config.retrained(index, record)
                monitor.trained()
                for shard in list(self.shards.values()):
                    if shard.new_index is not None:
                        await anyio.to_thread.run_sync(shard.roll)
        self.stats.retrains += 1
        self.stats.codec_generation = record.generation
        self.stats.last_retrain_time = time.time()
        log.info(
            "retrained %r (generation %d, %s) on %d vectors in %.1f s",
            factory,
            record.generation,
            reason,
            len(sample),
            seconds,
        )
        await self.reencode()
        return True

    async def reencode(self) -> int:
        """Re-encode every sealed segment of an older codec generation, one at a
        time, in worker threads. Returns how many were."""
        done = 0
        for shard in list(self.shards.values()):
            if shard.new_index is None:
                continue
            if self.config.codec is not None and shard.floats is None:
                # Quantize codes without their floats on disk: decoding and encoding
                # again would add the new codec's error to the old one's (a PQ
                # measured worse than never retraining), so older segments stay in
                # their generation, searched with their own codec.
                continue
            while (seg := shard.stale(self.config.token)) is not None:
                try:
                    async with self.lock:
                        ok = await anyio.to_thread.run_sync(shard.reencode, seg)
                except RuntimeError as exc:
                    # Searches stay correct on the older generation; say why.
                    self.stats.retrain_failures += 1
                    log.warning(
                        "re-encoding a segment of shard %r failed (%s); it stays in its "
                        "codec generation",
                        shard.name,
                        faiss_message(exc),
                    )
                    return done
                if not ok:
                    break
                done += 1
        self.stats.reencoded_segments += done
        return done
