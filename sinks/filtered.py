"""Filtered search of one segment: only vectors whose payload passes a filter.

The filter (:mod:`sinks.filters`) is evaluated over the segment's payload store
(:mod:`sinks.payloads`), which gives the matching entries; what happens next
depends on how many match and on the index type:

- **Few match** (at most :data:`EXACT_FRACTION` of a flat segment, or of an HNSW
  graph :data:`GRAPH_EXACT_FRACTION`): an exact scan of just those vectors, read
  from the index's codes, is cheaper than any index search, and exact.
- **Otherwise** FAISS searches with an ``IDSelector`` and skips the excluded
  vectors inside its scan: a bitmap over the rows of an id-mapped index (flat
  codes, HNSW, PQ), searched on the inner index so no id translation runs per
  vector; a set of ids for IVF lists.
- **Approximate indexes widen** by the inverse of the selectivity: an HNSW search
  keeps ``efSearch / selectivity`` candidates (excluded ones do not count), an IVF
  search visits ``nprobe / selectivity`` lists. When a query still gets fewer than
  ``k`` results while at least ``k`` vectors match, the segment is searched again
  exhaustively (HNSW: an exact scan; IVF: every list), so ``k`` results come back
  whenever ``k`` vectors match.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from sinks.filters import Filter, evaluate
from sinks.params import SearchParams, make_search_parameters
from sinks.payloads import build_block
from sinks.segment import Segment
from streams.errors import ConfigError

__all__ = ["EXACT_FRACTION", "GRAPH_EXACT_FRACTION", "search_filtered"]

EXACT_FRACTION = 0.02
"""Up to this share of a segment matching, scan just the matches exactly."""

GRAPH_EXACT_FRACTION = 0.05
"""The same for HNSW graphs, whose filtered walk degrades sooner."""

MAX_EF = 4096

Result = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]


def _passes_blank(node: Filter) -> bool:
    """Whether a vector without payload passes ``node``."""
    blank = build_block(np.zeros(1, np.int64), [None], {})
    return bool(evaluate(node, blank)[0])


def search_filtered(
    seg: Segment,
    queries: npt.NDArray[np.float32],
    k: int,
    params: SearchParams | None,
    node: Filter,
    hidden: npt.NDArray[np.int64] | None = None,
) -> Result | None:
    """Top-``k`` of ``seg`` among the vectors that pass ``node`` (blocking, under
    the shard's read lock); ``None`` when none passes. ``hidden``: ids left out
    whatever their payload (expired ones).

    Raises:
        ConfigError: binary segments, which have no filtered search.
    """
    if seg.binary:
        raise ConfigError("filters do not apply to binary codes (--quantize binary)")
    store = seg.payloads
    if store.blank:
        return seg.search(queries, k, params, hidden) if _passes_blank(node) else None
    block = store.block
    mask = evaluate(node, block)
    if hidden is not None and len(hidden):
        mask &= ~np.isin(block.ids, hidden)
    if isinstance(seg.index, faiss.IndexIVF):
        return _ivf(seg, queries, k, params, block.ids, mask)
    rows = seg.payload_rows()
    picked = np.flatnonzero(mask) if rows is None else rows[mask]
    picked = np.sort(picked[picked >= 0])
    if not len(picked):
        return None
    return _mapped(seg, queries, k, params, picked)


def _exact(
    seg: Segment, inner: Any, queries: npt.NDArray[np.float32], k: int, rows: npt.NDArray[np.intp]
) -> Result:
    """Exact top-``k`` over ``rows`` of an id-mapped index's inner index."""
    if isinstance(inner, faiss.IndexFlat):
        n, size = int(inner.ntotal), int(inner.code_size)
        codes = faiss.rev_swig_ptr(inner.codes.data(), n * size)
        vecs = codes.view(np.float32).reshape(n, -1)[rows]
    else:
        vecs = inner.reconstruct_batch(rows.astype(np.int64))
    metric = int(inner.metric_type)
    scores, at = faiss.knn(queries, np.ascontiguousarray(vecs, np.float32), k, metric=metric)
    ids = np.where(at >= 0, seg.row_ids()[rows[np.maximum(at, 0)]], -1)
    return scores.astype(np.float32), ids


def _mapped(
    seg: Segment,
    queries: npt.NDArray[np.float32],
    k: int,
    params: SearchParams | None,
    rows: npt.NDArray[np.intp],
) -> Result:
    inner: Any = faiss.downcast_index(seg.index.index)
    n = int(inner.ntotal)
    count = len(rows)
    k = min(k, count)
    graph = isinstance(inner, faiss.IndexHNSW)
    share = count / max(1, n)
    if share <= (GRAPH_EXACT_FRACTION if graph else EXACT_FRACTION):
        return _exact(seg, inner, queries, k, rows)
    bits = np.zeros(n, bool)
    bits[rows] = True
    packed = np.packbits(bits, bitorder="little")
    sel = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
    wanted = dict(params or {})
    if graph:
        ef = max(int(wanted.get("efSearch", inner.hnsw.efSearch)), k)
        wanted["efSearch"] = min(MAX_EF, max(ef, math.ceil(ef / share)))
    search_params, alive = make_search_parameters(inner, wanted, sel)
    scores, at = inner.search(queries, k, params=search_params)
    del alive, sel
    if graph and (at < 0).any():
        return _exact(seg, inner, queries, k, rows)
    ids = np.where(at >= 0, seg.row_ids()[np.maximum(at, 0)], -1)
    return scores, ids


def _ivf(
    seg: Segment,
    queries: npt.NDArray[np.float32],
    k: int,
    params: SearchParams | None,
    ids: npt.NDArray[np.int64],
    mask: npt.NDArray[np.bool_],
) -> Result | None:
    index: Any = seg.index
    count = int(mask.sum())
    if not count:
        return None
    k = min(k, count)
    share = count / max(1, len(ids))
    # Ids, not rows: an IVF index keeps vectors in lists. The smaller side of the
    # split goes into the selector's hash set.
    if count <= len(ids) - count:
        chosen = np.ascontiguousarray(ids[mask])
        batch = faiss.IDSelectorBatch(len(chosen), faiss.swig_ptr(chosen))
        sel: Any = batch
    else:
        chosen = np.ascontiguousarray(ids[~mask])
        batch = faiss.IDSelectorBatch(len(chosen), faiss.swig_ptr(chosen))
        sel = faiss.IDSelectorNot(batch)
    nlist = int(index.nlist)
    wanted = dict(params or {})
    nprobe = int(wanted.get("nprobe", index.nprobe))
    wanted["nprobe"] = nlist if share <= EXACT_FRACTION else min(nlist, math.ceil(nprobe / share))
    search_params, alive = make_search_parameters(index, wanted, sel)
    scores, out = index.search(queries, k, params=search_params)
    if (out < 0).any() and wanted["nprobe"] < nlist:
        wanted["nprobe"] = nlist
        search_params, alive = make_search_parameters(index, wanted, sel)
        scores, out = index.search(queries, k, params=search_params)
    del alive, sel, batch
    return scores, out
