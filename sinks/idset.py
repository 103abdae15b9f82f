"""A compact, vectorised set of int64 ids: which ids a shard holds.

An upsert must remove the old vector of an id before adding the new one, but asking
FAISS to remove ids is costly even when none of them is present (``IndexIDMap2``
rebuilds its whole reverse map on every ``remove_ids`` call). This set answers "which
of these ids are present" for a whole batch with one ``np.searchsorted``, so the sink
removes only ids that really exist, and a stream of new ids never pays for removal.

Layout, LSM-style: one sorted array plus recent sorted runs, merged once the runs hold
more than a quarter of the sorted part. 8 bytes per id.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["IdSet"]

Ids = npt.NDArray[np.int64]

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)


class IdSet:
    """A set of int64 ids with batch membership, insertion and removal."""

    def __init__(self, ids: Ids | None = None) -> None:
        self._main: Ids = np.sort(ids) if ids is not None and len(ids) else np.zeros(0, np.int64)
        self._runs: list[Ids] = []
        self._run_total = 0
        self._min = int(self._main[0]) if len(self._main) else INT64_MAX
        self._max = int(self._main[-1]) if len(self._main) else INT64_MIN

    def __len__(self) -> int:
        self._merge()
        return len(self._main)

    def __repr__(self) -> str:
        return f"<IdSet {len(self._main)} sorted + {self._run_total} recent>"

    def contains(self, ids: Ids) -> npt.NDArray[np.bool_]:
        """For every id of ``ids``, whether it is in the set."""
        n = len(ids)
        found = np.zeros(n, dtype=bool)
        if not n or not (len(self._main) or self._runs):
            return found
        lo, hi = int(ids.min()), int(ids.max())
        if lo > self._max or hi < self._min:
            return found  # the append-only case: nothing to look up
        # Sorted queries make searchsorted walk memory in order (several times faster).
        order = np.argsort(ids, kind="stable")
        q = ids[order]
        for sorted_ids in (self._main, *self._runs):
            if len(sorted_ids):
                pos = np.searchsorted(sorted_ids, q)
                np.minimum(pos, len(sorted_ids) - 1, out=pos)
                found |= sorted_ids[pos] == q
        out = np.empty(n, dtype=bool)
        out[order] = found
        return out

    def add(self, ids: Ids) -> None:
        """Insert ``ids``, which must not be in the set yet (ask :meth:`contains`)."""
        if not len(ids):
            return
        run = np.sort(np.asarray(ids, dtype=np.int64))
        self._runs.append(run)
        self._min = min(self._min, int(run[0]))
        self._max = max(self._max, int(run[-1]))
        self._run_total += len(ids)
        if len(self._runs) > 16 or self._run_total > max(65536, len(self._main) // 4):
            self._merge()

    def to_array(self) -> Ids:
        """The ids, sorted."""
        self._merge()
        return self._main

    def discard(self, ids: Ids) -> None:
        """Remove ``ids`` where present."""
        if not len(ids):
            return
        self._merge()
        self._main = self._main[~np.isin(self._main, ids)]

    def _merge(self) -> None:
        if self._runs:
            # Concatenated sorted runs: timsort ("stable") merges them in about
            # linear time, in place (a sorted copy would hold the ids three times
            # over at the merge, a peak that grows with the index).
            merged = np.concatenate([self._main, *self._runs])
            merged.sort(kind="stable")
            self._main = merged
            self._runs = []
            self._run_total = 0
