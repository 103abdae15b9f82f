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

The hooks wrap three names of aiokafka's fetcher: ``MemoryRecords`` (so the raw bytes
of a response stay reachable), ``PartitionRecords._unpack_records`` and
``PartitionRecords._consumer_record``. When a future aiokafka lacks them,
:func:`raw_records_marker` returns ``None`` and the source takes ``ConsumerRecord``
objects as usual (same attributes, slower).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from streams.kafka.wire import CorruptBatchError, scan

__all__ = ["raw_records_marker"]

log = logging.getLogger("embedstream.kafka")


class _RawRecords:
    """The marker: a key deserializer that is never called."""

    def __call__(self, key: bytes | None) -> bytes | None:  # pragma: no cover
        return key

    def __repr__(self) -> str:
        return "<embedstream raw records>"


MARKER = _RawRecords()
_installed: bool | None = None


def raw_records_marker() -> Any:
    """The key deserializer that makes a consumer return raw records, or ``None``
    when this aiokafka version cannot do that."""
    global _installed
    if _installed is None:
        _installed = _install()
    return MARKER if _installed else None


def _install() -> bool:
    try:
        from aiokafka.consumer import fetcher
    except ImportError:  # pragma: no cover
        return False
    cls = getattr(fetcher, "PartitionRecords", None)
    original = getattr(cls, "_consumer_record", None)
    unpack = getattr(cls, "_unpack_records", None)
    memory_records = getattr(fetcher, "MemoryRecords", None)
    if cls is None or original is None or unpack is None or memory_records is None:
        log.info("aiokafka's fetcher is not the one embedstream knows; using ConsumerRecords")
        return False
    if getattr(original, "_embedstream", False):
        return True

    def consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if self._key_deserializer is MARKER:
            return record
        return original(self, tp, record)

    class KeepRaw:
        """aiokafka's ``MemoryRecords``, keeping the bytes it reads."""

        __slots__ = ("_records", "raw")

        def __init__(self, data: bytes) -> None:
            self.raw = data
            self._records = memory_records(data)  # type: ignore[misc]

        def has_next(self) -> bool:
            return bool(self._records.has_next())

        def next_batch(self) -> Any:
            return self._records.next_batch()

        def size_in_bytes(self) -> int:
            return int(self._records.size_in_bytes())

    def unpack_records(self: Any) -> Iterator[Any]:
        raw = getattr(self._records, "raw", None)
        if self._key_deserializer is not MARKER or raw is None:
            yield from unpack(self)
            return
        try:
            wire, stop = scan(
                raw,
                self.next_fetch_offset,
                check_crcs=self._check_crcs,
                read_committed=self._isolation_level == fetcher.READ_COMMITTED,
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
            self._records = memory_records(raw[stop:])  # type: ignore[misc]
            yield from unpack(self)

    consumer_record._embedstream = True  # type: ignore[attr-defined]
    cls._consumer_record = consumer_record
    cls._unpack_records = unpack_records
    fetcher.MemoryRecords = KeepRaw
    return True
