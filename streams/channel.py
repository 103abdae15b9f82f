"""Bounded channels with statistics: the only way stages talk to each other.

A channel wraps an anyio memory object stream of fixed capacity. A full channel blocks
its sender, and so on back to the source; the seconds senders spent blocked are the
backpressure signal, the seconds receivers spent waiting are starvation.

Choosing ``capacity``: items are whole chunks or batches, so a handful is plenty.
A larger capacity absorbs bursts but holds more memory (capacity x batch bytes) and
delays the backpressure signal; a smaller one makes the slowest stage visible at
once. The default of 4 keeps every stage busy while the next one works.

``max_bytes`` bounds a channel by what its items hold as well (their ``nbytes``): a
sender waits while the channel holds that many bytes, though an empty channel always
takes one item, however big. Item counts alone let a fast source fill every channel
with whole batches when the sink is the slow stage, which at 768-d is 16 MB a batch:
counts bound the number of waiting items, bytes bound the memory they hold.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Channel", "ChannelStatistics", "Inbox", "Outbox"]

T = TypeVar("T")

DEFAULT_CAPACITY = 4


@dataclass(slots=True)
class ChannelStatistics:
    """A channel's counters. ``items_in == items_out + depth`` at all times."""

    name: str
    capacity: int
    max_bytes: int | None = None
    """Most bytes of items the channel holds before senders wait (``None``: no bound)."""
    depth: int = 0
    queued_bytes: int = 0
    """Bytes of the items waiting in the channel now."""
    peak_depth: int = 0
    items_in: int = 0
    items_out: int = 0
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    send_blocked_seconds: float = 0.0
    receive_wait_seconds: float = 0.0
    closed: bool = False
    first_record_at: float | None = None
    """``time.perf_counter()`` when the first record entered (``None`` before)."""

    @property
    def fill(self) -> float:
        """How full the channel is (0.0 to 1.0): depth as a fraction of capacity, or
        the bytes waiting as a fraction of ``max_bytes`` if that is more."""
        fill = self.depth / self.capacity if self.capacity else 0.0
        if self.max_bytes:
            fill = max(fill, min(1.0, self.queued_bytes / self.max_bytes))
        return fill


def _records(item: object) -> int:
    try:
        return len(item)  # type: ignore[arg-type]
    except TypeError:
        return 1


def _nbytes(item: object) -> int:
    n = getattr(item, "nbytes", 0)
    return n if isinstance(n, int) else 0


class Channel(Generic[T]):
    """A bounded channel between two stages.

    Args:
        name: stable name, used as the metric label (``"decode->batch"``).
        capacity: how many items may wait in the channel; at least 1.
        max_bytes: how many bytes of items may wait (``None``: any); an empty
            channel takes one item of any size.
    """

    def __init__(
        self, name: str, capacity: int = DEFAULT_CAPACITY, max_bytes: int | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError(f"channel {name!r}: capacity must be at least 1, got {capacity}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"channel {name!r}: max_bytes must be at least 1, got {max_bytes}")
        send, receive = anyio.create_memory_object_stream[T](capacity)
        self.stats = ChannelStatistics(name=name, capacity=capacity, max_bytes=max_bytes)
        room = _Room()
        # Sizes of the waiting items in order: what an item weighed when it was sent
        # is what it frees when taken, whatever its nbytes says by then.
        sizes: deque[int] = deque()
        self.outbox: Outbox[T] = Outbox(send, self.stats, room, sizes)
        self.inbox: Inbox[T] = Inbox(receive, self.stats, room, sizes)

    @property
    def name(self) -> str:
        return self.stats.name

    async def aclose(self) -> None:
        """Close both ends. Idempotent."""
        await self.outbox.aclose()
        await self.inbox.aclose()

    def statistics(self) -> ChannelStatistics:
        """A copy of the counters, safe to keep."""
        s = self.stats
        return ChannelStatistics(**{f: getattr(s, f) for f in s.__dataclass_fields__})

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<Channel {s.name!r} [{s.depth}/{s.capacity} | in {s.items_in}, out {s.items_out}"
            f" | blocked {s.send_blocked_seconds:.3f}s, waited {s.receive_wait_seconds:.3f}s]>"
        )


class _Room:
    """Wakes a sender waiting for room when the receiver takes an item (or closes).

    A full channel's sender waits here, then hands its item over with
    ``send_nowait``, instead of parking the item inside the memory stream: a parked
    item can be taken by the receiver and the sender still be cancelled (trio wakes
    it that way), and then the item would be delivered but never counted.
    """

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self.broken = False
        """The receiving side is closed."""

    async def wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None


class Outbox(Generic[T]):
    """The sending end of a :class:`Channel`."""

    def __init__(
        self,
        stream: MemoryObjectSendStream[T],
        stats: ChannelStatistics,
        room: _Room | None = None,
        sizes: deque[int] | None = None,
    ) -> None:
        self._stream = stream
        self._stats = stats
        self._room = room or _Room()
        self._sizes: deque[int] = deque() if sizes is None else sizes

    async def send(self, item: T) -> None:
        """Send one item, waiting while the channel is full.

        Raises:
            anyio.BrokenResourceError: the receiving side is gone.
            anyio.ClosedResourceError: this outbox was closed.
        """
        nbytes = _nbytes(item)
        if not self._put(item, nbytes):
            started = time.perf_counter()
            try:
                while True:
                    await self._room.wait()
                    if self._put(item, nbytes):
                        break
            finally:
                self._stats.send_blocked_seconds += time.perf_counter() - started

    def _put(self, item: T, nbytes: int) -> bool:
        s = self._stats
        if s.max_bytes is not None and s.depth and s.queued_bytes + nbytes > s.max_bytes:
            # Full by bytes: the stream would take it, so say what it would say.
            if s.closed:
                raise anyio.ClosedResourceError
            if self._room.broken:
                raise anyio.BrokenResourceError
            return False
        try:
            self._stream.send_nowait(item)
        except anyio.WouldBlock:
            return False
        s.items_in += 1
        n = _records(item)
        if s.first_record_at is None and n:
            s.first_record_at = time.perf_counter()
        s.records_in += n
        s.bytes_in += nbytes
        s.queued_bytes += nbytes
        self._sizes.append(nbytes)
        s.depth = s.items_in - s.items_out
        if s.depth > s.peak_depth:
            s.peak_depth = s.depth
        return True

    def try_send(self, item: T) -> bool:
        """Send ``item`` if there is room now; ``False`` (and nothing sent) if not."""
        return self._put(item, _nbytes(item))

    async def aclose(self) -> None:
        """Close the sending side; the receiver gets end-of-stream after draining.

        Idempotent.
        """
        self._stats.closed = True
        await self._stream.aclose()

    async def __aenter__(self) -> Outbox[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Inbox(Generic[T]):
    """The receiving end of a :class:`Channel`; an async iterator of its items."""

    def __init__(
        self,
        stream: MemoryObjectReceiveStream[T],
        stats: ChannelStatistics,
        room: _Room | None = None,
        sizes: deque[int] | None = None,
    ) -> None:
        self._stream = stream
        self._stats = stats
        self._room = room or _Room()
        self._sizes: deque[int] = deque() if sizes is None else sizes

    @property
    def name(self) -> str:
        return self._stats.name

    @property
    def wait_seconds(self) -> float:
        """Seconds receivers of this inbox have waited for items so far."""
        return self._stats.receive_wait_seconds

    async def receive(self, timeout: float | None = None) -> T:
        """Receive the next item.

        Args:
            timeout: give up after this many seconds and raise ``TimeoutError``;
                ``None`` waits as long as it takes. Cancelling a receive never
                loses an item.

        Raises:
            anyio.EndOfStream: the sender closed and the channel is drained.
            TimeoutError: nothing arrived within ``timeout``.
        """
        try:
            item = self._stream.receive_nowait()
        except anyio.WouldBlock:
            self._room.notify()
            started = time.perf_counter()
            try:
                if timeout is None or math.isinf(timeout):
                    item = await self._stream.receive()
                else:
                    with anyio.fail_after(max(timeout, 0.0)):
                        item = await self._stream.receive()
            finally:
                self._stats.receive_wait_seconds += time.perf_counter() - started
        self._room.notify()
        s = self._stats
        s.items_out += 1
        s.records_out += _records(item)
        nbytes = self._sizes.popleft() if self._sizes else 0
        s.bytes_out += nbytes
        s.queued_bytes -= nbytes
        s.depth = s.items_in - s.items_out
        return item

    def __aiter__(self) -> Inbox[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Close the receiving side. Idempotent."""
        await self._stream.aclose()
        self._room.broken = True
        self._room.notify()  # a waiting sender finds the channel broken

    async def __aenter__(self) -> Inbox[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
