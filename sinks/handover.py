"""How a FaissSink's shards come from the directory and move between workers.

Adopting what the directory holds (index configuration, trained template or codec),
taking shards over (:meth:`HandOver.claim`) and handing them over
(:meth:`HandOver.release`) when several workers share one directory; see
:mod:`sinks.shared` for the directory's side and :mod:`sinks.ownership` for the
bookkeeping.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio
import faiss

from sinks.ownership import Ownership
from sinks.search import load_shard
from sinks.shard import Shard
from sinks.shared import Combined, combine
from sinks.store import SnapshotStore
from streams.errors import ConfigError, SnapshotError
from streams.records import Batch, Positions

__all__ = ["HandOver"]

log = logging.getLogger("embedstream.sink")


class HandOver:
    """The part of :class:`sinks.FaissSink` that loads shards from its directory and
    hands them to other workers (a mixin: it works on the sink's own state)."""

    path: str
    worker: str | None
    release_timeout: float
    ownership: Ownership
    store: SnapshotStore | None
    shards: dict[str, Shard]
    dim: int | None
    factory: str
    metric: str
    normalize_queries: bool
    rerank: int
    segment_size: int
    segment_bytes: int
    codec: Any
    _factory_arg: str | None
    _metric_arg: str | None
    _template: Any
    _template_object: str | None
    _codec_object: str | None
    _training: list[Batch]
    _training_rows: int
    _snapshot_lock: anyio.Lock
    _stats: dict[str, Any]

    if TYPE_CHECKING:

        def _new_index(self) -> Any: ...

        async def snapshot(self) -> int | None: ...

    def _adopt(self, combined: Combined) -> None:
        """Take the configuration (and trained template or codec) the directory
        holds; once adopted, check that the directory still agrees."""
        m = combined.config
        if self.dim is not None and m.get("dim") != self.dim:
            raise ConfigError(
                f"{self.path} holds {m.get('dim')}-d vectors; this pipeline has {self.dim}-d ones"
            )
        if self._template_object is not None or self._codec_object is not None:
            return  # this worker already wrote its own
        if self.codec is not None and self.codec.is_trained and m.get("codec"):
            raise ConfigError(
                f"{self.path} holds codes of a codec trained by another worker, and this "
                "worker trained its own (workers started together on an empty directory); "
                "start one worker until its first snapshot, then the others"
            )
        store = self.store
        assert store is not None
        self._adopt_config(m)
        self._adopt_codec(m, store)
        if m.get("template"):
            self._template = faiss.read_index(str(store.objects / m["template"]))
            self._template_object = m["template"]

    async def _take(self, combined: Combined | None, names: Sequence[str]) -> Positions:
        """Load ``names`` from the directory's newest state and own them."""
        store = self.store
        assert store is not None
        positions: Positions = {}
        config = combined.config if combined is not None else {}
        for name in names:
            state = combined.shards.get(name) if combined is not None else None
            self.ownership.claimed(name, state)
            if state is None:
                continue
            codec = state.loaded.manifest.get("codec")
            if self._codec_object is not None and codec != self._codec_object:
                raise ConfigError(
                    f"shard {name} of {self.path} holds codes of another trained codec than "
                    "this worker's (workers started together on an empty directory each "
                    "trained one); start one worker until its first snapshot, then the others"
                )
            shard = self.ownership.reusable(name, state)
            if shard is None:
                shard = await anyio.to_thread.run_sync(load_shard, store, state.entry, config)
                shard.new_index = self._new_index
                shard.segment_size = self.segment_size
                shard.segment_bytes = self.segment_bytes
            shard.saved_entry = {**state.entry, "epoch": self.ownership.epochs[name]}
            self.shards[name] = shard
            positions[name] = dict(shard.position)
            self._stats["claimed_shards"] += 1
        return positions

    @property
    def moves_partitions(self) -> bool:
        """True when partitions (and their shards) move between workers."""
        return self.worker is not None

    async def claim(self, partitions: Sequence[str]) -> Positions:
        """Take over ``partitions``: load each one's newest shard from the directory
        (whichever worker wrote it) and return the positions to resume from; a
        partition without a shard yet is missing from the result."""
        async with self._snapshot_lock:
            combined = await anyio.to_thread.run_sync(combine, self.path, partitions)
            if combined is not None:
                self._adopt(combined)
            positions = await self._take(combined, partitions)
            # Handed-over shards not given back stay with their new owners.
            self.ownership.released.clear()
            return positions

    async def release(self, partitions: Sequence[str], upto: Positions) -> None:
        """Hand ``partitions`` over: wait until the records the source emitted for
        them (up to ``upto``) have arrived, snapshot, and drop their shards.

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
            # Vectors waiting for training are in no shard yet: the next owner reads
            # them again.
            self._training = [b for b in self._training if b.partition not in names]
            self._training_rows = sum(len(b) for b in self._training)
            try:
                await self.snapshot()
            except SnapshotError as exc:
                log.warning("handing over %s as of its last snapshot: %s", names, exc)
        if scope.cancelled_caught:
            self._stats["release_timeouts"] += 1
            log.warning(
                "records of %s did not arrive within %ss; handing over as of the last snapshot",
                names,
                self.release_timeout,
            )
        async with self._snapshot_lock:
            for name in names:
                own.release(name, self.shards.pop(name, None))
                self._stats["released_shards"] += 1

    def _adopt_codec(self, m: dict[str, Any], store: SnapshotStore) -> None:
        kind = m.get("quantize")
        mine = self.codec.kind if self.codec is not None else None
        if kind != mine:
            raise ConfigError(
                f"{self.path} holds {'codes of --quantize ' + kind if kind else 'float vectors'}"
                f"; this pipeline {'quantizes with ' + mine if mine else 'does not quantize'}. "
                "Use the same setting, or a new directory."
            )
        if self.codec is not None:
            self.codec.restore((store.objects / m["codec"]).read_bytes())
            self._codec_object = m["codec"]
            self._template = self.codec.empty_index()
            self.rerank = self.rerank or int(m.get("rerank") or 0)

    def _adopt_config(self, m: dict[str, Any]) -> None:
        for arg, key in ((self._factory_arg, "factory"), (self._metric_arg, "metric")):
            if arg is not None and arg != m.get(key):
                raise ConfigError(
                    f"{self.path} holds a {m.get('factory')!r} index with metric "
                    f"{m.get('metric')!r}; you asked for {key} {arg!r}. Drop the option to "
                    "keep the existing index, or use a new directory."
                )
        self.factory = str(m["factory"])
        self.metric = str(m["metric"])
        self.dim = int(m["dim"])
        self.normalize_queries = self.normalize_queries or bool(m.get("normalize_queries"))
