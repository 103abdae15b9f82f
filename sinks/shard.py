"""A shard: one FAISS index for one source partition, safe to search while it grows.

Adds and removes take the write side of the shard's readers-writer lock, searches
and snapshot serialisation the read side, so a search never runs during a mutation
(which can crash FAISS) and never sees half of a batch. The shard's ``position``
advances under the same write lock as the index, which makes it the "searchable
position" watermark: everything before it is searchable, nothing after it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import anyio
import faiss
import msgspec
import numpy as np
import numpy.typing as npt

from sinks.floats import FloatStore
from sinks.idset import IdSet
from sinks.rwlock import RWLock
from sinks.store import SnapshotStore
from streams.errors import ConfigError
from streams.records import Batch, Position

__all__ = ["Capture", "Shard", "make_index", "metric_code"]

_keys_encoder = msgspec.msgpack.Encoder()
_keys_decoder = msgspec.msgpack.Decoder(dict[int, str])


def metric_code(metric: str) -> int:
    """The FAISS metric constant for ``"ip"`` or ``"l2"``."""
    if metric == "ip":
        return int(faiss.METRIC_INNER_PRODUCT)
    if metric == "l2":
        return int(faiss.METRIC_L2)
    raise ConfigError(f"unknown metric {metric!r}: use 'ip' (inner product) or 'l2'")


def make_index(dim: int, factory: str, metric: str) -> faiss.Index:
    """An empty index from a ``faiss.index_factory`` string, able to keep ids.

    Index types without ids of their own (Flat, HNSW, PQ...) are wrapped in an
    ``IndexIDMap2``, which keeps ids, supports removal where the inner index does,
    and can be reconstructed by id.
    """
    try:
        index = faiss.index_factory(dim, factory, metric_code(metric))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
        raise ConfigError(
            f"faiss cannot build index {factory!r} at dimension {dim}: {msg}"
        ) from None
    if not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexIVF)):
        index = faiss.IndexIDMap2(index)
    return index


@dataclass(slots=True)
class Capture:
    """A shard's state as written by a snapshot, consistent with its position."""

    object: str
    keys_bytes: bytes | None
    position: Position
    ntotal: int
    version: int
    nbytes: int
    float_rows: int = 0
    float_map: bytes | None = None


class Shard:
    """One partition's index.

    Args:
        name: the partition name (also the shard's key in manifests).
        index: an empty or restored index that keeps ids; for quantised shards an
            ``IndexIDMap2`` over codes, or an ``IndexBinaryIDMap2``.
        position: the partition position the index holds.
        keys: id -> original string key, for string ids.
        codes: batches carry codes (``quantize``), not floats.
        floats: where full-precision vectors go, for exact rerank.
    """

    def __init__(
        self,
        name: str,
        index: Any,
        position: Position | None = None,
        keys: dict[int, str] | None = None,
        *,
        codes: bool = False,
        floats: FloatStore | None = None,
    ) -> None:
        self.name = name
        self.index = index
        self.binary = isinstance(index, faiss.IndexBinary)
        self.codes = codes or self.binary
        self.floats = floats
        self.position: Position = dict(position or {})
        self.keys: dict[int, str] = dict(keys or {})
        self.lock = RWLock()
        self.version = 0
        # Snapshot bookkeeping: the version and manifest entry of the last durable
        # snapshot; an unchanged shard is referenced by that entry again.
        self.saved_version = 0
        self.saved_entry: dict[str, Any] | None = None
        self.searchable_at = 0.0
        # Which ids the index holds, so an upsert removes only ids really present.
        self.ids = IdSet(index_ids(index))
        # While a snapshot writes this shard, batches wait here instead of blocking
        # ingestion on the index lock; the snapshot applies them when it is done.
        self.gate = anyio.Lock()
        self.capturing = False
        self.deferred: list[Batch] = []
        self.deferred_bytes = 0
        self.drained = anyio.Event()
        self.drained.set()

    def __repr__(self) -> str:
        return f"<Shard {self.name!r} ntotal={self.index.ntotal} position={self.position}>"

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def code_bytes(self) -> int:
        """Bytes per vector the index holds in RAM (codes, or 4 x dim for floats)."""
        return int(self.index.code_size if self.binary else self.index.sa_code_size())

    @property
    def dirty(self) -> bool:
        """Changed since the last snapshot."""
        return self.version != self.saved_version or self.saved_entry is None

    def apply(self, batch: Batch) -> None:
        """Upsert and delete ``batch``'s rows, then advance the position (blocking)."""
        ids = batch.ids
        if batch.deleted is not None and batch.deleted.any():
            keep = ~batch.deleted
            add_ids, add_vecs = ids[keep], batch.vectors[keep]
            deleted = ids[batch.deleted]
        else:
            add_ids, add_vecs, deleted = ids, batch.vectors, None
        held = self.ids.contains(ids)
        present = ids[held]
        with self.lock.write():
            if len(present):
                # The Python wrapper takes an id array (the stubs only know IDSelector).
                cast(Any, self.index).remove_ids(np.ascontiguousarray(present, dtype=np.int64))
            if len(add_ids):
                vecs = np.ascontiguousarray(add_vecs)
                add = np.ascontiguousarray(add_ids, dtype=np.int64)
                if self.codes and not self.binary:
                    self.index.add_sa_codes(vecs, add)
                else:
                    self.index.add_with_ids(vecs, add)
                if self.floats is not None and batch.floats is not None:
                    floats = batch.floats if deleted is None else batch.floats[keep]
                    self.floats.append(add, floats)
            if self.floats is not None and deleted is not None:
                self.floats.discard(deleted)
            if batch.keys:
                self.keys.update(batch.keys)
            if deleted is not None and self.keys:
                for i in deleted.tolist():
                    self.keys.pop(i, None)
            self.position.update(batch.position)
            self.version += 1
            self.searchable_at = time.time()
        # Ids held before stay held unless deleted; new ids join the set.
        if deleted is not None:
            self.ids.discard(deleted[self.ids.contains(deleted)])
            fresh = ~held & ~batch.deleted  # type: ignore[operator]
        else:
            fresh = ~held
        self.ids.add(ids[fresh])

    def search(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-``k`` of this shard (blocking); ids -1 where it has fewer than k.

        Binary shards search the queries' sign bits and score by Hamming distance.
        """
        with self.lock.read():
            if self.index.ntotal == 0:
                n = len(queries)
                return np.full((n, k), np.nan, np.float32), np.full((n, k), -1, np.int64)
            if self.binary:
                dist, ids = self.index.search(np.packbits(queries > 0, axis=1), k)
                return dist.astype(np.float32), ids
            scores, ids = self.index.search(queries, k)
        return scores, ids

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
        """Write the index into ``store`` and take the key map and position, all under
        the read lock so they agree (blocking; searches go on meanwhile)."""
        with self.lock.read():

            def produce(write: Callable[[bytes], None]) -> None:
                writer = faiss.PyCallbackIOWriter(write, 1 << 22)  # type: ignore[attr-defined]
                if self.binary:
                    faiss.write_index_binary(self.index, writer)
                else:
                    faiss.write_index(self.index, writer)

            digest, nbytes = store.put_stream(produce)
            keys = _keys_encoder.encode(self.keys) if self.keys else None
            cap = Capture(
                digest, keys, dict(self.position), int(self.index.ntotal), self.version, nbytes
            )
            if self.floats is not None:
                self.floats.sync()
                cap.float_rows = self.floats.rows
                cap.float_map = self.floats.mapping()
            return cap


def decode_keys(data: bytes) -> dict[int, str]:
    """The key map of a shard from its snapshot object."""
    return _keys_decoder.decode(data)


_ID_MAPS = (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2)


def index_ids(index: Any) -> npt.NDArray[np.int64]:
    """Every id an index holds (IDMap wrappers and IVF indexes)."""
    if index.ntotal == 0:
        return np.zeros(0, np.int64)
    if isinstance(
        index,
        (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2),
    ):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    if isinstance(index, faiss.IndexIVF):
        inv: Any = index.invlists
        parts = [
            faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
            for i in range(inv.nlist)
            if inv.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64, copy=False)
    raise ConfigError(f"cannot list the ids of a {type(index).__name__}")
