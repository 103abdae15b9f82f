"""Joining payloads into reusable slabs, one stream's chunks one after another.

The raw formats decode a chunk by joining its payloads into one buffer and viewing
it as a 2-D array. ``b"".join`` makes a new bytes object of megabytes for every
chunk, and a fresh buffer costs a page fault for every 4 KiB written (on this
project's machine a fault costs about eight times the copy of its page). So joins
go to large slabs that are written again and again instead.

A stream's chunks are written one after another into the slab the stream is
filling. Consecutive chunks of a partition therefore lie next to each other in
memory, and :meth:`streams.records.Batch.concat` joins the arrays of a batch made of
them as one view of the slab instead of copying them (at 768-d, a copy of every
vector fewer).

When may a slab be written again? Every array decoded from it holds a reference to
it, down to the last stage that keeps the batch, so the slab itself says when no
stage uses it any more: only the pool refers to it then. No stage has to give
anything back. The arrays are writable, which also spares ``normalize`` a copy.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BlobPool"]


@dataclass
class _Filling:
    """The slab a stream is filling and where its next join goes."""

    slab: npt.NDArray[np.uint8]
    cursor: int = 0


# Whether anything but the one reference the pool holds refers to a slab: every
# array made from a slab refers to it directly (numpy points a view at the array
# that owns the memory), so the count says whether some stage still uses it. The
# checks read the slab out of the pool's own structure inside the call, so the
# count is the pool's reference plus getrefcount's argument.
_UNUSED = 2


class BlobPool:
    """Slabs reused for joining payloads, one being filled per stream.

    Args:
        slab_bytes: size of a slab. A batch made of consecutive chunks of one slab
            costs no copy; one that spans two slabs is copied, so a slab of a few
            batches' bytes copies one batch in a few. A join larger than a slab
            gets a slab of its own size.
        keep_bytes: most bytes of slabs that no stream fills kept for reuse; slabs
            beyond that are freed once their last batch is done with.
        streams: most streams that keep the slab they fill; beyond that, the least
            recently joined streams whose slab nothing uses give it up.
    """

    def __init__(
        self, slab_bytes: int = 32 << 20, keep_bytes: int = 64 << 20, streams: int = 64
    ) -> None:
        self.slab_bytes = slab_bytes
        self.keep_bytes = keep_bytes
        self.streams = streams
        self._filling: OrderedDict[str | None, _Filling] = OrderedDict()
        self._spare: list[npt.NDArray[np.uint8]] = []
        self._lock = threading.Lock()
        self.reused = 0
        """Joins written over memory that earlier joins had written."""
        self.allocated = 0
        """Slabs allocated."""

    def join(self, parts: list[bytes], stream: str | None = None) -> npt.NDArray[np.uint8]:
        """The concatenation of ``parts``, in writable memory nothing else uses:
        right after ``stream``'s previous join when that fits."""
        need = sum(map(len, parts))
        with self._lock:
            filling = self._place(stream, need)
            start = filling.cursor
            filling.cursor += need
            view = filling.slab[start : start + need]
        mem = memoryview(view)  # type: ignore[arg-type]  # (numpy stubs)
        at = 0
        for part in parts:
            end = at + len(part)
            mem[at:end] = part
            at = end
        return view

    def _place(self, stream: str | None, need: int) -> _Filling:
        """``stream``'s slab, with room for ``need`` bytes at its cursor."""
        filling = self._filling.get(stream)
        if filling is not None:
            self._filling.move_to_end(stream)
            if sys.getrefcount(filling.slab) <= _UNUSED and filling.cursor:
                filling.cursor = 0  # every earlier join from it is done with
                self.reused += 1
            if filling.cursor + need <= len(filling.slab):
                return filling
            del self._filling[stream]
            self._retire(filling.slab)
        filling = self._filling[stream] = _Filling(self._take(need))
        self._evict()
        return filling

    def _take(self, need: int) -> npt.NDArray[np.uint8]:
        """A spare slab of at least ``need`` bytes that nothing uses, or a new one."""
        for i in range(len(self._spare)):
            if len(self._spare[i]) >= need and sys.getrefcount(self._spare[i]) <= _UNUSED:
                self.reused += 1
                return self._spare.pop(i)
        self.allocated += 1
        return np.empty(max(need, self.slab_bytes), dtype=np.uint8)

    def _retire(self, slab: npt.NDArray[np.uint8]) -> None:
        """``slab`` is no stream's any more: a spare, reused once nothing uses it.
        Spares that nothing uses beyond ``keep_bytes`` are let go, oldest first
        (the ones still in use are in flight in the pipeline, bounded by it)."""
        spare = self._spare
        spare.append(slab)
        idle = [i for i in range(len(spare)) if sys.getrefcount(spare[i]) <= _UNUSED]
        excess = sum(len(spare[i]) for i in idle) - self.keep_bytes
        drop = []
        for i in idle:
            if excess <= 0:
                break
            drop.append(i)
            excess -= len(spare[i])
        for i in reversed(drop):
            del spare[i]

    def _evict(self) -> None:
        """Beyond ``streams`` streams, the least recently joined ones whose slab
        nothing uses give it up."""
        for stream in list(self._filling)[:-1]:  # not the one just placed
            if len(self._filling) <= self.streams:
                return
            if sys.getrefcount(self._filling[stream].slab) <= _UNUSED:
                self._retire(self._filling.pop(stream).slab)
