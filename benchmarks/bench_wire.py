"""Reading Kafka fetch responses: embedstream's wire reader against aiokafka's parser.

The same bytes (a fetch response of v2 record batches, key = decimal id, value =
float32 LE vector) are read both ways, in process, alternating, medians of
``--repeats`` runs:

- ``aiokafka``: ``MemoryRecords`` -> batches, ``validate_crc()``, an object per
  record (what a consumer with ``check_crcs`` does before it builds
  ``ConsumerRecord`` objects on top, which are not counted here).
- ``wire``: ``streams.kafka.wire.scan`` (CRC checked) and ``matrix()`` + ``ids()``:
  the vectors as rows and the ids, what the source hands to ``decode``.

Sizes: 128-d and 768-d records, in batches of 5 (a producer's default 16 KB batch
of 768-d records), 50 and 700 records; about 2 MB of values a response.

    python -m benchmarks.bench_wire [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from benchmarks.harness import save, table
from streams.kafka.wire import scan


def response(dim: int, per_batch: int, values_bytes: int = 2 << 20) -> tuple[bytes, int]:
    """A fetch response's record bytes, and how many records it holds."""
    n = max(per_batch, values_bytes // (4 * dim) // per_batch * per_batch)
    x = np.random.default_rng(dim).standard_normal((n, dim)).astype("<f4")
    parts = []
    for base in range(0, n, per_batch):
        builder = DefaultRecordBatchBuilder(
            magic=2,
            compression_type=0,
            is_transactional=0,
            producer_id=-1,
            producer_epoch=-1,
            base_sequence=-1,
            batch_size=1 << 30,
        )
        for i in range(per_batch):
            builder.append(
                i,
                timestamp=1_700_000_000_000 + i,
                key=b"%d" % (base + i),
                value=x[base + i].tobytes(),
                headers=[],
            )
        parts.append(struct.pack(">q", base) + bytes(builder.build())[8:])
    return b"".join(parts), n


def read_aiokafka(data: bytes) -> int:
    n = 0
    records = MemoryRecords(data)
    while records.has_next():
        batch: Any = records.next_batch()
        if not batch.validate_crc():
            raise ValueError("CRC")
        for _ in batch:
            n += 1
    return n


def read_wire(data: bytes) -> int:
    wire, _ = scan(data, 0)
    assert wire is not None
    wire.matrix()
    if wire.ids() is None:
        raise ValueError("keys")
    return len(wire)


def seconds(fn: Callable[[bytes], int], data: bytes, n: int, loops: int = 5) -> float:
    t = time.perf_counter()
    for _ in range(loops):
        if fn(data) != n:
            raise AssertionError("records lost")
    return (time.perf_counter() - t) / loops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    rows, out = [], []
    for dim in (128, 768):
        for per in (5, 50, 700):
            data, n = response(dim, per)
            took: dict[str, list[float]] = {"aiokafka": [], "wire": []}
            for _ in range(args.repeats):  # alternate, so drift hits both alike
                took["aiokafka"].append(seconds(read_aiokafka, data, n))
                took["wire"].append(seconds(read_wire, data, n))
            us = {k: statistics.median(v) / n * 1e6 for k, v in took.items()}
            ratio = statistics.median(
                a / w for a, w in zip(took["aiokafka"], took["wire"], strict=True)
            )
            out.append(
                {
                    "dim": dim,
                    "records_per_batch": per,
                    "records": n,
                    "us_per_record": us,
                    "aiokafka_over_wire": round(ratio, 2),
                }
            )
            rows.append(
                [str(dim), str(per), f"{us['aiokafka']:.2f}", f"{us['wire']:.2f}", f"{ratio:.2f}x"]
            )
    print(
        table(
            rows,
            ["dim", "records a batch", "aiokafka µs/record", "wire µs/record", "wire speed-up"],
        )
    )
    path = save(
        "wire", {"job": "read a 2 MB fetch response", "repeats": args.repeats, "results": out}
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
