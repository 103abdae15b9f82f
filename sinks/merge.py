"""Segment merging: a tiered policy, in the manner of Lucene's TieredMergePolicy,
keeps the number of sealed segments of a shard logarithmic in its size, so that an
approximate index costs to search about what one index of that size costs.

The policy (:func:`plan`): sealed segments fall into tiers by size (tier ``t``
holds segments of ``floor * factor**t`` up to ``floor * factor**(t+1)`` vectors);
when a tier holds ``factor`` segments, its ``factor`` smallest merge into one of the
next tier. A shard of ``n`` vectors then has at most ``(factor - 1)`` sealed
segments per tier, ``log_factor(n / floor)`` tiers.

IVF segments merge in pairs whatever the factor: their merge only copies lists,
while every segment costs a query one more coarse-quantizer search. HNSW segments
all join the largest as soon as two are sealed (a merge adds the smaller graphs'
vectors to a copy of the largest, and a query walks every graph): a shard searches
one graph plus its active segment, for about twice the adds of one offline build.

Flat-code segments (Flat, SQ, PQ codes in an id map) merge only up to a ceiling,
the shard's ``segment_bytes`` of codes (32 MB), like Lucene's maxMergedSegmentMB:
searching them is a scan whose cost is the bytes scanned however they are split, so
a bigger segment saves a query only a call per segment, while each tier of merges
copies every vector once more. Undersized segments (sealed early, shrunk by
deletes, or from a small ``segment_size``) still merge up to the ceiling. At 1536-d
the merges of full 32 MB segments took about a sixth of the ingest rate.

How segments merge (:func:`merged_index`), from a copy, never moving entries out of
an input a search may be reading:

- IVF segments sharing the trained coarse quantizer: their inverted lists are
  copied list by list into a new empty index (no vector is re-encoded or
  re-assigned).
- Flat, SQ, PQ and LSH codes in an id map: the codes and ids are concatenated.
- HNSW graphs: the largest input's graph is copied and the other inputs' live
  vectors are added to it.
- Everything else: a new index is built from the live vectors.

A merged segment replaces its inputs under the shard's write lock, so a search sees
all the inputs or the merged segment, never both and never neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from sinks.segment import Segment, index_ids

__all__ = ["DEFAULT_MERGE_FACTOR", "grown_graph", "merged_index", "plan"]

DEFAULT_MERGE_FACTOR = 4


def plan(
    sizes: Sequence[int], factor: int, floor: int, ceiling: int | None = None
) -> list[int] | None:
    """The positions (in ``sizes``, the sealed segments' live counts) of the
    segments to merge next, or ``None`` when every tier holds fewer than
    ``factor`` segments.

    ``ceiling``: no merged segment holds more than this; segments of that size
    never merge, and of a tier's ``factor`` smallest only as many as fit merge
    (at least two)."""
    if factor < 2 or len(sizes) < factor:
        return None
    tiers: dict[int, list[int]] = {}
    for i, size in enumerate(sizes):
        if ceiling is not None and size >= ceiling:
            continue
        tier = math.floor(math.log(max(size, floor) / floor, factor) + 1e-9)
        tiers.setdefault(tier, []).append(i)
    for tier in sorted(tiers):
        members = tiers[tier]
        if len(members) < factor:
            continue
        picked = sorted(members, key=lambda i: sizes[i])[:factor]
        if ceiling is not None:
            total, fits = 0, []
            for i in picked:
                if total + sizes[i] > ceiling:
                    break
                total += sizes[i]
                fits.append(i)
            if len(fits) < 2:
                continue
            picked = fits
        return sorted(picked)
    return None


def merged_index(
    inputs: Sequence[Segment], out: Any, lives: Sequence[npt.NDArray[np.int64]] | None = None
) -> Any:
    """``out``, an empty index of the inputs' template, filled with every live entry
    of ``inputs`` (blocking). Reads the inputs only; the caller keeps writers off
    them meanwhile, or gives the inputs' live ids (``lives``) as of a moment it
    held the shard's read lock."""
    first = inputs[0].index
    if isinstance(first, faiss.IndexIVF) and isinstance(out, faiss.IndexIVF):
        _copy_lists(inputs, out)
    elif _flat_map(first) and _flat_map(out):
        _concat_codes(inputs, out)
    else:
        for i, seg in enumerate(inputs):
            live = seg.ids.to_array() if lives is None else lives[i]
            if len(live):
                out.add_with_ids(seg.reconstruct(live), live)
    return out


def grown_graph(
    inputs: Sequence[Segment], lives: Sequence[npt.NDArray[np.int64]], largest: int
) -> Any:
    """A copy of the largest input's graph index (dead entries included: the caller
    keeps them tombstoned) with the other inputs' live vectors added (blocking; the
    inputs are only read)."""
    out = faiss.clone_index(inputs[largest].index)
    for i, seg in enumerate(inputs):
        if i != largest and len(lives[i]):
            out.add_with_ids(seg.reconstruct(lives[i]), lives[i])
    return out


def _flat_map(index: Any) -> bool:
    return isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) and isinstance(
        faiss.downcast_index(index.index), faiss.IndexFlatCodes
    )


def _copy_lists(inputs: Sequence[Segment], out: Any) -> None:
    dst = out.invlists
    for seg in inputs:
        inv = seg.index.invlists
        for lst in range(seg.index.nlist):
            n = inv.list_size(lst)
            if not n:
                continue
            codes, ids = inv.get_codes(lst), inv.get_ids(lst)
            try:
                dst.add_entries(lst, n, ids, codes)
            finally:
                inv.release_codes(lst, codes)
                inv.release_ids(lst, ids)
        out.ntotal += seg.index.ntotal


def _concat_codes(inputs: Sequence[Segment], out: Any) -> None:
    inner = faiss.downcast_index(out.index)
    ids = []
    for seg in inputs:
        src: Any = faiss.downcast_index(seg.index.index)
        n = int(seg.index.ntotal)
        if not n:
            continue
        size = n * int(src.code_size)
        codes = faiss.rev_swig_ptr(src.codes.data(), size).reshape(n, -1)
        inner.add_sa_codes(np.ascontiguousarray(codes))
        ids.append(index_ids(seg.index))
    if ids:
        faiss.copy_array_to_vector(np.concatenate(ids), out.id_map)
    out.ntotal = inner.ntotal
    if isinstance(out, faiss.IndexIDMap2):
        out.construct_rev_map()
