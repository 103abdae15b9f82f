"""Segments: the FAISS indexes a shard is made of, and how to build and fill them.

A shard appends to one small *active* segment and seals it at ``segment_size``
vectors, then starts a new one (as Lucene and LevelDB do). Appends therefore only
ever grow a small index, so no add has to copy hundreds of megabytes when FAISS
grows its storage (which stalled searches behind the shard lock); and a snapshot
rewrites only segments that changed, while sealed, untouched ones are referenced.

A new flat-code segment reserves its final size up front (:meth:`Segment.reserve`)
and its adds write codes in place, instead of FAISS's grow-by-doubling copies.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Sequence
from typing import Any, cast

import faiss
import numpy as np
import numpy.typing as npt

from sinks.idset import IdSet
from sinks.params import SearchParams, make_search_parameters
from sinks.payloads import Payload, PayloadStore
from streams.errors import ConfigError

__all__ = ["Segment", "faiss_message", "flat_codes", "index_ids", "make_index", "metric_code"]


def _can_remove(index: Any) -> bool:
    """Whether ``remove_ids`` works on this index type (HNSW: no)."""
    try:
        cast(Any, index).remove_ids(np.zeros(0, dtype=np.int64))
    except RuntimeError:
        return False
    return True


def flat_codes(index: Any) -> bool:
    """Whether ``index`` keeps all its vectors in one flat array of codes (Flat, SQ,
    PQ, maybe inside an ``IndexIDMap``): a brute-force scan, for which the number
    of segments hardly matters, and whose array FAISS grows by doubling (an add
    past capacity copies the whole array, both copies resident meanwhile)."""
    if isinstance(index, faiss.IndexBinary):
        return False
    inner = index.index if isinstance(index, faiss.IndexIDMap) else index
    return isinstance(faiss.downcast_index(inner), faiss.IndexFlatCodes)


def metric_code(metric: str) -> int:
    """The FAISS metric constant for ``"ip"`` or ``"l2"``."""
    if metric == "ip":
        return int(faiss.METRIC_INNER_PRODUCT)
    if metric == "l2":
        return int(faiss.METRIC_L2)
    raise ConfigError(f"unknown metric {metric!r}: use 'ip' (inner product) or 'l2'")


_FAISS_WHERE = re.compile(r"^Error in .*? at \S+:\d+: ")


def faiss_message(exc: BaseException) -> str:
    """What a FAISS error says, without the C++ signature and source line that
    FAISS puts in front (``Error in ... at index_factory.cpp:1228: ...``)."""
    lines = str(exc).strip().splitlines()
    return _FAISS_WHERE.sub("", lines[-1]) if lines else type(exc).__name__


def make_index(dim: int, factory: str, metric: str) -> faiss.Index:
    """An empty index from a ``faiss.index_factory`` string, able to keep ids.

    Index types without ids of their own (Flat, HNSW, PQ...) are wrapped in an
    ``IndexIDMap``, which keeps ids and supports removal where the inner index does.
    Not ``IndexIDMap2``: its reverse hash map costs about 50 bytes per vector in RAM
    (10% of a 128-d float vector, 40% of its sq8 code), and the sink already knows
    which segment holds which id (:class:`sinks.idset.IdSet`); reconstructing by id,
    which only tests and compaction need, goes through :func:`reconstruct_ids`.
    """
    try:
        index = faiss.index_factory(dim, factory, metric_code(metric))
    except RuntimeError as exc:
        msg = faiss_message(exc)
        raise ConfigError(
            f"faiss cannot build index {factory!r} at dimension {dim}: {msg}"
        ) from None
    if not isinstance(index, (faiss.IndexIDMap, faiss.IndexIVF)):
        index = faiss.IndexIDMap(index)
    return index


def _reconstruct_from_lists(ivf: Any, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Vectors of ``ids`` from an IVF index without a direct map: found by scanning
    its inverted lists (read-only; for tests, compaction and tuning, not searches)."""
    out = np.zeros((len(ids), ivf.d), dtype=np.float32)
    where = {int(i): row for row, i in enumerate(ids.tolist())}
    inv = ivf.invlists
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        if not n:
            continue
        held = faiss.rev_swig_ptr(inv.get_ids(lst), n)
        for offset in np.flatnonzero(np.isin(held, ids)).tolist():
            ivf.reconstruct_from_offset(lst, offset, faiss.swig_ptr(out[where[int(held[offset])]]))
    return out


def _decode_lists(ivf: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Every (id, vector) of an IVF index: each list's codes, prefixed with the list
    number as FAISS's standalone codes have it, decoded by ``sa_decode``."""
    inv = ivf.invlists
    coarse = int(ivf.coarse_code_size())
    size = int(ivf.code_size)
    ids: list[npt.NDArray[np.int64]] = []
    vecs: list[npt.NDArray[np.float32]] = []
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        if not n:
            continue
        codes = faiss.rev_swig_ptr(inv.get_codes(lst), n * size).reshape(n, size)
        prefix = np.frombuffer(int(lst).to_bytes(8, "little")[:coarse], np.uint8)
        standalone = np.empty((n, coarse + size), np.uint8)
        standalone[:, :coarse] = prefix
        standalone[:, coarse:] = codes
        vecs.append(ivf.sa_decode(standalone))
        ids.append(faiss.rev_swig_ptr(inv.get_ids(lst), n).astype(np.int64))
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, ivf.d), np.float32)
    return np.concatenate(ids), np.concatenate(vecs)


def reconstruct_ids(
    index: Any, ids: npt.NDArray[np.int64], *, reverse_map: bool = True
) -> npt.NDArray[Any]:
    """The stored vectors (or codes) of ``ids``, every one of which ``index`` holds
    (blocking; a scan of the id map for wrappers without a reverse map, or when
    ``reverse_map`` is False because an ``IndexIDMap2``'s is not up to date)."""
    idx: Any = index
    if isinstance(idx, faiss.IndexIVF) and idx.direct_map.no():
        return _reconstruct_from_lists(idx, ids)
    if isinstance(idx, faiss.IndexIVF) or (isinstance(idx, faiss.IndexIDMap2) and reverse_map):
        out: npt.NDArray[Any] = idx.reconstruct_batch(ids)
        return out
    if isinstance(idx, faiss.IndexBinaryIDMap2):
        return np.stack([idx.reconstruct(int(i)) for i in ids])
    held = index_ids(idx)
    order = np.argsort(held, kind="stable")
    where = order[np.searchsorted(held, ids, sorter=order)]
    if isinstance(idx, faiss.IndexBinaryIDMap):
        binary: Any = faiss.downcast_IndexBinary(idx.index)
        return np.stack([binary.reconstruct(int(p)) for p in where])
    inner: Any = faiss.downcast_index(idx.index)
    return np.asarray(inner.reconstruct_batch(where.astype(np.int64)))


_ID_MAPS = (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2)


def index_ids(index: Any) -> npt.NDArray[np.int64]:
    """Every id an index holds (IDMap wrappers and IVF indexes)."""
    if index.ntotal == 0:
        return np.zeros(0, np.int64)
    if isinstance(index, _ID_MAPS):
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


# Wrappers whose adds reserve() can do in place (exact types: a subclass may add
# bookkeeping of its own that the in-place path would skip).
_IN_PLACE = (faiss.IndexIDMap, faiss.IndexIDMap2)


class Segment:
    """One FAISS index of a shard, with the ids it holds and its snapshot state.

    Mutated only under the owning shard's write lock.
    """

    __slots__ = (
        "_area",
        "_buffer",
        "_rows",
        "_stale_rev_map",
        "binary",
        "codes",
        "dead",
        "ids",
        "index",
        "mapped",
        "payloads",
        "removable",
        "saved_dead",
        "saved_object",
        "saved_payloads",
        "saved_version",
        "template",
        "version",
    )

    def __init__(
        self,
        index: Any,
        *,
        codes: bool = False,
        saved_object: str | None = None,
        dead: npt.NDArray[np.int64] | None = None,
        saved_dead: str | None = None,
        template: str | None = None,
        mapped: int = 0,
        payloads: PayloadStore | None = None,
        saved_payloads: str | None = None,
    ) -> None:
        self.index = index
        # Bytes of the snapshot object this index reads in place (FAISS's mmap IO
        # flag): page cache, not this process's memory; 0 when the index owns them.
        self.mapped = mapped
        # The token of the trained template this index was cloned from
        # (:attr:`sinks.config.IndexConfig.token`): its codec generation.
        self.template = template
        self.binary = isinstance(index, faiss.IndexBinary)
        self.codes = codes or self.binary
        self.removable = _can_remove(index)
        # Ids an index that cannot remove (HNSW) still holds but that were replaced
        # or deleted: searches filter them out; compaction drops them for good.
        self.dead = IdSet(dead)
        self.ids = IdSet(index_ids(index))
        if dead is not None and len(dead):
            self.ids.discard(dead)
        self.version = 0
        self.saved_version = 0
        # The objects this segment was last written to; reused while unchanged.
        self.saved_object = saved_object
        self.saved_dead = saved_dead
        self.saved_payloads = saved_payloads
        # The payloads of the vectors it holds (:mod:`sinks.payloads`).
        self.payloads = payloads if payloads is not None else PayloadStore({})
        # (version, ids by row, payload entry -> row) for filtered searches.
        self._rows: tuple[int, Any, Any] | None = None
        # Set by reserve(): the mapping the index's codes live in, and a view of it.
        self._buffer: mmap.mmap | None = None
        self._area: npt.NDArray[np.uint8] | None = None
        # In-place adds leave an IndexIDMap2's reverse map (id -> row) behind; it is
        # rebuilt before FAISS itself adds or removes, and lookups scan meanwhile.
        self._stale_rev_map = False

    def __repr__(self) -> str:
        return f"<Segment ntotal={self.ntotal} saved={self.saved_object is not None}>"

    @property
    def ntotal(self) -> int:
        """Entries in the index, dead ones included."""
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        """Entries searches can return."""
        return self.ntotal - len(self.dead)

    @property
    def dirty(self) -> bool:
        return self.saved_object is None or self.version != self.saved_version

    def reserve(self, capacity: int, *, populate: bool = False) -> bool:
        """Give an empty flat-code segment (:func:`flat_codes` in an ``IndexIDMap``
        or ``IndexIDMap2``) room for ``capacity`` vectors up front, so that adds
        write codes in place.

        FAISS grows an index's code array by doubling: every growth allocates a new
        array, copies the old one into it and frees it, so filling a segment writes
        its bytes about three times over, in fresh pages each time (on the Kafka
        benchmark 23,000 of 167,000 page faults a run), and for a moment holds both
        arrays (19 MB of its peak RSS). Here the codes go to one anonymous mapping
        of the final size, whose pages the kernel provides as they are first
        written; the index reads them through a FAISS view (``MaybeOwnedVector``)
        that each add extends. ``populate``: the caller fills it at once, so the
        kernel provides every page up front (one call instead of a fault a page).
        Returns whether it did.
        """
        private = getattr(mmap, "MAP_PRIVATE", None)  # (not on Windows)
        if type(self.index) not in _IN_PLACE or self.ntotal or capacity <= 0 or private is None:
            return False
        inner: Any = faiss.downcast_index(self.index.index)
        if not isinstance(inner, faiss.IndexFlatCodes) or isinstance(inner, faiss.IndexFlat1D):
            return False  # (IndexFlat1D's own add also maintains a sort order)
        nbytes = capacity * int(inner.code_size)
        flags = private | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        buffer = mmap.mmap(-1, nbytes, flags=flags)
        self._buffer = buffer
        self._area = np.frombuffer(buffer, dtype=np.uint8)
        self._view(inner, 0)
        # The id map gets its final size up front too (std::vector keeps its
        # capacity when it shrinks): grown by doubling, each segment's left freed
        # blocks in glibc's heap between long-lived ones.
        id_map = self.index.id_map
        id_map.resize(capacity)
        id_map.resize(0)
        # Whoever holds the index keeps the mapping alive, through the list faiss
        # keeps the objects an index points into in (it may hold the inner index).
        refs = list(getattr(self.index, "referenced_objects", []))
        self.index.referenced_objects = [*refs, buffer]
        return True

    def _view(self, inner: Any, nbytes: int) -> None:
        """Point ``inner``'s codes at the first ``nbytes`` of the reserved area (a
        view must have its exact size: ``write_index`` writes ``size()`` bytes)."""
        assert self._area is not None
        view: Any = faiss.MaybeOwnedVectorUInt8()
        ptr = faiss.swig_ptr(self._area)
        view.is_owned = False
        view.view_data = view.c_ptr = ptr
        view.view_size = view.c_size = nbytes
        inner.codes = view

    def _own(self) -> None:
        """Move the codes out of the reserved area into an array FAISS owns, before
        an operation that resizes it (FAISS aborts the process when asked to
        resize a view)."""
        if self._area is None:
            return
        inner: Any = faiss.downcast_index(self.index.index)
        owned = faiss.MaybeOwnedVectorUInt8()
        faiss.copy_array_to_vector(self._area[: self.ntotal * int(inner.code_size)], owned)
        inner.codes = owned
        if self._stale_rev_map:
            self.index.construct_rev_map()
            self._stale_rev_map = False
        buffer, self._area, self._buffer = self._buffer, None, None
        refs = self.index.referenced_objects
        self.index.referenced_objects = [r for r in refs if r is not buffer]

    def _materialize(self) -> None:
        """Before the first write to a mapped index: copy it into memory it owns
        (the mapping is read-only, and is the snapshot object itself)."""
        if self.mapped:
            if self.binary:
                data = faiss.serialize_index_binary(self.index)
                self.index = faiss.deserialize_index_binary(data)
            else:
                self.index = faiss.deserialize_index(faiss.serialize_index(self.index))
            self.mapped = 0

    def _add_in_place(
        self, vecs: npt.NDArray[Any], ids: npt.NDArray[np.int64], raw: bool = False
    ) -> bool:
        """What ``add_with_ids`` / ``add_sa_codes`` do, writing into the reserved
        area; False when it has no room left (the caller falls back to FAISS).
        ``raw``: ``vecs`` are codes of this index's encoding, whatever it holds."""
        assert self._area is not None
        n, b = self.ntotal, len(ids)
        inner: Any = faiss.downcast_index(self.index.index)
        size = int(inner.code_size)
        if (n + b) * size > len(self._area) or len(vecs) != b or not inner.is_trained:
            return False  # FAISS's own add then grows the array or says what is wrong
        if (self.codes or raw) and (vecs.dtype != np.uint8 or vecs.shape != (b, size)):
            return False
        dest = self._area[n * size : (n + b) * size].reshape(b, size)
        if self.codes or raw:
            dest[:] = vecs
        else:
            inner.sa_encode(vecs, dest)
        self._view(inner, (n + b) * size)
        inner.ntotal = n + b
        id_map = self.index.id_map
        id_map.resize(n + b)
        faiss.rev_swig_ptr(id_map.data(), n + b)[n:] = ids
        self.index.ntotal = n + b
        # An IndexIDMap2 also keeps id -> row in a hash map that Python cannot
        # reach; it is rebuilt (construct_rev_map) when FAISS next needs it.
        self._stale_rev_map = isinstance(self.index, faiss.IndexIDMap2)
        return True

    def add(
        self,
        vectors: npt.NDArray[Any],
        ids: npt.NDArray[np.int64],
        payloads: list[Payload] | None = None,
    ) -> None:
        """Add rows (floats, or codes for quantised segments) with ``ids`` and
        their ``payloads`` (``None``: none has one)."""
        vecs = np.ascontiguousarray(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if payloads is not None and self.payloads.blank and any(p is not None for p in payloads):
            self.payloads.materialize(self.live_ids())
        self._materialize()
        added = False
        if self._area is not None:
            added = self._add_in_place(vecs, ids)
            if not added:
                self._own()
        if not added:
            if self.codes and not self.binary:
                self.index.add_sa_codes(vecs, ids)
            else:
                self.index.add_with_ids(vecs, ids)
        self.ids.add(ids)
        self.payloads.append(ids, payloads)
        self.version += 1

    def concat(self, inputs: Sequence[Segment], payloads: PayloadStore) -> bool:
        """Fill this empty flat-code segment with every entry of ``inputs`` (of
        its codec), their codes copied once into one reserved mapping of the total
        size (blocking; :meth:`reserve`), where FAISS's own concatenation grows its
        array by doubling and fills each growth with zeros first, all of it under
        the shard's read lock. False (nothing changed) where it cannot reserve."""
        total = sum(int(s.index.ntotal) for s in inputs)
        if not self.reserve(total, populate=True):
            return False
        for seg in inputs:
            n = int(seg.index.ntotal)
            if not n:
                continue
            src: Any = faiss.downcast_index(seg.index.index)
            codes = faiss.rev_swig_ptr(src.codes.data(), n * int(src.code_size))
            ids = index_ids(seg.index)
            added = self._add_in_place(codes.reshape(n, -1), ids, raw=True)
            assert added, "reserved for every input"
            self.ids.add(ids)
        self.payloads = payloads
        self.version += 1
        return True

    def live_ids(self) -> npt.NDArray[np.int64]:
        """The ids searches can return, in the order of the index's rows."""
        held = index_ids(self.index)
        return held[~self.dead.contains(held)] if len(self.dead) else held

    def row_ids(self) -> npt.NDArray[np.int64]:
        """The id of every row of the index (cached until it changes)."""
        ids: npt.NDArray[np.int64] = self._row_cache()[1]
        return ids

    def payload_rows(self) -> npt.NDArray[np.intp] | None:
        """The row of each payload entry (:meth:`PayloadStore.rows_in`)."""
        rows: npt.NDArray[np.intp] | None = self._row_cache()[2]
        return rows

    def _row_cache(self) -> tuple[int, Any, Any]:
        got = self._rows
        if got is None or got[0] != self.version:
            index = self.index
            if isinstance(index, _ID_MAPS) and index.ntotal:
                # A view of the id map, not a copy (8 bytes a vector): it is only
                # read under the shard's read lock, and rebuilt when the version
                # changes (an add may move the id map).
                held = faiss.rev_swig_ptr(index.id_map.data(), index.ntotal)
            else:
                held = index_ids(index)
            got = (self.version, held, self.payloads.rows_in(held))
            self._rows = got
        return got

    def remove(self, ids: npt.NDArray[np.int64]) -> None:
        """Remove ``ids``, all of which this segment holds.

        Raises:
            ConfigError: the index type cannot remove (HNSW): upserts and deletes of
                ids it holds are impossible.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self._own()
        if self.removable:
            self._materialize()
            # The Python wrapper takes an id array (the stubs only know IDSelector).
            cast(Any, self.index).remove_ids(ids)
        elif self.hnsw:
            self.dead.add(ids)
        else:
            raise ConfigError(
                f"a {type(self.index).__name__} index cannot remove ids, so it cannot take "
                f"an upsert or delete of an id it holds (id {int(ids[0])}); use a removable "
                "index type (Flat, IVF..., PQ, SQ8, HNSW) or an append-only stream"
            )
        self.ids.discard(ids)
        self.payloads.remove(ids)
        self.version += 1

    def forget(self, ids: npt.NDArray[np.int64]) -> None:
        """Tombstone ``ids`` in a segment just built from a copy (a merge or
        re-encode), because they were replaced or deleted while it was built."""
        self.dead.add(ids)
        self.ids.discard(ids)
        self.payloads.remove(ids)
        self.version += 1

    @property
    def hnsw(self) -> bool:
        inner = getattr(self.index, "index", self.index)
        return isinstance(faiss.downcast_index(inner), faiss.IndexHNSW)

    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        params: SearchParams | None = None,
        hidden: npt.NDArray[np.int64] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-``k`` of this segment, with search-time ``params`` (:mod:`sinks.params`);
        binary segments search the queries' sign bits and score by Hamming distance.
        ``hidden``: ids left out (besides the dead ones), e.g. expired ones.

        Raises:
            ConfigError: a parameter this segment's index type does not have.
        """
        if hidden is not None:
            hidden = hidden[self.ids.contains(hidden)] if len(hidden) else None
            hidden = hidden if hidden is not None and len(hidden) else None
        if self.binary:
            if params:
                raise ConfigError("binary codes (--quantize binary) take no search parameters")
            return self._search_binary(queries, k, hidden)
        sel = keep = None
        if len(self.dead) or hidden is not None:
            parts = [self.dead.to_array()] if len(self.dead) else []
            dead = np.concatenate([*parts, *([hidden] if hidden is not None else [])])
            keep = faiss.IDSelectorBatch(len(dead), faiss.swig_ptr(dead))
            sel = faiss.IDSelectorNot(keep)
        search_params, alive = make_search_parameters(self.index, params or {}, sel)
        if search_params is None:
            scores, ids = self.index.search(queries, k)
        else:
            scores, ids = self.index.search(queries, k, params=search_params)
        del keep, alive  # kept alive until the search is done
        return scores, ids

    def _search_binary(
        self, queries: npt.NDArray[np.float32], k: int, hidden: npt.NDArray[np.int64] | None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        bits = np.packbits(queries > 0, axis=1)
        if hidden is None:
            dist, ids = self.index.search(bits, k)
            return dist.astype(np.float32), ids
        # Binary indexes take no selector: ask for the hidden ones more, drop them.
        want = min(self.ntotal, k + len(hidden))
        dist, ids = self.index.search(bits, want)
        keep = (ids >= 0) & ~np.isin(ids, hidden)
        # Per row, the kept results first, in their order.
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(keep, order, axis=1)
        out_d = np.where(kept, np.take_along_axis(dist, order, axis=1), np.nan)
        out_i = np.where(kept, np.take_along_axis(ids, order, axis=1), -1)
        return out_d.astype(np.float32), out_i

    def reconstruct(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """The stored vectors (or codes) of ``ids``, all of which this segment holds
        (read-only: safe under the shard's read lock)."""
        return reconstruct_ids(self.index, ids, reverse_map=not self._stale_rev_map)

    def compacted(self, new_index: Any, template: str | None) -> Segment:
        """A copy without the dead entries, in ``new_index`` (blocking, slow for
        HNSW: run it off the lock; the caller swaps it in)."""
        live = self.ids.to_array()
        if len(live):
            new_index.add_with_ids(self.reconstruct(live), live)
        payloads = PayloadStore.gathered(self.payloads.schema, [self.payloads], live)
        return Segment(new_index, codes=self.codes, template=template, payloads=payloads)

    def contents(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
        """Every live id and its stored vector, decoded from the codes (read-only:
        safe under the shard's read lock). IVF lists are decoded a list at a time,
        with no per-vector Python work."""
        if isinstance(self.index, faiss.IndexIVF):
            ids, vecs = _decode_lists(self.index)
            if len(self.dead):
                alive = ~self.dead.contains(ids)
                ids, vecs = ids[alive], vecs[alive]
            return ids, vecs
        live = self.ids.to_array()
        if not len(live):
            return live, np.zeros((0, self.index.d), np.float32)
        return live, self.reconstruct(live)

    def write(self, writer: Any) -> None:
        """Serialise into a FAISS IOWriter (plain ``read_index`` format)."""
        if self.binary:
            faiss.write_index_binary(self.index, writer)
        else:
            faiss.write_index(self.index, writer)
