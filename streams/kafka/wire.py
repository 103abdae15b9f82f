"""Kafka record batches (message format v2) read straight into arrays.

A fetch response holds each partition's records as record batches, byte for byte as
the producer wrote them (the broker sends them with ``sendfile``)::

    batch:  baseOffset int64, batchLength int32, partitionLeaderEpoch int32,
            magic int8 (= 2), crc uint32 (CRC-32C of what follows it),
            attributes int16, lastOffsetDelta int32, baseTimestamp int64,
            maxTimestamp int64, producerId int64, producerEpoch int16,
            baseSequence int32, recordCount int32, then the records
    record: length varint, attributes int8, timestampDelta varlong,
            offsetDelta varint, keyLength varint, key, valueLength varint, value,
            headerCount varint, headers (keyLength varint, key, valueLength varint,
            value each)

(varints are zigzag-encoded, as in protobuf; a length of -1 is null). aiokafka
makes a Python object per record, with a copy of its key and value, and checks each
batch's CRC at 1.4 GB/s; at 768-d that was most of its ``getmany`` time.
:func:`scan` instead finds where every record's fields sit with a few vectorised
passes over the whole response: only the record *lengths* are read one after
another, and where consecutive records have the same length (fixed-size vectors
do) one numpy comparison confirms a whole run of them. The values of a run of
equally spaced records are then one strided copy into a 2-D array
(:meth:`WireRecords.matrix`).

Compressed batches (gzip, snappy, lz4, zstd, with aiokafka's codecs) are read the
same way once their records are decompressed. :func:`scan` stops at what it does
not read: message formats before v2, control batches, and transactional batches
under ``read_committed``. It returns the records before that point and where it
stopped; the caller takes aiokafka's per-record path from there, so every case
still works, at the old speed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiokafka import codec

from streams.keys import decimal_ids

__all__ = ["Buffer", "CorruptBatchError", "WireRecord", "WireRecords", "scan"]

Buffer = bytes | memoryview
"""A fetch response's record bytes: ``bytes`` from aiokafka, a view of the response
from a fetch thread (:mod:`streams.kafka.transport`)."""

_BATCH = struct.Struct(">qiibIhiqqqhii")
"""baseOffset .. recordCount: the 61-byte batch header."""
_HEADER = _BATCH.size
_CRC_FROM = 21
"""The CRC covers the batch from its attributes on."""
_COMPRESSION = 0x07
_LOG_APPEND_TIME = 0x08
_TRANSACTIONAL = 0x10
_CONTROL = 0x20

_SMALL_BATCH = 32
"""Batches of fewer records have their record starts read in a plain loop."""

_GATHER_RUNS = 16
""":meth:`WireRecords.matrix` gathers rows one by one (in C) instead of copying runs
of equally spaced rows when the runs average fewer rows than this."""
_GATHER_ROWS = 256
"""Rows per gather (the temporary it makes stays below a few MB)."""

_RUN_TRIES = 32
"""Runs of equal-length records tried per batch before reading lengths one by one
(records of ever-changing lengths make each try confirm only a few)."""

_CODECS: dict[int, tuple[Callable[[], bool], Callable[[Any], bytes]]] = {
    1: (lambda: bool(codec.has_gzip()), codec.gzip_decode),
    2: (lambda: bool(codec.has_snappy()), lambda d: codec.snappy_decode(bytes(d))),
    3: (lambda: bool(codec.has_lz4()), lambda d: codec.lz4_decode(bytes(d))),
    4: (lambda: bool(codec.has_zstd()), lambda d: codec.zstd_decode(bytes(d))),
}
"""Compression type -> (is the codec installed, decompress): aiokafka's codecs."""

try:  # hardware CRC-32C (SSE 4.2 / ARMv8)
    from crc32c import crc32c as _crc32c
except ImportError:  # pragma: no cover - aiokafka's own, in software
    from aiokafka.record.util import calc_crc32c as _crc32c  # type: ignore[no-redef]


class CorruptBatchError(ValueError):
    """A record batch whose checksum or structure is wrong."""


@dataclass(frozen=True, slots=True)
class WireRecord:
    """One record, for consumers of :meth:`WireRecords.records` (the per-record path:
    formats that are parsed record by record anyway, nulls, headers)."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


@dataclass(eq=False, slots=True)
class WireRecords:
    """The records of one partition's fetch response, as arrays over its bytes.

    Attributes:
        data: the response's record bytes (every position below points into them).
        offsets: each record's offset.
        timestamps: each record's timestamp, epoch milliseconds.
        key_at / key_len: where each key starts and its length (-1: null).
        value_at / value_len: the same for values.
        header_at / header_count: where each record's headers start, and how many.
        next_offset: the offset after the last batch (compaction may leave a gap).
    """

    data: Buffer
    offsets: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    key_at: npt.NDArray[np.int64]
    key_len: npt.NDArray[np.int64]
    value_at: npt.NDArray[np.int64]
    value_len: npt.NDArray[np.int64]
    header_at: npt.NDArray[np.int64]
    header_count: npt.NDArray[np.int64]
    next_offset: int

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def offset(self) -> int:
        """The first record's offset (where a re-read starts)."""
        return int(self.offsets[0])

    def take(self, rows: slice) -> WireRecords:
        """The records ``rows`` (over the same bytes)."""
        return WireRecords(
            self.data,
            self.offsets[rows],
            self.timestamps[rows],
            self.key_at[rows],
            self.key_len[rows],
            self.value_at[rows],
            self.value_len[rows],
            self.header_at[rows],
            self.header_count[rows],
            self.next_offset,
        )

    def runs(self) -> list[WireRecords]:
        """The records cut where they change between vector-like (a value of the
        most common size, a key, no headers) and not: tombstones or headers here
        and there leave the runs around them readable as rows (:meth:`matrix`)."""
        n = len(self)
        if n == 0:
            return [self]
        sizes = self.value_len
        values, counts = np.unique(sizes, return_counts=True)
        size = int(values[counts.argmax()])
        like = (sizes == size) & (self.header_count == 0) & (self.key_len > 0)
        if like.all() or not like.any():
            return [self]
        cuts = (np.flatnonzero(like[1:] != like[:-1]) + 1).tolist()
        return [self.take(slice(a, b)) for a, b in zip([0, *cuts], [*cuts, n], strict=True)]

    def bytes_view(self) -> npt.NDArray[np.uint8]:
        """The response bytes as a read-only uint8 array."""
        return np.frombuffer(self.data, dtype=np.uint8)

    def value_size(self) -> int | None:
        """The size every value has, when all have the same one and none is null."""
        lens = self.value_len
        if not len(lens):
            return None
        size = int(lens[0])
        return size if size >= 0 and bool((lens == size).all()) else None

    def matrix(self, out: npt.NDArray[np.uint8] | None = None) -> npt.NDArray[np.uint8]:
        """The values as rows of an ``(n, size)`` array, ``out`` or a new one; every
        value must have the same size (:meth:`value_size`). One strided copy per
        run of equally spaced records."""
        size = self.value_size()
        if size is None:
            raise ValueError("the values differ in size (or some are null)")
        at = self.value_at
        n = len(at)
        if out is None:
            out = np.empty((n, size), dtype=np.uint8)
        elif out.shape != (n, size) or out.dtype != np.uint8:
            raise ValueError(f"out must be a ({n}, {size}) uint8 array, not {out.shape}")
        gaps = np.diff(at)
        # Where the spacing changes: each run [a, b] has one stride.
        changes = np.flatnonzero(gaps[1:] != gaps[:-1]) + 1
        if len(changes) * _GATHER_RUNS > n:
            # Short runs (small batches: a run ends at each batch's header): gather
            # rows through a view with a row at every byte, in slices that keep
            # the temporary small.
            rows_at = np.lib.stride_tricks.as_strided(
                self.bytes_view(),
                (max(len(self.data) - size + 1, 0), size),
                (1, 1),
                writeable=False,
            )
            for s in range(0, n, _GATHER_ROWS):
                out[s : s + _GATHER_ROWS] = rows_at[at[s : s + _GATHER_ROWS]]
            return out
        a = 0
        for b in [*changes.tolist(), n - 1]:
            if b < a:
                continue
            stride = int(gaps[a]) if b > a else size
            # numpy checks that the strided rows lie within the bytes.
            out[a : b + 1] = np.ndarray(
                (b + 1 - a, size), np.uint8, self.data, int(at[a]), (stride, 1)
            )
            a = b + 1
        return out

    def ids(self) -> npt.NDArray[np.int64] | None:
        """The keys as int64 ids when every key is a canonical decimal
        (:func:`streams.keys.decimal_ids`), else ``None``."""
        lens = self.key_len
        if len(lens) and lens.min() < 1:
            return None
        return decimal_ids(self.bytes_view(), self.key_at, lens)

    def records(self) -> list[WireRecord]:
        """Every record as an object (the per-record path)."""
        data = self.data
        out = []
        for offset, ts, ka, kl, va, vl, ha, hc in zip(
            self.offsets.tolist(),
            self.timestamps.tolist(),
            self.key_at.tolist(),
            self.key_len.tolist(),
            self.value_at.tolist(),
            self.value_len.tolist(),
            self.header_at.tolist(),
            self.header_count.tolist(),
            strict=True,
        ):
            out.append(
                WireRecord(
                    offset,
                    ts,
                    None if kl < 0 else bytes(data[ka : ka + kl]),
                    None if vl < 0 else bytes(data[va : va + vl]),
                    _headers(data, ha, hc) if hc else [],
                )
            )
        return out


def scan(
    data: Buffer, fetch_offset: int, *, check_crcs: bool = True, read_committed: bool = False
) -> tuple[WireRecords | None, int]:
    """Find every record of the v2 batches in ``data`` (a partition's records from
    a fetch response), skipping records before ``fetch_offset``.

    Returns the records read (``None`` when no batch was) and the byte where
    reading stopped: the end, a trailing partial batch (the broker may cut the
    last one; the next fetch starts there), or the first batch it does not read
    (see the module docstring), which the caller reads with aiokafka.
    Raises :class:`CorruptBatchError` for a wrong checksum or a batch whose
    records do not add up."""
    end = len(data)
    pos = 0
    # Each batch's records: (bytes, start, end) of the records' section.
    sections: list[tuple[Buffer, int, int]] = []
    bases: list[int] = []
    counts: list[int] = []
    first_ts: list[int] = []
    append_ts: list[int] = []
    next_offset = fetch_offset
    compressed = False
    while pos + _HEADER <= end:
        base, length, _, magic, crc, attrs, last_delta, ts0, ts_max, _, _, _, count = (
            _BATCH.unpack_from(data, pos)
        )
        batch_end = pos + 12 + length
        if batch_end > end:
            break  # partial: the next fetch starts there
        if magic != 2 or attrs & _CONTROL or (read_committed and attrs & _TRANSACTIONAL):
            break
        codec = _CODECS.get(attrs & _COMPRESSION)
        if attrs & _COMPRESSION and (codec is None or not codec[0]()):
            break  # a codec aiokafka lacks: its error says which package to install
        if check_crcs and _crc32c(memoryview(data)[pos + _CRC_FROM : batch_end]) != crc:
            raise CorruptBatchError(f"the record batch at offset {base} fails its CRC check")
        if count:
            if codec is not None:
                records = bytes(codec[1](memoryview(data)[pos + _HEADER : batch_end]))
                sections.append((records, 0, len(records)))
                compressed = True
            else:
                sections.append((data, pos + _HEADER, batch_end))
            bases.append(base)
            counts.append(count)
            first_ts.append(ts0)
            append_ts.append(ts_max if attrs & _LOG_APPEND_TIME else -1)
        next_offset = base + last_delta + 1
        pos = batch_end
    if not pos:
        return None, 0
    if not sections:
        return _empty(data, next_offset), pos
    if compressed:
        # One buffer for all: the plain sections copied next to the decompressed.
        lengths = [e - s for _, s, e in sections]
        data = b"".join(memoryview(b)[s:e] for b, s, e in sections)
        ends = np.cumsum(lengths).tolist()
        sections = [(data, e - n, e) for n, e in zip(lengths, ends, strict=True)]
    u8 = np.frombuffer(data, dtype=np.uint8)
    # Small batches (producers' default is 16 KB: five 768-d records) are read in a
    # plain loop, collected in one list: numpy's per-call cost would dominate.
    starts: list[npt.NDArray[np.int64]] = []
    small: list[int] = []
    for (_, s, e), count, base in zip(sections, counts, bases, strict=True):
        if count < _SMALL_BATCH:
            _record_starts_one_by_one(data, s, e, count, base, small)
            continue
        if small:
            starts.append(np.asarray(small, dtype=np.int64))
            small = []
        starts.append(_record_starts(data, u8, s, e, count, base))
    if small:
        starts.append(np.asarray(small, dtype=np.int64))
    at = np.concatenate(starts) if len(starts) > 1 else starts[0]
    length, size = _varints(u8, at, 5)
    record_end = at + size + length
    q = at + size + 1  # past the attributes byte
    ts_delta, size = _varints(u8, q, 10)
    q += size
    offset_delta, size = _varints(u8, q, 5)
    q += size
    key_len, size = _varints(u8, q, 5)
    key_at = q + size
    q = key_at + np.maximum(key_len, 0)
    value_len, size = _varints(u8, q, 5)
    value_at = q + size
    q = value_at + np.maximum(value_len, 0)
    header_count, size = _varints(u8, q, 5)
    header_at = q + size
    plain = header_count == 0
    if (
        (key_len < -1).any()
        or (value_len < -1).any()
        or (header_count < 0).any()
        or (header_at > record_end).any()
        or (header_at[plain] != record_end[plain]).any()
    ):
        raise CorruptBatchError("a record's fields do not add up to its length")
    batch_of = np.repeat(np.arange(len(counts)), counts)
    offsets = np.asarray(bases, dtype=np.int64)[batch_of] + offset_delta
    timestamps = np.asarray(first_ts, dtype=np.int64)[batch_of] + ts_delta
    fixed = np.asarray(append_ts, dtype=np.int64)[batch_of]
    timestamps = np.where(fixed >= 0, fixed, timestamps)
    keep = slice(None)
    if len(offsets) and offsets[0] < fetch_offset:
        # The broker sends whole batches: the first may begin before the position.
        keep = slice(int(np.searchsorted(offsets, fetch_offset)), None)
    wire = WireRecords(
        data=data,
        offsets=offsets[keep],
        timestamps=timestamps[keep],
        key_at=key_at[keep],
        key_len=key_len[keep],
        value_at=value_at[keep],
        value_len=value_len[keep],
        header_at=header_at[keep],
        header_count=header_count[keep],
        next_offset=next_offset,
    )
    return wire, pos


def _empty(data: Buffer, next_offset: int) -> WireRecords:
    none = np.zeros(0, dtype=np.int64)
    return WireRecords(data, none, none, none, none, none, none, none, none, next_offset)


def _varints(
    u8: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], width: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The zigzag varints at ``at`` (at most ``width`` bytes each) and their sizes.

    Byte by byte, each pass over only the varints that go on: lengths and deltas
    are mostly one or two bytes."""
    last = len(u8) - 1
    byte = u8[np.minimum(at, last)]
    raw = (byte & 0x7F).astype(np.uint64)
    size = np.ones(len(at), dtype=np.int64)
    going = np.flatnonzero(byte >= 0x80)
    shift = np.uint64(7)
    while len(going):
        if int(shift) >= 7 * width:
            raise CorruptBatchError("a varint runs past its longest size")
        byte = u8[np.minimum(at[going] + size[going], last)]
        raw[going] |= (byte & 0x7F).astype(np.uint64) << shift
        size[going] += 1
        going = going[byte >= 0x80]
        shift += np.uint64(7)
    values = (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64)
    return values, size


def _record_starts_one_by_one(
    data: Buffer, pos: int, end: int, count: int, base: int, out: list[int]
) -> None:
    """Append where each of a batch's ``count`` records starts to ``out``."""
    for _ in range(count):
        out.append(pos)
        length, size = _varint(data, pos, end)
        if length < 0:
            raise CorruptBatchError(f"a record of the batch at offset {base} has no length")
        pos += size + length
    if pos != end:
        raise CorruptBatchError(
            f"the records of the batch at offset {base} end at byte {pos}, the batch at {end}"
        )


def _record_starts(
    data: Buffer, u8: npt.NDArray[np.uint8], pos: int, end: int, count: int, base: int
) -> npt.NDArray[np.int64]:
    """Where each of a batch's ``count`` records starts (its length varint)."""
    out = np.empty(count, dtype=np.int64)
    i = 0
    for _ in range(_RUN_TRIES):
        if i == count:
            break
        length, size = _varint(data, pos, end)
        step = size + length
        if step <= size:
            raise CorruptBatchError(f"a record of the batch at offset {base} has no length")
        # Guess that the rest of the batch repeats this record's length: the guess
        # holds up to the first record whose length bytes differ.
        guess = pos + step * np.arange(count - i, dtype=np.int64)
        inside = guess[guess + size <= end]
        same = np.ones(len(inside), dtype=bool)
        for j in range(size):
            same &= u8[inside + j] == data[pos + j]
        run = int(np.argmin(same)) if not same.all() else len(inside)
        run = max(run, 1)
        out[i : i + run] = guess[:run]
        i += run
        pos += step * run
    while i < count:  # lengths that keep changing: one by one
        out[i] = pos
        length, size = _varint(data, pos, end)
        if length < 0:
            raise CorruptBatchError(f"a record of the batch at offset {base} has no length")
        pos += size + length
        i += 1
    if pos != end:
        raise CorruptBatchError(
            f"the records of the batch at offset {base} end at byte {pos}, the batch at {end}"
        )
    return out


def _varint(data: Buffer, pos: int, end: int) -> tuple[int, int]:
    """The zigzag varint at ``pos`` (before ``end``) and its size."""
    shift = raw = 0
    size = 0
    while True:
        if pos + size >= end or size >= 5:
            raise CorruptBatchError("a varint runs past its batch or its longest size")
        b = data[pos + size]
        raw |= (b & 0x7F) << shift
        size += 1
        if b < 0x80:
            return (raw >> 1) ^ -(raw & 1), size
        shift += 7


def _headers(data: Buffer, pos: int, count: int) -> list[tuple[str, bytes | None]]:
    end = len(data)
    out: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        klen, size = _varint(data, pos, end)
        pos += size
        key = bytes(data[pos : pos + klen]).decode("utf-8", "replace")
        pos += klen
        vlen, size = _varint(data, pos, end)
        pos += size
        value = None if vlen < 0 else bytes(data[pos : pos + vlen])
        pos += max(vlen, 0)
        out.append((key, value))
    return out
