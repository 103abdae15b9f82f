"""Searching shards: merging per-shard top-k, and read-only snapshot views.

:func:`open_snapshot` loads exactly what a restarting pipeline would load: per
chain the newest committed manifest whose objects verify, falling back the same
way, and per shard the newest state over all chains (:mod:`sinks.shared`), so
``embedstream search`` and ``embedstream inspect`` can run against a directory that
another process is ingesting into.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from sinks.durable import NotRegularFileError, read_regular, require_regular
from sinks.expiry import Expiry
from sinks.filters import Filter, parse_filter
from sinks.floats import FloatStore, floats_path
from sinks.freshness import position_value
from sinks.manifest import IndexManifest, SegmentManifest, ShardManifest
from sinks.params import SearchParams, parse_params
from sinks.payloads import FieldStats, Payload, PayloadStore
from sinks.segment import Segment, faiss_message
from sinks.shard import Shard, decode_keys
from sinks.shared import Combined, combine
from sinks.store import SnapshotStore
from sinks.topk import merge_topk
from streams.errors import ConfigError, SnapshotError

__all__ = ["SearchResults", "SnapshotView", "load_shard", "merge_topk", "open_snapshot"]


@dataclass(slots=True)
class SearchResults:
    """Top-k per query, best first.

    Attributes:
        scores: ``(nq, k)`` float32; inner product (higher is better) or squared L2
            distance (lower is better), as the index's metric says.
        ids: ``(nq, k)`` int64; -1 where fewer than k vectors exist.
        keys: original string keys of the string ids among ``ids``.
        positions: per shard, its searchable position read right before the search,
            so everything before it is in the answer (:mod:`sinks.freshness`): the
            Kafka offset (next to read), or file -> next byte or row.
        snapshots: per shard, the seq of the snapshot it was last saved in or
            loaded from (``None``: not in any snapshot yet).
        payloads: with ``with_payload``, the payload of every id (``None``: the
            record had none); :meth:`rows` aligns them with each query's ids.
    """

    scores: npt.NDArray[np.float32]
    ids: npt.NDArray[np.int64]
    keys: dict[int, str] = field(default_factory=dict)
    positions: dict[str, Any] = field(default_factory=dict)
    snapshots: dict[str, int | None] = field(default_factory=dict)
    payloads: dict[int, Payload] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> list[dict[str, list[Any]]]:
        """One ``{"ids": [...], "scores": [...]}`` per query, without empty slots,
        with ``"payloads"`` aligned with ``"ids"`` when they were asked for."""
        out = []
        for ids, scores in zip(self.ids.tolist(), self.scores.tolist(), strict=True):
            hit_ids: list[Any] = []
            hit_scores: list[float] = []
            for i, s in zip(ids, scores, strict=True):
                if i < 0:
                    continue
                hit_ids.append(self.keys.get(i, i))
                hit_scores.append(s)
            row: dict[str, list[Any]] = {"ids": hit_ids, "scores": hit_scores}
            if self.payloads is not None:
                row["payloads"] = [self.payloads.get(i) for i in ids if i >= 0]
            out.append(row)
        return out


def prepare_queries(queries: npt.ArrayLike, dim: int, normalize: bool) -> npt.NDArray[np.float32]:
    """Queries as a C-contiguous float32 ``(nq, dim)`` array, normalised if asked.

    Raises:
        ConfigError: the queries' shape does not fit the index.
    """
    q = np.array(queries, dtype=np.float32, ndmin=2, copy=True)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ConfigError(f"queries have shape {q.shape}; the index has dimension {dim}")
    if normalize:
        faiss.normalize_L2(q)
    return np.ascontiguousarray(q)


def search_shards(
    shards: list[Shard],
    queries: npt.NDArray[np.float32],
    k: int,
    metric: str,
    rerank: int = 0,
    params: SearchParams | None = None,
    where: Filter | None = None,
    with_payload: bool = False,
) -> SearchResults:
    """Search every shard and merge (blocking; run in a worker thread).

    With ``rerank``, each shard proposes that many candidates from its codes and the
    full-precision vectors on disk decide the final order and scores. ``params`` are
    search-time parameters for every segment (:mod:`sinks.params`); ``where`` a
    checked payload filter (:mod:`sinks.filters`); ``with_payload`` returns each
    result's payload.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    positions = {s.name: position_value(s.searchable_position()) for s in shards}
    snapshots = {s.name: s.saved_seq for s in shards}
    if not shards:
        n = len(queries)
        return SearchResults(np.full((n, k), np.nan, np.float32), np.full((n, k), -1, np.int64))
    if rerank and all(s.floats is not None for s in shards):
        parts = []
        for s in shards:
            _, cand = s.search(queries, max(rerank, k), params, where)
            parts.append((s.exact(queries, cand, metric), cand))
        scores, ids = merge_topk(parts, k, metric)
    else:
        order = "l2" if any(s.binary for s in shards) else metric
        scores, ids = merge_topk([s.search(queries, k, params, where) for s in shards], k, order)
    keys: dict[int, str] = {}
    for s in shards:
        if s.keys:
            for i in ids[ids >= 0].tolist():
                key = s.keys.get(i)
                if key is not None:
                    keys[i] = key
    payloads: dict[int, Payload] | None = None
    if with_payload:
        payloads = {}
        for s in shards:
            payloads.update(s.payloads_of(ids))
    return SearchResults(scores, ids, keys, positions, snapshots, payloads)


def load_shard(
    store: SnapshotStore,
    entry: ShardManifest,
    config: IndexManifest,
    *,
    readonly: bool = False,
    mmap: bool = True,
) -> Shard:
    """Read one shard of a verified manifest (blocking).

    ``config`` is the configuration of the manifest the entry belongs to: it says
    whether segments are binary or codes, and the dimension. With ``mmap``, float
    segments are opened with FAISS's mmap IO flag: their codes (flat codes, IVF
    lists, HNSW storage) are read in place from the object file, so opening costs
    about nothing whatever the size, and pages come in as searches touch them. A
    writer copies a mapped segment into memory before it first changes it.
    """
    binary = config.binary
    codes = bool(config.quantize)
    schema = dict(config.payload_index)
    segments = []
    for seg in _segments(entry):
        path = store.objects / seg.object
        # Missing: pruned by a writer since the manifest was verified (the caller
        # retries); anything but a regular file is refused before FAISS opens it.
        require_regular(path)
        mapped = 0
        index: Any
        try:
            if binary:
                index = faiss.read_index_binary(str(path))
            elif mmap:
                index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
                mapped = path.stat().st_size
            else:
                index = faiss.read_index(str(path))
        except RuntimeError as exc:
            why = faiss_message(exc)
            raise SnapshotError(
                f"{path}: faiss cannot read this segment ({why}); the file matches its hash, "
                "so it was written damaged or by an incompatible faiss version: restore the "
                "directory from a backup, or ingest into a new one"
            ) from None
        dead = None
        if seg.dead:
            dead = np.frombuffer(read_regular(store.objects / seg.dead), dtype="<i8")
        payloads = PayloadStore(schema)
        if seg.payloads:
            try:
                payloads = PayloadStore.from_bytes(
                    schema, read_regular(store.objects / seg.payloads)
                )
            except ValueError as exc:
                raise SnapshotError(f"shard {entry.name}: {exc}") from None
        segments.append(
            Segment(
                index,
                codes=codes,
                saved_object=seg.object,
                dead=dead,
                saved_dead=seg.dead,
                template=seg.template or (config.template if not config.quantize else None),
                mapped=mapped,
                payloads=payloads,
                saved_payloads=seg.payloads,
            )
        )
    keys = decode_keys(read_regular(store.objects / entry.keys)) if entry.keys else {}
    floats = None
    if entry.floats_map:
        mapping = FloatStore.read_mapping(read_regular(store.objects / entry.floats_map))
        floats = FloatStore(
            floats_path(store.root, entry.name),
            config.dim,
            entry.float_rows,
            mapping,
            readonly=readonly,
        )
    expiry = None
    if entry.expiry:
        try:
            expiry = Expiry.from_bytes(read_regular(store.objects / entry.expiry))
        except ValueError as exc:
            raise SnapshotError(f"shard {entry.name}: {exc}") from None
    shard = Shard(
        entry.name,
        segments,
        None,
        entry.position,
        keys,
        floats=floats,
        expiry=expiry,
        expired=entry.expired,
        schema=schema,
    )
    shard.saved_entry = entry
    return shard


def _segments(entry: ShardManifest) -> list[SegmentManifest]:
    if entry.object and not entry.segments:
        # The first releases wrote a shard as one index object.
        return [SegmentManifest(entry.object, entry.ntotal)]
    return entry.segments


@dataclass
class SnapshotView:
    """The combined state of a snapshot directory, for read-only search and
    inspection (one chain, or several workers' chains; see :mod:`sinks.shared`)."""

    root: str
    combined: Combined
    shards: list[Shard]
    config: IndexManifest = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.combined.config

    @property
    def manifest(self) -> dict[str, Any]:
        """The combined state as one manifest-shaped JSON object (what ``inspect
        --json`` prints)."""
        return self.combined.describe()

    def payload_fields(self) -> dict[str, FieldStats]:
        """Every payload field: its type (``mixed`` when values differ), how many
        vectors have it, whether it is declared (indexed), and how many values of
        a declared field had another type (blocking; decodes undeclared fields)."""
        out: dict[str, FieldStats] = {}
        for shard in self.shards:
            for seg in shard.segments:
                for name, got in seg.payloads.stats().items():
                    have = out.get(name)
                    if have is None:
                        out[name] = got
                        continue
                    have.count += got.count
                    have.mismatched += got.mismatched
                    if have.type != got.type:
                        have.type = "mixed"
        return dict(sorted(out.items()))

    @property
    def fallbacks(self) -> list[dict[str, Any]]:
        """Snapshots skipped because they did not load, and why."""
        return self.combined.fallbacks

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def metric(self) -> str:
        return self.config.metric

    @property
    def ntotal(self) -> int:
        return self.combined.ntotal

    def search(
        self,
        queries: npt.ArrayLike,
        k: int = 10,
        params: str | Mapping[str, Any] | None = None,
        *,
        filter: str | Mapping[str, Any] | Filter | None = None,
        with_payload: bool = False,
    ) -> SearchResults:
        """Top-``k`` over all shards (queries normalised when the index was).

        ``params``: search-time parameters (``"nprobe=32"`` or ``{"nprobe": 32}``,
        see :mod:`sinks.params`); by default the ones ``embedstream tune`` stored.
        ``filter``: only vectors whose payload passes it (:mod:`sinks.filters`);
        ``with_payload``: return each result's payload.

        Raises:
            ConfigError: the queries do not fit, a parameter is unknown to the index,
                or the filter is bad (:class:`sinks.filters.FilterError`).
        """
        chosen = self.config.search_params if params is None else parse_params(params)
        where = None if filter is None else parse_filter(filter, self.config.payload_index)
        q = prepare_queries(queries, self.dim, self.config.normalize_queries)
        return search_shards(
            self.shards, q, k, self.metric, self.config.rerank, chosen, where, with_payload
        )


def open_snapshot(
    root: str | os.PathLike[str], *, mmap: bool = True, verify_all: bool = False
) -> SnapshotView:
    """Load a snapshot directory read-only: every shard's newest state over all
    workers' chains, verified, falling back as a restart would. ``mmap``: open
    segments in place (:func:`load_shard`) rather than reading them into memory.
    ``verify_all``: hash every object, even those recorded as hashed and unchanged
    since (:mod:`sinks.verified`).

    Raises:
        SnapshotError: the directory holds no snapshot, or none that loads.
    """
    if not os.path.isdir(root):
        raise SnapshotError(f"{root}: no such directory")
    store = SnapshotStore(root, readonly=True)
    for _attempt in range(5):
        combined = combine(root, verify_all=verify_all)
        if combined is None:
            raise SnapshotError(f"{root}: holds no snapshot yet")
        try:
            config = combined.config
            shards = []
            for _, state in sorted(combined.shards.items()):
                shard = load_shard(store, state.entry, config, readonly=True, mmap=mmap)
                shard.saved_seq = state.loaded.seq
                shards.append(shard)
        except FileNotFoundError:
            # A writer pruned this snapshot between our verify and read: take the
            # newer one it committed.
            continue
        except NotRegularFileError as exc:
            raise SnapshotError(f"{root}: {exc}") from None
        return SnapshotView(str(root), combined, shards)
    raise SnapshotError(
        f"{root}: objects kept disappearing while loading (a writer pruning faster than "
        "this reader loads); try again"
    )
