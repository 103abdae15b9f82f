"""Merging top-k lists (from segments, shards or workers) into one."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["merge_topk"]


def merge_topk(
    parts: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]], k: int, order: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Merge per-part ``(scores, ids)`` into the best ``k`` per query.

    ``order`` is ``"ip"`` (higher is better) or ``"l2"`` (lower is better: squared
    distances, Hamming distances). Empty slots (id -1, NaN score) sort last.
    """
    if len(parts) == 1 and parts[0][1].shape[1] == k and order != "ip":
        scores, ids = parts[0]
        if not np.isnan(scores).any():
            return scores, ids
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    key = -scores if order == "ip" else scores.copy()
    key[ids < 0] = np.inf
    key = np.nan_to_num(key, nan=np.inf)
    order_idx = np.argsort(key, axis=1, kind="stable")[:, :k]
    out_scores = np.take_along_axis(scores, order_idx, axis=1)
    out_ids = np.take_along_axis(ids, order_idx, axis=1)
    if out_ids.shape[1] < k:  # fewer candidates than k in all parts together
        pad = k - out_ids.shape[1]
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=np.nan)
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
    return out_scores, out_ids
