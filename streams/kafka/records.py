"""Kafka records from aiokafka without a Python object per message.

aiokafka turns every message into a record object (with a copy of its key and
value) and then into a ``ConsumerRecord``. :func:`raw_records_marker` returns a key
deserializer that marks a consumer as wanting the fetch responses themselves: its
``getmany`` returns, per partition and fetch response, one
:class:`streams.kafka.wire.WireRecords` (all the response's records as arrays over
its bytes). Where the wire reader declines a response (compression, old message
formats, control batches, see :mod:`streams.kafka.wire`), the marked consumer gets
aiokafka's own record objects for it instead (offset, timestamp, key, value, headers:
no ``ConsumerRecord``). Only a consumer made with the marker is affected; every other
consumer in the process works as before.

The hooks wrap five names of aiokafka's fetcher: ``MemoryRecords`` (so the raw bytes
of a response stay reachable), ``PartitionRecords._unpack_records``,
``PartitionRecords._consumer_record``, and ``Fetcher.__init__`` and ``Fetcher.close``
(a marked consumer's fetcher sends its fetches through a fetch thread,
:mod:`streams.kafka.transport`, and closes it). When a future aiokafka lacks them,
:func:`raw_records_marker` returns ``None`` and the source takes ``ConsumerRecord``
objects as usual (same attributes, slower).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from streams.kafka.transport import ThreadedFetches, threaded_fetches
from streams.kafka.wire import CorruptBatchError, WireRecords, scan

__all__ = ["raw_records_marker"]

log = logging.getLogger("embedstream.kafka")


class _RawRecords:
    """The marker: a key deserializer that is never called."""

    def __init__(self, fetch_thread: bool) -> None:
        self.fetch_thread = fetch_thread

    def __call__(self, key: bytes | None) -> bytes | None:  # pragma: no cover
        return key

    def __repr__(self) -> str:
        return f"<embedstream raw records, fetch thread {self.fetch_thread}>"


_MARKERS = {True: _RawRecords(True), False: _RawRecords(False)}
_installed: bool | None = None


def raw_records_marker(fetch_thread: bool = True) -> Any:
    """The key deserializer that makes a consumer return raw records, or ``None``
    when this aiokafka version cannot do that. With ``fetch_thread``, the
    consumer's fetch requests are also sent and read in a thread of their own
    (:mod:`streams.kafka.transport`, plaintext connections only)."""
    global _installed
    if _installed is None:
        _installed = _install()
    return _MARKERS[fetch_thread] if _installed else None


def _marked(deserializer: Any) -> bool:
    return isinstance(deserializer, _RawRecords)


@dataclass(frozen=True, slots=True)
class Scanned:
    """A partition's records from a fetch response, scanned (:func:`scan`) by the
    fetch thread that read them, so the event loop only takes the result.

    Attributes:
        raw: the records' bytes (a view of the response).
        fetch_offset / check_crcs / read_committed: what they were scanned for; the
            fetcher's partition scans again if it asks for anything else.
        wire / stop: what :func:`scan` returned.
        error: what it raised instead (raised when the records are taken).
    """

    raw: memoryview
    fetch_offset: int
    check_crcs: bool
    read_committed: bool
    wire: WireRecords | None
    stop: int
    error: CorruptBatchError | None

    @classmethod
    def of(
        cls, raw: memoryview, fetch_offset: int, check_crcs: bool, read_committed: bool
    ) -> Scanned:
        """``raw`` scanned from ``fetch_offset``."""
        try:
            wire, stop = scan(
                raw, fetch_offset, check_crcs=check_crcs, read_committed=read_committed
            )
        except CorruptBatchError as exc:
            return cls(raw, fetch_offset, check_crcs, read_committed, None, 0, exc)
        return cls(raw, fetch_offset, check_crcs, read_committed, wire, stop, None)

    def answers(self, fetch_offset: int, check_crcs: bool, read_committed: bool) -> bool:
        """Whether this scan is the one asked for."""
        return (fetch_offset, check_crcs, read_committed) == (
            self.fetch_offset,
            self.check_crcs,
            self.read_committed,
        )

    def result(self) -> tuple[WireRecords | None, int]:
        """What :func:`scan` returned (or raise what it raised)."""
        if self.error is not None:
            raise self.error
        return self.wire, self.stop


def _install() -> bool:
    try:
        from aiokafka.consumer import fetcher
    except ImportError:  # pragma: no cover
        return False
    cls = getattr(fetcher, "PartitionRecords", None)
    original = getattr(cls, "_consumer_record", None)
    unpack = getattr(cls, "_unpack_records", None)
    memory_records = getattr(fetcher, "MemoryRecords", None)
    fetcher_cls = getattr(fetcher, "Fetcher", None)
    if (
        cls is None
        or original is None
        or unpack is None
        or memory_records is None
        or fetcher_cls is None
    ):
        log.info("aiokafka's fetcher is not the one embedstream knows; using ConsumerRecords")
        return False
    if getattr(original, "_embedstream", False):
        return True

    def consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if _marked(self._key_deserializer):
            return record
        return original(self, tp, record)

    class KeepRaw:
        """aiokafka's ``MemoryRecords``, keeping the bytes it reads. They are a
        ``memoryview`` of the response when a fetch thread read it
        (:mod:`streams.kafka.transport`), which also scanned them
        (:class:`Scanned`); aiokafka's parser, which wants ``bytes``, gets a copy
        only if the wire reader leaves the records to it."""

        __slots__ = ("_records", "raw", "scanned")

        def __init__(self, data: bytes | memoryview | Scanned) -> None:
            self.scanned = data if isinstance(data, Scanned) else None
            self.raw = data.raw if isinstance(data, Scanned) else data
            self._records: Any = None

        def has_next(self) -> bool:
            if self._records is not None:  # being read batch by batch
                return bool(self._records.has_next())
            # A whole batch (or legacy message set) is there: what aiokafka's
            # MemoryRecords answers, read from the 12-byte log overhead.
            if len(self.raw) < 12:
                return False
            return 12 + int.from_bytes(self.raw[8:12], "big", signed=True) <= len(self.raw)

        def next_batch(self) -> Any:
            if self._records is None:
                self._records = memory_records(bytes(self.raw))  # type: ignore[misc]
            return self._records.next_batch()

        def size_in_bytes(self) -> int:
            return len(self.raw)

    def unpack_records(self: Any) -> Iterator[Any]:
        raw = getattr(self._records, "raw", None)
        if not _marked(self._key_deserializer) or raw is None:
            yield from unpack(self)
            return
        read_committed = self._isolation_level == fetcher.READ_COMMITTED
        scanned = self._records.scanned
        try:
            if scanned is not None and scanned.answers(
                self.next_fetch_offset, self._check_crcs, read_committed
            ):
                wire, stop = scanned.result()
            else:
                wire, stop = scan(
                    raw,
                    self.next_fetch_offset,
                    check_crcs=self._check_crcs,
                    read_committed=read_committed,
                )
        except CorruptBatchError as exc:
            from aiokafka.errors import CorruptRecordException

            raise CorruptRecordException(f"{exc} - {self._tp}") from None
        if wire is not None:
            self.next_fetch_offset = max(self.next_fetch_offset, wire.next_offset)
            if len(wire):
                yield wire
        if stop < len(raw):
            # A batch the reader leaves to aiokafka, and everything after it.
            self._records = memory_records(bytes(raw[stop:]))  # type: ignore[misc]
            yield from unpack(self)

    fetcher_init = fetcher_cls.__init__
    fetcher_close = fetcher_cls.close

    def init(self: Any, client: Any, *args: Any, **kwargs: Any) -> None:
        fetcher_init(self, client, *args, **kwargs)
        marker = self._key_deserializer
        if isinstance(marker, _RawRecords) and marker.fetch_thread:
            # As the fetcher's partitions will ask (its own settings, parsed):
            # a scan made for anything else is made again on the loop.
            check_crcs = bool(self._check_crcs)
            read_committed = self._isolation_level == fetcher.READ_COMMITTED

            def scanned(records: memoryview, fetch_offset: int) -> Scanned:
                return Scanned.of(records, fetch_offset, check_crcs, read_committed)

            # The fetch task made by __init__ has not run yet: it finds this client.
            self._client = threaded_fetches(self._client, scanned)

    async def close(self: Any) -> None:
        try:
            await fetcher_close(self)
        finally:
            if isinstance(self._client, ThreadedFetches):
                self._client.close()

    consumer_record._embedstream = True  # type: ignore[attr-defined]
    cls._consumer_record = consumer_record
    cls._unpack_records = unpack_records
    fetcher.MemoryRecords = KeepRaw
    fetcher_cls.__init__ = init
    fetcher_cls.close = close
    return True
