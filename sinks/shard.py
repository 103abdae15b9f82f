"""A shard: the index of one source partition, searchable while it grows.

A shard is a list of segments (:mod:`sinks.segment`): sealed ones and one small
active one that takes the appends. Adds and removes take the write side of the
shard's readers-writer lock; searches and snapshot serialisation the read side, so a
search never runs during a mutation (which can crash FAISS) and never sees half of a
batch. Writes are short because they only grow the small active segment.

The shard's ``position`` advances under the same write lock as the index, which
makes it the "searchable position" watermark: everything before it is searchable,
nothing after it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import msgspec
import numpy as np
import numpy.typing as npt

from sinks.expiry import Expiry
from sinks.filtered import search_filtered
from sinks.filters import Filter
from sinks.floats import FloatStore
from sinks.manifest import SegmentManifest, ShardManifest
from sinks.merge import grown_graph, merged_index, plan
from sinks.params import SearchParams
from sinks.payloads import Payload, PayloadSchema, PayloadStore
from sinks.rwlock import RWLock
from sinks.segment import (
    Segment,
    flat_codes,
    index_ids,
    make_index,
    metric_code,
)
from sinks.store import SnapshotStore
from sinks.topk import merge_topk
from streams.errors import ConfigError
from streams.records import Batch, Position

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "DEFAULT_SEGMENT_SIZE",
    "Capture",
    "Shard",
    "make_index",
    "metric_code",
]

DEFAULT_SEGMENT_SIZE = 131_072
# Flat-code segments also seal at this many bytes of codes. New ones reserve that
# much address space and write in place (Segment.reserve); a segment restored from
# a snapshot is grown by FAISS, by doubling, and while it copies, the old array and
# the copy are both resident: half a segment of extra memory for a moment (32 MB
# with 131,072 128-d floats, which set peak RSS when it fell near the end of a run).
DEFAULT_SEGMENT_BYTES = 32 << 20

_keys_encoder = msgspec.msgpack.Encoder()
_keys_decoder = msgspec.msgpack.Decoder(dict[int, str])


@dataclass(slots=True)
class Capture:
    """A shard's state as written by a snapshot, consistent with its position."""

    segments: list[SegmentManifest]
    keys_bytes: bytes | None
    position: Position
    ntotal: int
    version: int
    nbytes: int
    written: list[tuple[Segment, str, int, str | None, str | None]] = field(default_factory=list)
    float_rows: int = 0
    float_map: bytes | None = None
    expiry_bytes: bytes | None = None
    expired: int = 0


class Shard:
    """One partition's index.

    Args:
        name: the partition name (also the shard's key in manifests).
        segments: restored segments, or one empty segment for a new shard.
        new_index: makes the empty index of a new segment and returns it with the
            token of the template it cloned (:meth:`sinks.config.IndexConfig.fresh`;
            ``None`` for a read-only view).
        position: the partition position the index holds.
        keys: id -> original string key, for string ids.
        floats: where full-precision vectors go, for exact rerank.
        segment_size: seal the active segment at this many vectors.
        segment_bytes: for flat-code indexes (:func:`sinks.segment.flat_codes`),
            also seal it at this many bytes of codes (at least 1,024 vectors).
        expiry: the deadlines of the shard's vectors (restored from a snapshot).
        expired: how many of its vectors expired so far.
        schema: the declared payload fields (:mod:`sinks.payloads`).
    """

    def __init__(
        self,
        name: str,
        segments: list[Segment],
        new_index: Callable[[], tuple[Any, str | None]] | None = None,
        position: Position | None = None,
        keys: dict[int, str] | None = None,
        *,
        floats: FloatStore | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        expiry: Expiry | None = None,
        expired: int = 0,
        schema: PayloadSchema | None = None,
    ) -> None:
        self.name = name
        self.schema: PayloadSchema = dict(schema or {})
        for seg in segments:
            seg.payloads = seg.payloads.with_schema(self.schema)
        self.segments = segments
        self.new_index = new_index
        self.segment_size = segment_size
        self.segment_bytes = segment_bytes
        self._flat = flat_codes(segments[0].index)
        self.binary = segments[0].binary
        self.codes = segments[0].codes
        self.floats = floats
        # Expiry by time (:mod:`sinks.expiry`): set by the sink when it has a ttl.
        self.ttl: float | None = None
        self.expiry = expiry
        self.expired = expired
        self._sweeping = threading.Lock()
        self.clock: Callable[[], float] = time.time
        # A trained quantize codec (:class:`operators.quantize.Codec`, set by the
        # sink): batches it encoded before a retrain are encoded again here.
        self.codec: Any = None
        self.recoded = 0
        self.position: Position = dict(position or {})
        self.keys: dict[int, str] = dict(keys or {})
        self.lock = RWLock()
        self.version = 0
        # Snapshot bookkeeping: the version and manifest entry of the last durable
        # snapshot; an unchanged shard is referenced by that entry again.
        self.saved_version = 0
        self.saved_entry: ShardManifest | None = None
        # The seq of the snapshot that holds (or loaded) this shard's state.
        self.saved_seq: int | None = None
        self.searchable_at = 0.0
        if new_index is not None and self._flat:
            segments[-1].reserve(self.seal_at)

    def __repr__(self) -> str:
        return (
            f"<Shard {self.name!r} ntotal={self.ntotal} segments={len(self.segments)} "
            f"position={self.position}>"
        )

    @property
    def ntotal(self) -> int:
        """Vectors searches can return."""
        return sum(s.live for s in self.segments)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of snapshot objects this shard's segments read in place."""
        return sum(s.mapped for s in self.segments)

    @property
    def code_bytes(self) -> int:
        """Bytes per vector the index holds in RAM (codes, or 4 x dim for floats)."""
        index = self.segments[0].index
        return int(index.code_size if self.binary else index.sa_code_size())

    @property
    def seal_at(self) -> int:
        """Vectors at which the active segment is sealed."""
        if not self._flat:
            return self.segment_size
        by_bytes = max(1024, self.segment_bytes // max(1, self.code_bytes))
        return min(self.segment_size, by_bytes)

    @property
    def dirty(self) -> bool:
        """Changed since the last snapshot."""
        return self.version != self.saved_version or self.saved_entry is None

    def ids(self) -> npt.NDArray[np.int64]:
        """Every id the shard holds."""
        with self.lock.read():
            parts = [index_ids(s.index) for s in self.segments]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def reconstruct(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """The stored vectors (or codes) of ``ids``, all of which the shard holds."""
        out: dict[int, Any] = {}
        with self.lock.read():
            for s in self.segments:
                held = s.ids.contains(ids)
                if held.any():
                    found = ids[held]
                    vecs = s.reconstruct(found)
                    for i, v in zip(found.tolist(), vecs, strict=True):
                        out[i] = v
        return np.stack([out[i] for i in ids.tolist()])

    def apply(self, batch: Batch) -> None:
        """Upsert and delete ``batch``'s rows, then advance the position (blocking).

        With a ``ttl``, each upserted vector gets its deadline (event time + ttl,
        the event time being now where the batch has none); a row already past it
        counts as expired and as a delete of its id."""
        ids = batch.ids
        dmask = batch.deleted
        deadlines = None
        expired_now = 0
        if self.ttl is not None and len(ids):
            now = self.clock()
            ts = np.asarray(batch.timestamps, np.float64)
            deadlines = np.where(np.isnan(ts), now, ts) + self.ttl
            stale = deadlines <= now
            if dmask is not None:
                stale &= ~dmask
            expired_now = int(stale.sum())
            if expired_now:
                dmask = stale if dmask is None else dmask | stale
        metas = batch.metadata
        if dmask is not None and dmask.any():
            keep = ~dmask
            add_ids, add_vecs = ids[keep], batch.vectors[keep]
            deleted = ids[dmask]
            if metas is not None:
                metas = [m for m, k in zip(metas, keep.tolist(), strict=True) if k]
        else:
            keep = None
            add_ids, add_vecs, deleted = ids, batch.vectors, None
        # Which segment holds which id (only this writer thread mutates the sets).
        segments = self.segments
        held = [(s, s.ids.contains(ids)) for s in segments] if len(ids) else []
        with self.lock.write():
            if self.segments is not segments and len(ids):
                # A merge or re-encode swapped segments meanwhile: look again.
                held = [(s, s.ids.contains(ids)) for s in self.segments]
            for seg, mask in held:
                if mask.any():
                    seg.remove(ids[mask])
            if len(add_ids):
                active = self.segments[-1]
                # An index that cannot remove keeps replaced and deleted entries as
                # tombstones; a new entry for such an id must go to another segment
                # (searches filter the id out of this one).
                replaced_here = not active.removable and (
                    (bool(held) and bool(held[-1][1].any()))
                    or bool(active.dead.contains(add_ids).any())
                )
                if replaced_here or (active.ntotal and active.ntotal + len(add_ids) > self.seal_at):
                    assert self.new_index is not None, "read-only shard"
                    active = self._segment(*self.new_index())
                    if self._flat:
                        active.reserve(max(self.seal_at, len(add_ids)))
                    self.segments = [*self.segments, active]
                if batch.codec_tag is not None and self.codec is not None:
                    add_vecs, active = self._current_codes(batch, keep, add_vecs, active)
                active.add(add_vecs, add_ids, metas)
                if self.floats is not None and batch.floats is not None:
                    floats = batch.floats if keep is None else batch.floats[keep]
                    self.floats.append(np.ascontiguousarray(add_ids, np.int64), floats)
            if deadlines is not None:
                if self.expiry is None:
                    self.expiry = Expiry()
                self.expiry.put(add_ids, deadlines if keep is None else deadlines[keep])
                self.expired += expired_now
            if deleted is not None:
                if self.expiry is not None:
                    self.expiry.forget(deleted)
                if self.floats is not None:
                    self.floats.discard(deleted)
                if self.keys:
                    for i in deleted.tolist():
                        self.keys.pop(i, None)
            if batch.keys:
                self.keys.update(batch.keys)
            self.position.update(batch.position)
            self.version += 1
            self.searchable_at = time.time()

    def expire(self, now: float | None = None) -> int:
        """Remove the vectors whose deadline is ``now`` (default: the clock) or
        earlier (blocking). Returns how many."""
        if self.expiry is None:
            return 0
        # One sweep at a time: a second caller must not see the next deadline move
        # on while the first still removes what was due, and return early.
        with self._sweeping:
            return self._expire(now)

    def _expire(self, now: float | None) -> int:
        assert self.expiry is not None
        now = self.clock() if now is None else now
        if now < self.expiry.next_deadline:
            return 0
        with self.lock.write():
            ids = self.expiry.due(now)
            if not len(ids):
                return 0
            for seg in self.segments:
                held = seg.ids.contains(ids)
                if held.any():
                    seg.remove(ids[held])
            if self.floats is not None:
                self.floats.discard(ids)
            if self.keys:
                for i in ids.tolist():
                    self.keys.pop(i, None)
            self.expired += len(ids)
            self.version += 1
        return len(ids)

    def _current_codes(
        self,
        batch: Batch,
        keep: npt.NDArray[np.bool_] | None,
        codes: npt.NDArray[np.uint8],
        active: Segment,
    ) -> tuple[npt.NDArray[np.uint8], Segment]:
        """Codes of the codec's current generation and an active segment of it
        (under the write lock). A batch encoded before the codec was retrained is
        encoded again from its floats; an active segment of the older generation is
        sealed. The codec may be retrained meanwhile (in another thread): look again
        until batch, codec and segment agree."""
        assert batch.codec_tag is not None and self.new_index is not None
        token = batch.codec_tag[1]
        while True:
            if token != self.codec.token:
                if batch.floats is None:
                    raise ConfigError(
                        f"a batch of partition {batch.partition!r} holds codes of an older "
                        "codec generation and no float vectors to encode again: feed the "
                        "sink with quantize(codec), which keeps them"
                    )
                floats = batch.floats if keep is None else batch.floats[keep]
                codes, (_, token) = self.codec.encode_tagged(floats)
                self.recoded += len(codes)
                continue
            if active.template == token:
                return codes, active
            index, template = self.new_index()
            if template != token:
                continue  # retrained again since the look above
            active = self._segment(index, template)
            if self._flat:
                active.reserve(max(self.seal_at, len(codes)))
            older = self.segments if self.segments[-1].ntotal else self.segments[:-1]
            self.segments = [*older, active]

    def _segment(self, index: Any, template: str | None, **kw: Any) -> Segment:
        """A new segment of this shard around ``index``."""
        return Segment(
            index, codes=self.codes, template=template, payloads=PayloadStore(self.schema), **kw
        )

    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        params: SearchParams | None = None,
        where: Filter | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-``k`` of this shard (blocking); ids -1 where it has fewer than k.
        ``where``: only vectors whose payload passes this filter (:mod:`sinks.filtered`).

        Binary shards score by Hamming distance (lower is better). Vectors past
        their expiry deadline are left out even before the sweep removed them.
        """
        n = len(queries)
        with self.lock.read():
            hidden = None
            if self.expiry is not None:
                hidden = self.expiry.overdue(self.clock())
                hidden = hidden if len(hidden) else None
            # No segment is asked for more than it holds: a huge k costs only the
            # merged result, never a FAISS allocation of nq x k per segment.
            if where is None:
                parts = [
                    s.search(queries, min(k, s.ntotal), params, hidden)
                    for s in self.segments
                    if s.ntotal
                ]
            else:
                found = [
                    search_filtered(s, queries, min(k, s.ntotal), params, where, hidden)
                    for s in self.segments
                    if s.ntotal
                ]
                parts = [p for p in found if p is not None]
        if not parts:
            return np.full((n, k), np.nan, np.float32), np.full((n, k), -1, np.int64)
        return merge_topk(parts, k, self.order)

    def payloads_of(self, ids: npt.NDArray[np.int64]) -> dict[int, Payload]:
        """The payload of each of ``ids`` this shard holds (blocking)."""
        out: dict[int, Payload] = {}
        ids = np.unique(ids[ids >= 0])
        with self.lock.read():
            for seg in self.segments:
                held = seg.ids.contains(ids) if len(ids) else np.zeros(0, bool)
                if held.any():
                    found = ids[held]
                    out.update(zip(found.tolist(), seg.payloads.get(found), strict=True))
        return out

    @property
    def order(self) -> str:
        """How scores sort: ``"ip"`` (higher is better) or ``"l2"`` (lower is)."""
        if self.binary:
            return "l2"
        metric = self.segments[0].index.metric_type
        return "ip" if metric == faiss.METRIC_INNER_PRODUCT else "l2"

    def exact(
        self, queries: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], metric: str
    ) -> npt.NDArray[np.float32]:
        """Exact scores of ``ids`` (nq x n candidates) from the full-precision floats;
        NaN where an id has none."""
        assert self.floats is not None
        with self.lock.read():
            vecs, found = self.floats.gather(ids)
        if metric == "ip":
            scores = np.einsum("qd,qnd->qn", queries, vecs)
        else:
            diff = vecs - queries[:, None, :]
            scores = np.einsum("qnd,qnd->qn", diff, diff)
        scores[~found | (ids < 0)] = np.nan
        out: npt.NDArray[np.float32] = scores.astype(np.float32)
        return out

    def capture(self, store: SnapshotStore) -> Capture:
        """Write the changed segments into ``store`` and take the key map and
        position, all under the read lock so they agree (blocking; searches go on)."""
        with self.lock.read():
            entries: list[SegmentManifest] = []
            written: list[tuple[Segment, str, int, str | None, str | None]] = []
            nbytes = 0
            for seg in self.segments:
                dead = seg.saved_dead
                payloads = seg.saved_payloads
                if seg.dirty:

                    def produce(write: Callable[[bytes], None], seg: Segment = seg) -> None:
                        seg.write(faiss.PyCallbackIOWriter(write, 1 << 22))  # type: ignore[attr-defined]

                    digest, size = store.put_stream(produce)
                    dead = None
                    if len(seg.dead):
                        data = seg.dead.to_array().astype("<i8").tobytes()
                        dead = store.put_object(data)
                        size += len(data)
                    payloads = None
                    if not seg.payloads.empty:
                        data = seg.payloads.to_bytes()
                        payloads = store.put_object(data)
                        size += len(data)
                    written.append((seg, digest, seg.version, dead, payloads))
                    nbytes += size
                else:
                    assert seg.saved_object is not None
                    digest = seg.saved_object
                entries.append(SegmentManifest(digest, seg.live, dead, seg.template, payloads))
            keys = _keys_encoder.encode(self.keys) if self.keys else None
            cap = Capture(
                entries, keys, dict(self.position), self.ntotal, self.version, nbytes, written
            )
            if self.floats is not None:
                self.floats.sync()
                cap.float_rows = self.floats.rows
                cap.float_map = self.floats.mapping()
            if self.expiry is not None:
                cap.expiry_bytes = self.expiry.to_bytes()
            cap.expired = self.expired
            return cap

    def searchable_position(self) -> Position:
        """A copy of the position up to which records are searchable."""
        with self.lock.read():
            return dict(self.position)

    def saved(self, cap: Capture, entry: ShardManifest, seq: int | None = None) -> None:
        """Record that the snapshot ``seq`` holding ``cap`` is durable."""
        self.saved_seq = seq
        for seg, digest, version, dead, payloads in cap.written:
            seg.saved_object = digest
            seg.saved_dead = dead
            seg.saved_payloads = payloads
            seg.saved_version = version
        self.saved_version = cap.version
        self.saved_entry = entry

    def merge_plan(self, factor: int, template: str | None = None) -> list[Segment] | None:
        """The sealed segments the tiered policy merges next (:mod:`sinks.merge`):
        only segments of the current codec generation (``template``) merge; older
        ones are re-encoded first (:meth:`reencode`)."""
        if self.new_index is None:
            return None
        sealed = [s for s in self.segments[:-1] if s.template == template]
        if len(sealed) >= 2 and sealed[0].hnsw:
            # A query walks every graph, and an HNSW merge adds the smaller graphs'
            # vectors to a copy of the largest: every sealed graph joins the largest,
            # so a shard searches one graph and its active segment.
            return sealed
        if sealed and isinstance(sealed[0].index, faiss.IndexIVF):
            # Merging IVF segments copies their lists and costs little, while each
            # segment costs a coarse-quantizer search per query: merge in pairs.
            factor = min(factor, 2)
        ceiling = None
        if self._flat:
            # A scan costs the bytes it reads however they are split (sinks.merge).
            ceiling = max(2, self.segment_bytes // max(1, self.code_bytes))
        picked = plan([s.live for s in sealed], factor, max(1, self.seal_at), ceiling)
        return None if picked is None else [sealed[i] for i in picked]

    def merge(self, inputs: list[Segment]) -> bool:
        """Replace ``inputs`` (sealed segments) by one merged segment (blocking).

        Indexes that can remove are read under the read lock (the caller holds their
        batches back meanwhile, see :class:`sinks.gate.WriteGate`); the others
        (HNSW) are never mutated but for their tombstones, so they are read without
        it, and ids replaced or deleted meanwhile are tombstoned again in the merged
        segment. Only the swap takes the write lock. Returns False when a segment
        is no longer there (a concurrent compaction replaced it).
        """
        assert self.new_index is not None
        out, template = self.new_index()
        if any(s.template != template for s in inputs):
            return False  # retrained since the plan: these are re-encoded instead
        stores = [s.payloads for s in inputs]
        if inputs[0].removable:
            with self.lock.read():
                if any(s not in self.segments[:-1] for s in inputs):
                    return False
                merged: Segment | None = None
                if self._flat:
                    merged = Segment(out, codes=self.codes, template=template)
                    # (Rows in merged order: the inputs' rows one after the other.)
                    rows = np.concatenate([index_ids(s.index) for s in inputs])
                    payloads = PayloadStore.gathered(self.schema, stores, rows)
                    if not merged.concat(inputs, payloads):
                        merged = None
                if merged is None:
                    index = merged_index(inputs, out)
                    live = index_ids(index)
                    payloads = PayloadStore.gathered(self.schema, stores, live)
                    merged = Segment(index, codes=self.codes, template=template, payloads=payloads)
            gone = None
        else:
            with self.lock.read():
                before = [s.ids.to_array().copy() for s in inputs]
                largest = max(range(len(inputs)), key=lambda i: inputs[i].ntotal)
                dead = inputs[largest].dead.to_array().copy()
                payloads = PayloadStore.gathered(self.schema, stores, np.concatenate(before))
            others = [ids for i, ids in enumerate(before) if i != largest]
            if inputs[0].hnsw and not any(np.isin(ids, dead).any() for ids in others):
                # The largest graph, copied, takes the others' vectors: a merge costs
                # adding the smaller inputs, not rebuilding all of them. (Not when an
                # id dead in it lives in another input: tombstones go by id.)
                index = grown_graph(inputs, before, largest)
                merged = Segment(
                    index, codes=self.codes, template=template, dead=dead, payloads=payloads
                )
            else:
                index = merged_index(inputs, out, before)
                merged = Segment(index, codes=self.codes, template=template, payloads=payloads)
            gone = before
        with self.lock.write():
            if any(s not in self.segments[:-1] for s in inputs):
                return False
            if gone is not None:
                # Replaced or deleted while the merged index was built.
                for seg, live_before in zip(inputs, gone, strict=True):
                    lost = live_before[~seg.ids.contains(live_before)]
                    if len(lost):
                        merged.forget(lost)
            at = self.segments.index(inputs[0])
            kept = [s for s in self.segments if s not in inputs]
            kept.insert(at, merged)
            self.segments = kept
            self.version += 1
        return True

    def compact(self, min_dead_fraction: float = 0.25) -> int:
        """Rebuild sealed segments whose tombstones exceed ``min_dead_fraction``
        (indexes that cannot remove, like HNSW). Blocking and slow: the rebuild runs
        without the lock (sealed segments of such indexes are never mutated, only
        their tombstone sets grow); only the swap takes the write lock.

        Returns how many segments were rebuilt.
        """
        if self.new_index is None:
            return 0
        rebuilt = 0
        for seg in list(self.segments[:-1]):
            if seg.removable or len(seg.dead) <= min_dead_fraction * max(seg.ntotal, 1):
                continue
            with self.lock.read():
                live_before = seg.ids.to_array().copy()
            fresh = seg.compacted(*self.new_index())
            with self.lock.write():
                if seg not in self.segments:
                    continue
                # Ids replaced or deleted while we rebuilt: tombstone them again.
                gone = live_before[~seg.ids.contains(live_before)]
                if len(gone):
                    fresh.forget(gone)
                self.segments[self.segments.index(seg)] = fresh
                self.version += 1
            rebuilt += 1
        return rebuilt

    def stale(self, template: str | None) -> Segment | None:
        """A sealed segment of an older codec generation than ``template``, if any."""
        return next((s for s in self.segments[:-1] if s.template != template), None)

    def roll(self) -> None:
        """Seal the active segment if it is of an older codec generation than the
        current template, so that new vectors go to a segment of the new one."""
        assert self.new_index is not None
        index, template = self.new_index()
        with self.lock.write():
            active = self.segments[-1]
            if active.template == template:
                return
            fresh = self._segment(index, template)
            if self._flat:
                fresh.reserve(self.seal_at)
            kept = self.segments if active.ntotal else self.segments[:-1]
            self.segments = [*kept, fresh]
            self.version += 1

    def reencode(self, seg: Segment) -> bool:
        """Replace sealed ``seg`` by a copy in a segment of the current template
        (blocking). The vectors are decoded under the read lock and added to the new
        index without it; ids replaced or deleted meanwhile are removed from the
        copy at the swap, under the write lock. Returns False when ``seg`` is no
        longer there (merged or compacted meanwhile)."""
        assert self.new_index is not None
        index, template = self.new_index()
        with self.lock.read():
            if seg not in self.segments[:-1]:
                return False
            ids, vecs = seg.contents()
            payloads = PayloadStore.gathered(self.schema, [seg.payloads], ids)
            if self.floats is not None and len(ids):
                # Codes with their full-precision vectors on disk (rerank): encode
                # those, not the decoded codes (which would add the old codec's error).
                exact, found = self.floats.gather(ids)
                vecs = np.where(found[:, None], exact, vecs).astype(np.float32)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vecs), ids)
        fresh = Segment(index, codes=self.codes, template=template, payloads=payloads)
        with self.lock.write():
            if seg not in self.segments[:-1]:
                return False
            lost = ids[~seg.ids.contains(ids)]
            if len(lost):
                if fresh.removable:
                    fresh.remove(lost)
                else:
                    fresh.forget(lost)
            self.segments = [fresh if s is seg else s for s in self.segments]
            self.version += 1
        return True


def decode_keys(data: bytes) -> dict[int, str]:
    """The key map of a shard from its snapshot object."""
    return _keys_decoder.decode(data)
