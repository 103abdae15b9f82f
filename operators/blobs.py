"""Joining payloads into reusable buffers instead of a new bytes object per chunk.

The raw formats decode a chunk by joining its payloads into one buffer and viewing
it as a 2-D array. ``b"".join`` makes a new bytes object of megabytes for every
chunk: with glibc's mmap threshold pinned (as the CLI does, to keep freed memory
from piling up in the heap) every one of them is mapped afresh and page-faulted
byte by byte; with glibc's default dynamic threshold they come from the heap and
fragment it. A pool of ``io.BytesIO`` buffers is written again and again instead.

When may a buffer be written again? ``BytesIO`` refuses to change while a view of
its bytes is alive (``BufferError``), and every array decoded from it holds such a
view, down to the last stage that keeps the batch. So the buffer itself says when
it is free: no stage has to give anything back. The arrays are writable, which
also spares ``normalize`` a copy.
"""

from __future__ import annotations

import io
import threading

__all__ = ["BlobPool"]


class BlobPool:
    """Byte buffers reused for joining payloads.

    Args:
        keep: most buffers kept; when all are in use, a join gets a buffer of its
            own that is not kept (so memory stays bounded by what is in flight).
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._buffers: list[io.BytesIO] = []
        self._lock = threading.Lock()
        self.reused = 0
        self.allocated = 0

    def join(self, parts: list[bytes]) -> memoryview:
        """The concatenation of ``parts``, in a writable buffer nothing else uses."""
        with self._lock:
            for buf in self._buffers:
                buf.seek(0)
                try:
                    buf.writelines(parts)
                except BufferError:
                    continue  # a batch made from it is still in the pipeline
                self.reused += 1
                return buf.getbuffer()[: buf.tell()]
            buf = io.BytesIO()
            buf.writelines(parts)
            self.allocated += 1
            if len(self._buffers) < self.keep:
                self._buffers.append(buf)
            return buf.getbuffer()[: buf.tell()]
