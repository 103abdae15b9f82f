"""Expiry by time (``--ttl``): when each vector of a shard stops being searchable.

A vector expires ``ttl`` seconds after its event time: the record's ``ts``, else
the Kafka timestamp, else the time it was indexed. An upsert renews it (the
newest deadline of an id wins); a delete forgets it. The sink's expiry task
removes what is due from the shard's index at the next deadline (removal as for a
delete: gone from IVF and flat indexes at once, tombstoned and later compacted
out of HNSW graphs), a few milliseconds after it. Until that sweep ran (and in a
snapshot opened read-only, until the writer's next snapshot), searches leave out
the vectors past their deadline themselves (:meth:`Expiry.overdue`), so an
expired vector is invisible at once.

The deadlines of a shard live in :class:`Expiry`, laid out like
:class:`sinks.idset.IdSet`: one array sorted by id (unique ids) plus recent runs
of (id, deadline) in arrival order, folded in once they grow, so a batch costs a
copy, not a Python operation per record. It is written with the shard in every
snapshot (:meth:`Expiry.to_bytes`), so a restart keeps every deadline.
"""

from __future__ import annotations

import math
import re

import numpy as np
import numpy.typing as npt

from streams.errors import ConfigError

__all__ = ["Expiry", "parse_duration"]

Ids = npt.NDArray[np.int64]
Times = npt.NDArray[np.float64]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from ``"7d"``, ``"12h"``, ``"30m"``, ``"3600s"`` or ``"3600"``.

    Raises:
        ConfigError: anything else, or not above 0.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if m is None or float(m.group(1)) <= 0:
        raise ConfigError(
            f"{text!r} is not a duration: give a number and a unit, e.g. 7d, 12h, 30m, 3600s"
        )
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _latest(ids: Ids, deadlines: Times) -> tuple[Ids, Times]:
    """Per id, its last (id, deadline) in arrival order; NaN deadlines (deletes)
    dropped. Sorted by id."""
    if not len(ids):
        return ids, deadlines
    rev_ids, rev_dl = ids[::-1], deadlines[::-1]
    uniq, first = np.unique(rev_ids, return_index=True)
    dl = rev_dl[first]
    keep = ~np.isnan(dl)
    return uniq[keep], dl[keep]


class Expiry:
    """The deadlines of one shard's vectors (see the module docstring).

    Mutated only under the shard's write lock; :meth:`to_bytes` only reads.
    """

    def __init__(self, ids: Ids | None = None, deadlines: Times | None = None) -> None:
        self._ids: Ids = np.zeros(0, np.int64) if ids is None else ids
        self._deadlines: Times = np.zeros(0, np.float64) if deadlines is None else deadlines
        self._runs: list[tuple[Ids, Times]] = []
        self._run_total = 0
        self._next = float(self._deadlines.min()) if len(self._deadlines) else math.inf
        # Changes with every put or sweep; keys the by-deadline view searches read.
        self._version = 0
        self._by_deadline: tuple[int, Ids, Times] | None = None

    def __repr__(self) -> str:
        return f"<Expiry {len(self._ids)} + {self._run_total} recent, next {self._next}>"

    def __len__(self) -> int:
        self._fold()
        return len(self._ids)

    @property
    def next_deadline(self) -> float:
        """The earliest deadline held (``inf`` when none); may be one an upsert or
        delete since replaced, which only makes the sweep look early."""
        return self._next

    def put(self, ids: Ids, deadlines: Times) -> None:
        """Set the deadlines of ``ids`` (an upsert renews)."""
        if not len(ids):
            return
        self._runs.append((np.asarray(ids, np.int64).copy(), np.asarray(deadlines, np.float64)))
        self._run_total += len(ids)
        self._version += 1
        self._next = min(self._next, float(np.min(deadlines)))
        if self._run_total > max(65536, len(self._ids) // 4):
            self._fold()

    def forget(self, ids: Ids) -> None:
        """Drop the deadlines of ``ids`` (deleted)."""
        if len(ids):
            self.put(ids, np.full(len(ids), np.nan))

    def due(self, now: float) -> Ids:
        """The ids whose deadline is ``now`` or earlier; they are forgotten."""
        if now < self._next:
            return np.zeros(0, np.int64)
        self._fold()
        expired = self._deadlines <= now
        out = self._ids[expired]
        if len(out):
            self._ids, self._deadlines = self._ids[~expired], self._deadlines[~expired]
            self._version += 1
        self._next = float(self._deadlines.min()) if len(self._deadlines) else math.inf
        return out

    def overdue(self, now: float) -> Ids:
        """The ids whose deadline is ``now`` or earlier, without forgetting them:
        what a search must leave out until the sweep removed them.

        Reads only (safe under the shard's read lock, beside other readers): the
        deadlines sorted once per change are kept for the next search, so a search
        in the moment between a deadline and its sweep costs a binary search.
        """
        if now < self._next:
            return np.zeros(0, np.int64)
        view = self._by_deadline
        if view is None or view[0] != self._version:
            version = self._version
            ids = np.concatenate([self._ids, *(r[0] for r in self._runs)])
            dl = np.concatenate([self._deadlines, *(r[1] for r in self._runs)])
            ids, dl = _latest(ids, dl)
            order = np.argsort(dl, kind="stable")
            # One assignment: a reader sees the old view or the new one, whole.
            view = self._by_deadline = (version, ids[order], dl[order])
        _, ids, dl = view
        return ids[: int(np.searchsorted(dl, now, side="right"))]

    def _fold(self) -> None:
        if self._runs:
            ids = np.concatenate([self._ids, *(r[0] for r in self._runs)])
            dl = np.concatenate([self._deadlines, *(r[1] for r in self._runs)])
            self._ids, self._deadlines = _latest(ids, dl)
            self._runs = []
            self._run_total = 0

    def to_bytes(self) -> bytes:
        """The deadlines as one object: n ids (int64 LE) then n deadlines (float64
        LE). Reads only."""
        ids = np.concatenate([self._ids, *(r[0] for r in self._runs)])
        dl = np.concatenate([self._deadlines, *(r[1] for r in self._runs)])
        ids, dl = _latest(ids, dl)
        return ids.astype("<i8").tobytes() + dl.astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Expiry:
        """Read what :meth:`to_bytes` wrote.

        Raises:
            ValueError: not such an object.
        """
        if len(data) % 16:
            raise ValueError(f"an expiry object of {len(data)} bytes is not n x 16")
        n = len(data) // 16
        ids = np.frombuffer(data, "<i8", count=n).astype(np.int64)
        dl = np.frombuffer(data, "<f8", count=n, offset=8 * n).astype(np.float64)
        return cls(ids, dl)
