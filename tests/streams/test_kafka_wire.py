"""Reading Kafka record batches straight from fetch-response bytes
(streams.kafka.wire), against aiokafka's own record parser on the same bytes."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.decode import _Decoder
from streams.kafka.wire import CorruptBatchError, WireRecords, scan
from streams.records import Chunk

Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]
"""(timestamp delta ms, key, value, headers)"""


def batch_bytes(
    base: int, records: list[Record], *, ts0: int = 1_700_000_000_000, compression: int = 0
) -> bytes:
    """One v2 record batch at ``base``, as a producer writes it."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, (dt, key, value, headers) in enumerate(records):
        builder.append(i, timestamp=ts0 + dt, key=key, value=value, headers=headers)
    return struct.pack(">q", base) + bytes(builder.build())[8:]


def with_attributes(data: bytes, bits: int) -> bytes:
    """``data`` (one batch) with attribute ``bits`` set and its CRC made right."""
    buf = bytearray(data)
    (attrs,) = struct.unpack_from(">h", buf, 21)
    struct.pack_into(">h", buf, 21, attrs | bits)
    struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))
    return bytes(buf)


def aiokafka_records(data: bytes, fetch_offset: int = 0) -> list[Any]:
    out = []
    records = MemoryRecords(data)
    while records.has_next():
        out.extend(r for r in records.next_batch() if r.offset >= fetch_offset)
    return out


def vector_records(n: int, dim: int, first_id: int = 0, step_ms: int = 3) -> list[Record]:
    rng = np.random.default_rng(n)
    values = rng.standard_normal((n, dim)).astype("<f4")
    return [(i * step_ms, str(first_id + i).encode(), values[i].tobytes(), []) for i in range(n)]


def same(wire: WireRecords, expected: list[Any]) -> None:
    got = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in wire.records()]
    assert got == [
        (r.offset, r.timestamp, r.key, r.value, [(k, v) for k, v in r.headers]) for r in expected
    ]


def test_fixed_size_vectors_become_a_matrix_and_decimal_keys_ids() -> None:
    # Timestamps 3 ms apart and offsets past 64 change the records' lengths twice
    # within the first batch: three runs of different spacing.
    data = (
        batch_bytes(0, vector_records(700, 96))
        + batch_bytes(700, vector_records(5, 96, 700))
        + batch_bytes(705, vector_records(300, 96, 705))
    )
    wire, _ = scan(data, 0)
    assert wire is not None
    expected = aiokafka_records(data)
    assert len(wire) == 1005 and wire.next_offset == 1005
    same(wire, expected)
    matrix = wire.matrix()
    assert matrix.shape == (1005, 96 * 4)
    assert [row.tobytes() for row in matrix] == [r.value for r in expected]
    ids = wire.ids()
    assert ids is not None and ids.tolist() == list(range(1005))


def test_records_before_the_fetch_offset_are_skipped() -> None:
    data = batch_bytes(100, vector_records(50, 8, 100)) + batch_bytes(150, vector_records(50, 8))
    wire, _ = scan(data, 130)
    assert wire is not None
    assert wire.offsets[0] == 130 and len(wire) == 70 and wire.next_offset == 200
    same(wire, aiokafka_records(data, 130))
    # A response whose records all come before the position holds none.
    done, _ = scan(batch_bytes(100, vector_records(50, 8)), 150)
    assert done is not None and len(done) == 0 and done.next_offset == 150


def test_a_partial_batch_at_the_end_is_left_for_the_next_fetch() -> None:
    first = batch_bytes(0, vector_records(10, 8))
    second = batch_bytes(10, vector_records(10, 8))
    wire, stop = scan(first + second[:-7], 0)
    assert wire is not None and len(wire) == 10 and wire.next_offset == 10
    assert stop == len(first)
    assert scan(second[:30], 0) == (None, 0)  # nothing complete: aiokafka's path says why


@pytest.mark.parametrize(
    ("bits", "read_committed"),
    [(0x20, False), (0x10, True)],
    ids=["control batch", "transactional under read_committed"],
)
def test_what_the_reader_leaves_goes_to_aiokafka(bits: int, read_committed: bool) -> None:
    """It stops at the first batch it does not read, with what came before."""
    first = batch_bytes(0, vector_records(4, 8))
    data = first + with_attributes(batch_bytes(4, vector_records(4, 8)), bits) + first
    wire, stop = scan(data, 0, read_committed=read_committed)
    assert wire is not None and wire.offsets.tolist() == [0, 1, 2, 3] and stop == len(first)
    assert scan(data[stop:], 4, read_committed=read_committed) == (None, 0)
    # Transactional batches are plain records under read_uncommitted.
    wire, stop = scan(with_attributes(first, 0x10), 0)
    assert wire is not None and len(wire) == 4 and stop == len(first)


@pytest.mark.parametrize("compression", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_read_too(compression: int) -> None:
    from aiokafka import codec

    if not [codec.has_gzip, codec.has_snappy, codec.has_lz4, codec.has_zstd][compression - 1]():
        pytest.skip("the codec's package is not installed")
    records = vector_records(300, 24)
    data = (
        batch_bytes(0, records[:100])
        + batch_bytes(100, records[100:200], compression=compression)
        + batch_bytes(200, records[200:])
    )
    wire, stop = scan(data, 0)
    assert wire is not None and stop == len(data)
    same(wire, aiokafka_records(data))
    assert [row.tobytes() for row in wire.matrix()] == [r[2] for r in records]


def test_log_append_time_gives_every_record_the_batch_time() -> None:
    data = bytearray(batch_bytes(0, vector_records(4, 8), ts0=1000))
    struct.pack_into(">q", data, 35, 5000)  # maxTimestamp: the broker's append time
    wire, _ = scan(with_attributes(bytes(data), 0x08), 0)
    assert wire is not None and wire.timestamps.tolist() == [5000] * 4


def test_a_wrong_checksum_is_an_error_unless_checks_are_off() -> None:
    data = bytearray(batch_bytes(0, vector_records(4, 8)))
    data[-3] ^= 0xFF  # a byte of the last value
    with pytest.raises(CorruptBatchError, match="CRC"):
        scan(bytes(data), 0)
    wire, _ = scan(bytes(data), 0, check_crcs=False)
    assert wire is not None and len(wire) == 4


def test_records_that_do_not_add_up_are_an_error() -> None:
    data = bytearray(batch_bytes(0, vector_records(4, 8)))
    data[61] += 2  # the first record's length (a zigzag varint): one byte longer
    with pytest.raises(CorruptBatchError):
        scan(bytes(data), 0, check_crcs=False)


def test_strings_nulls_and_headers_take_the_per_record_path() -> None:
    records: list[Record] = [
        (0, b"doc-1", b"\x00" * 8, [("source", b"a"), ("empty", None)]),
        (1, None, b"\x01" * 12, []),
        (2, b"7", None, []),  # a tombstone
        (3, b"007", b"", [("x", b"")]),
    ]
    data = batch_bytes(0, records)
    wire, _ = scan(data, 0)
    assert wire is not None
    same(wire, aiokafka_records(data))
    assert wire.value_size() is None and wire.ids() is None
    with pytest.raises(ValueError, match="differ in size"):
        wire.matrix()


_record = st.tuples(
    st.integers(0, 1 << 40),
    st.one_of(st.none(), st.binary(max_size=20), st.integers(0, 10**18).map(lambda i: b"%d" % i)),
    st.one_of(st.none(), st.binary(max_size=300)),
    st.lists(
        st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=10))), max_size=3
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(st.lists(_record, min_size=1, max_size=80), min_size=1, max_size=4),
    skip=st.integers(0, 50),
)
def test_any_records_read_as_aiokafka_reads_them(batches: list[list[Record]], skip: int) -> None:
    data = b""
    base = 1000
    for records in batches:
        data += batch_bytes(base, records)
        base += len(records)
    wire, _ = scan(data, 1000 + skip)
    assert wire is not None
    same(wire, aiokafka_records(data, 1000 + skip))
    assert wire.next_offset == base
    for start in (0, 3):
        part = wire.take(slice(start, start + 5))
        assert part.offsets.tolist() == wire.offsets[start : start + 5].tolist()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    dim=st.integers(1, 64),
    step_ms=st.sampled_from([0, 1, 3, 70, 5000]),
    first=st.integers(0, 10**15),
)
def test_any_fixed_size_vectors_read_as_rows(n: int, dim: int, step_ms: int, first: int) -> None:
    records = vector_records(n, dim, first, step_ms)
    wire, _ = scan(batch_bytes(0, records), 0)
    assert wire is not None
    assert [row.tobytes() for row in wire.matrix()] == [r[2] for r in records]
    ids = wire.ids()
    assert ids is not None and ids.tolist() == list(range(first, first + n))


def _kafka_chunk(vectors: np.ndarray) -> Chunk:
    n = len(vectors)
    return Chunk(
        partition="t-0",
        source="t[0]",
        format="f32",
        position={"offset": n},
        locations=np.arange(n, dtype=np.int64),
        location_kind="offset",
        vectors=vectors,
        ids=np.arange(n, dtype=np.int64),
    )


def test_decode_rejects_rows_read_from_the_wire_with_their_value_bytes() -> None:
    vectors = np.ones((4, 8), dtype=np.float32)
    vectors[1, 3] = np.nan
    vectors[2] = 0
    decoder = _Decoder("decode", None, max_bytes=1 << 20, reject_zero=True)
    batch, rejected = decoder.decode(_kafka_chunk(vectors))
    assert batch.ids.tolist() == [0, 3]
    assert [(r.reason, r.location, r.raw) for r in rejected] == [
        ("not-finite", 1, vectors[1].tobytes()),
        ("zero-vector", 2, vectors[2].tobytes()),
    ]
    assert rejected[0].where() == "decode: t[0] offset 1"


def test_decode_holds_rows_read_from_the_wire_to_the_payload_limit() -> None:
    decoder = _Decoder("decode", None, max_bytes=16, reject_zero=False)
    batch, rejected = decoder.decode(_kafka_chunk(np.ones((3, 8), dtype=np.float32)))
    assert len(batch) == 0
    assert {r.reason for r in rejected} == {"oversized"}
    assert "32 bytes is over the limit of 16" in rejected[0].detail
    assert decoder.dim is None  # an oversized record does not fix the dimension


def test_runs_cut_around_records_that_are_not_vectors() -> None:
    records = vector_records(30, 4)
    records[10] = (30, b"10", None, [])  # a tombstone
    records[11] = (31, b"11", records[11][2], [("h", b"v")])
    records[20] = (40, None, records[20][2], [])  # no key
    wire, _ = scan(batch_bytes(0, records), 0)
    assert wire is not None
    runs = wire.runs()
    assert [(int(r.offsets[0]), len(r)) for r in runs] == [
        (0, 10),
        (10, 2),
        (12, 8),
        (20, 1),
        (21, 9),
    ]
    assert [r.value_size() for r in runs] == [16, None, 16, 16, 16]
    assert runs[3].ids() is None and runs[2].ids() is not None


def test_many_small_batches_as_producers_send_by_default() -> None:
    """A 16 KB producer batch holds five 768-d records: record starts come from the
    small-batch loop, and rows are gathered one by one (runs of five are too short
    for a strided copy each)."""
    records = vector_records(500, 768)
    data = b"".join(batch_bytes(i, records[i : i + 5]) for i in range(0, 500, 5))
    wire, stop = scan(data, 0)
    assert wire is not None and stop == len(data) and len(wire) == 500
    same(wire, aiokafka_records(data))
    assert [row.tobytes() for row in wire.matrix()] == [r[2] for r in records]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=40),
    dim=st.sampled_from([1, 3, 16, 384]),
    skip=st.integers(0, 5),
)
def test_rows_are_the_values_whatever_the_batches(sizes: list[int], dim: int, skip: int) -> None:
    """Batches of any sizes: few long runs take strided copies, many short ones
    the gather; both give every value as its row, from the fetch offset on."""
    records = vector_records(sum(sizes), dim)
    parts, base = [], 0
    for size in sizes:
        parts.append(batch_bytes(base, records[base : base + size]))
        base += size
    skip = min(skip, len(records) - 1)
    wire, _ = scan(b"".join(parts), skip)
    assert wire is not None
    assert [row.tobytes() for row in wire.matrix()] == [r[2] for r in records[skip:]]
