"""A Kafka poll's messages into chunks, on either client and either path.

A partition's messages from one poll are either record objects (librdkafka's, or
aiokafka's where the wire reader left a batch to it) or fetch responses read whole
(:class:`streams.kafka.wire.WireRecords`). :func:`pieces` cuts them into pieces of
at most ``max_records`` records, and fetch responses into runs of vector-like records
and the others; :func:`chunk_of` makes one :class:`~streams.records.Chunk` of a
piece: vector rows and ids straight from the response where the records allow it
(:func:`vectors_chunk`), else payloads, keys and headers per record for ``decode``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from operator import attrgetter
from typing import Any

import numpy as np

from streams.kafka.url import partition_name
from streams.kafka.wire import WireRecords
from streams.records import Chunk

__all__ = ["chunk_of", "fields_of", "pieces", "vectors_chunk"]

RECORD_FIELDS = (
    attrgetter("offset"),
    attrgetter("timestamp"),
    attrgetter("value"),
    attrgetter("key"),
    attrgetter("headers"),
)
"""How to read offset, timestamp (ms), value, key and headers of aiokafka's records
(and of :class:`streams.kafka.wire.WireRecord`)."""


def fields_of(consumer: Any) -> tuple[Any, ...]:
    """How to read offset, timestamp (ms), value, key and headers of one of the
    consumer's messages."""
    return getattr(consumer, "record_fields", None) or RECORD_FIELDS


def pieces(messages: list[Any], max_records: int, vector_runs: bool) -> Iterator[list[Any]]:
    """A partition's messages of one poll in pieces of at most ``max_records``
    records (a fetch response read whole counts as one message in the poll), fetch
    responses cut into runs of vector-like records and others when ``vector_runs``."""
    if not messages:
        return
    if not isinstance(messages[0], WireRecords):
        yield messages  # one record object per message
        return
    run: list[Any] = []  # aiokafka's records after a batch the wire reader left
    for m in messages:
        if not isinstance(m, WireRecords):
            run.append(m)
            continue
        if run:
            yield run
            run = []
        for part in m.runs() if vector_runs else [m]:
            for start in range(0, len(part), max_records):
                yield [
                    part.take(slice(start, start + max_records))
                    if len(part) > max_records
                    else part
                ]
    if run:
        yield run


def chunk_of(tp: Any, messages: list[Any], consumer: Any, fmt: str) -> Chunk:
    """The chunk of one piece (see :func:`pieces`) of partition ``tp``."""
    if isinstance(messages[0], WireRecords):
        (wire,) = messages  # as pieces() cut them
        fast = vectors_chunk(tp, wire, fmt)
        if fast is not None:
            return fast
        messages = wire.records()
    n = len(messages)
    offset, timestamp, value, key, header = fields_of(consumer)
    # map over C-level getters: C-speed passes over the client's record objects.
    first, last = offset(messages[0]), offset(messages[-1])
    if last - first == n - 1:  # offsets only increase: no gap, nothing to read
        offsets = np.arange(first, last + 1, dtype=np.int64)
    else:  # compacted topics and transaction markers leave gaps
        offsets = np.fromiter(map(offset, messages), dtype=np.int64, count=n)
    # A consumer may read all timestamps in C-level passes (librdkafka's are pairs).
    stamps = getattr(consumer, "timestamps", None)
    each = stamps(messages) if stamps is not None else map(timestamp, messages)
    timestamps = np.fromiter(each, dtype=np.float64, count=n) / 1000.0
    headers = list(map(header, messages))
    return _chunk(
        tp,
        fmt,
        offsets,
        timestamps,
        payloads=list(map(value, messages)),
        keys=list(map(key, messages)),
        headers=headers if any(headers) else None,
    )


def vectors_chunk(tp: Any, wire: WireRecords, fmt: str) -> Chunk | None:
    """A chunk of vectors and ids read straight from a fetch response: ``f32``
    values of one size, decimal keys, no headers. ``None`` otherwise (the
    per-record path then reads it)."""
    if fmt != "f32":
        return None
    size = wire.value_size()
    if not size or size % 4 or wire.header_count.any():
        return None
    ids = wire.ids()
    if ids is None:
        return None
    return _chunk(
        tp, fmt, wire.offsets, wire.timestamps / 1000.0, vectors=wire.matrix().view("<f4"), ids=ids
    )


def _chunk(
    tp: Any,
    fmt: str,
    offsets: np.ndarray[Any, Any],
    timestamps: np.ndarray[Any, Any],
    **items: Any,
) -> Chunk:
    return Chunk(
        partition=partition_name(tp.topic, tp.partition),
        source=f"{tp.topic}[{tp.partition}]",
        format=fmt,
        position={"offset": int(offsets[-1]) + 1},
        locations=offsets,
        location_kind="offset",
        timestamps=timestamps,
        read_at=time.time(),
        **items,
    )
