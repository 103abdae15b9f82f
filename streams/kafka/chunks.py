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
import numpy.typing as npt

from streams.kafka.url import partition_name
from streams.kafka.wire import WireRecords
from streams.keys import decimal_key_ids
from streams.records import Chunk
from streams.slabs import SlabPool

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


def chunk_of(
    tp: Any, messages: list[Any], consumer: Any, fmt: str, slabs: SlabPool | None = None
) -> Chunk:
    """The chunk of one piece (see :func:`pieces`) of partition ``tp``; vector rows
    read straight from a fetch response go to ``slabs`` when given."""
    if isinstance(messages[0], WireRecords):
        (wire,) = messages  # as pieces() cut them
        fast = vectors_chunk(tp, wire, fmt, slabs)
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
    payloads = list(map(value, messages))
    keys = list(map(key, messages))
    if fmt == "f32" and slabs is not None and not any(headers):
        rows = _rows(tp, payloads, keys, slabs)
        if rows is not None:
            return _chunk(tp, fmt, offsets, timestamps, vectors=rows[0], ids=rows[1])
    return _chunk(
        tp,
        fmt,
        offsets,
        timestamps,
        payloads=payloads,
        keys=keys,
        headers=headers if any(headers) else None,
    )


def _rows(
    tp: Any, values: list[bytes | None], keys: list[bytes | None], slabs: SlabPool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None:
    """Record objects' ``f32`` values as vector rows in the partition's slab, and
    their decimal keys as ids: when every value has the same size (no tombstone)
    and every key is a decimal id, else ``None`` (``decode`` then reads them).
    The values' bytes are let go as soon as they are copied, and ``decode`` has
    nothing to join."""
    size = len(values[0] or b"")
    n = len(values)
    if not size or size % 4 or None in values:
        return None
    if sum(map(len, values)) != n * size:  # type: ignore[arg-type]
        return None  # sizes differ: decode says which ones are wrong
    ids = decimal_key_ids(keys)
    if ids is None:
        return None
    slab = slabs.join(values, partition_name(tp.topic, tp.partition))  # type: ignore[arg-type]
    return slab.view("<f4").reshape(n, size // 4), ids


def vectors_chunk(
    tp: Any, wire: WireRecords, fmt: str, slabs: SlabPool | None = None
) -> Chunk | None:
    """A chunk of vectors and ids read straight from a fetch response: ``f32``
    values of one size, decimal keys, no headers; the rows written into the
    partition's slab of ``slabs`` when given. ``None`` otherwise (the per-record
    path then reads it)."""
    if fmt != "f32":
        return None
    size = wire.value_size()
    if not size or size % 4 or wire.header_count.any():
        return None
    ids = wire.ids()
    if ids is None:
        return None
    out = None
    if slabs is not None:
        stream = partition_name(tp.topic, tp.partition)
        out = slabs.take(len(ids) * size, stream).reshape(len(ids), size)
    rows = wire.matrix(out).view("<f4")
    return _chunk(tp, fmt, wire.offsets, wire.timestamps / 1000.0, vectors=rows, ids=ids)


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
