"""Slabs: memory a stream's rows are written into one chunk after another, and
batches of such chunks as views instead of copies.

Raw vectors (Kafka values, ``f32``/``f16`` payloads) arrive a chunk at a time and
become a chunk's 2-D array: ``decode`` joins the payloads, the Kafka source copies
the values of a fetch response into rows. A new buffer per chunk costs a page
fault for every 4 KiB written (on this project's machine a fault costs about eight
times the copy of its page), and the ``batch`` stage then copied the chunks of a
batch together once more. So chunks go to large slabs that are written again and
again (:class:`SlabPool`), a partition's chunks one after another: the chunks of a
batch then lie next to each other in memory, and :func:`join_rows` (which
:meth:`streams.records.Batch.concat` uses) makes them one view of the slab.

When may a slab be written again? Every array made from it refers to it (numpy
points a view at the array that owns the memory), down to the last stage that
keeps the batch, so the slab itself says when no stage uses it any more: only the
pool refers to it then. No stage has to give anything back. The arrays are
writable, which also spares ``normalize`` a copy.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SPARE_BYTES", "SlabPool", "follows", "join_rows", "starts_slab"]

SPARE_BYTES = 64 << 20
"""Spare slabs a stage's pool keeps for reuse while its stream flows (at least
one slab): about what a pipeline holds in flight at 8 MiB batches."""


@dataclass
class _Filling:
    """The slab a stream is filling and where its next join goes."""

    slab: npt.NDArray[np.uint8]
    cursor: int = 0


_SLABS: weakref.WeakValueDictionary[int, npt.NDArray[np.uint8]] = weakref.WeakValueDictionary()
"""Every slab alive, by ``id``: what tells a slab's views from other arrays'."""

# Whether anything but the one reference the pool holds refers to a slab: every
# array made from a slab refers to it directly (numpy points a view at the array
# that owns the memory), so the count says whether some stage still uses it. The
# checks read the slab out of the pool's own structure inside the call, so the
# count is the pool's reference plus getrefcount's argument.
_UNUSED = 2


class SlabPool:
    """Slabs reused for chunks of rows, one being filled per stream.

    Args:
        slab_bytes: size of a slab. A batch made of consecutive chunks of one slab
            costs no copy; one that spans two slabs is copied, so a slab of a few
            batches' bytes copies one batch in a few. A join larger than a slab
            gets a slab of its own size.
        keep_bytes: most bytes of slabs that no stream fills kept for reuse; slabs
            beyond that are freed once their last batch is done with. Keep about
            what the pipeline holds in flight: a slab freed and then allocated
            again is page-faulted in afresh (the README's "The librdkafka
            consumer's thread" has the figures). :meth:`trim` lets go of them
            when the stream is idle.
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

    def take(self, nbytes: int, stream: str | None = None) -> npt.NDArray[np.uint8]:
        """``nbytes`` of writable memory nothing else uses, right after
        ``stream``'s previous ones when they fit in its slab."""
        with self._lock:
            filling = self._place(stream, nbytes)
            start = filling.cursor
            filling.cursor += nbytes
            return filling.slab[start : start + nbytes]

    def join(self, parts: list[bytes], stream: str | None = None) -> npt.NDArray[np.uint8]:
        """The concatenation of ``parts`` in memory from :meth:`take`."""
        view = self.take(sum(map(len, parts)), stream)
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
        slab = np.empty(max(need, self.slab_bytes), dtype=np.uint8)
        _SLABS[id(slab)] = slab
        return slab

    def _retire(self, slab: npt.NDArray[np.uint8]) -> None:
        """``slab`` is no stream's any more: a spare, reused once nothing uses it.
        Spares that nothing uses beyond ``keep_bytes`` are let go, oldest first
        (the ones still in use are in flight in the pipeline, bounded by it)."""
        self._spare.append(slab)
        self._trim()

    def trim(self, keep_bytes: int | None = None) -> None:
        """Let go of the spares that nothing uses any more beyond ``keep_bytes``
        (default: the pool's). Slabs in flight when they were retired are trimmed
        here once they are done with: call it when the stream is idle, with what
        an idle stream should keep."""
        with self._lock:
            self._trim(self.keep_bytes if keep_bytes is None else keep_bytes)

    def _trim(self, keep_bytes: int | None = None) -> None:
        spare = self._spare
        idle = [i for i in range(len(spare)) if sys.getrefcount(spare[i]) <= _UNUSED]
        keep = self.keep_bytes if keep_bytes is None else keep_bytes
        excess = sum(len(spare[i]) for i in idle) - keep
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


def viewed(a: npt.NDArray[Any] | None) -> bool:
    """Whether ``a`` is a view into a slab of a :class:`SlabPool`, which later
    chunks of its stream may continue."""
    if a is None:
        return False
    base = a.base
    return isinstance(base, np.ndarray) and _SLABS.get(id(base)) is base


def starts_slab(a: npt.NDArray[Any] | None) -> bool:
    """Whether ``a`` is a view at the very start of a slab (the first chunk written
    into it since it was taken)."""
    return viewed(a) and a.ctypes.data == a.base.ctypes.data  # type: ignore[union-attr]


def follows(a: npt.NDArray[Any] | None, b: npt.NDArray[Any] | None) -> bool:
    """Whether the rows of ``b`` lie right after those of ``a`` in the memory of one
    array (as consecutive chunks of a stream in a :class:`SlabPool` do), so that
    :func:`join_rows` makes one view of them."""
    if a is None or b is None or not viewed(a):
        return False
    return (
        b.base is a.base
        and b.ctypes.data == a.ctypes.data + a.nbytes
        and a.dtype == b.dtype
        and a.shape[1:] == b.shape[1:]
        and a.flags.c_contiguous
        and b.flags.c_contiguous
    )


def join_rows(arrays: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """``np.concatenate(arrays)``; one view of their memory instead of a copy when
    each follows the one before (:func:`follows`)."""
    if len(arrays) > 1 and all(map(follows, arrays[:-1], arrays[1:])):
        first = arrays[0]
        owner = first.base
        assert isinstance(owner, np.ndarray)  # (follows checked it)
        return np.ndarray(
            (sum(len(a) for a in arrays), *first.shape[1:]),
            first.dtype,
            buffer=owner,
            offset=first.ctypes.data - owner.ctypes.data,
        )
    return np.concatenate(arrays)
