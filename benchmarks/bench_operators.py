"""Operator throughput, in process, median of several runs.

- JSON: 384-d records (the real MiniLM embeddings when ``../shared/data`` is there)
  as JSONL lines in 4 MiB chunks: embedstream's ``decode`` (to a 2-D float32 batch,
  simdjson's fast path) against bare msgspec decoding the same lines into a typed
  Struct, line by line; the ratio is the median of per-run ratios.
- raw f32: 128-d little-endian values with decimal keys, 10,000 per chunk (like a
  Kafka fetch), through decode -> batch -> normalize into a counting sink.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
from anyio.abc import TaskGroup

from benchmarks.harness import save, table
from operators import batch, decode, normalize
from operators.decode import _Decoder
from streams import Chunk, Sink, Source
from streams.records import Positions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "minilm-pypi-base.f16.npy"


class Rec(msgspec.Struct):
    id: int
    vector: list[float]


def _json_chunks(n: int) -> tuple[list[list[bytes]], int]:
    if SHARED.exists():
        x = np.load(SHARED)[:n].astype(np.float32)
    else:  # pragma: no cover
        x = np.random.default_rng(0).standard_normal((n, 384)).astype(np.float32)
    enc = msgspec.json.Encoder()
    lines = [enc.encode({"id": i, "vector": x[i].tolist()}) for i in range(len(x))]
    chunks, cur, size = [], [], 0
    for line in lines:
        cur.append(line)
        size += len(line) + 1
        if size >= 4 << 20:
            chunks.append(cur)
            cur, size = [], 0
    if cur:
        chunks.append(cur)
    return chunks, len(lines)


def _json_once(chunks: list[list[bytes]], n: int) -> dict[str, float]:
    dec = msgspec.json.Decoder(Rec)
    t = time.perf_counter()
    for c in chunks:
        for line in c:
            dec.decode(line)
    bare = n / (time.perf_counter() - t)
    ours_dec = _Decoder("decode", None, 1 << 20, False)
    built = [
        Chunk("files", "x", "json", {"x": 0}, np.arange(len(c)), payloads=list(c)) for c in chunks
    ]
    t = time.perf_counter()
    for chunk in built:
        b, bad = ours_dec.decode(chunk)
        assert not bad and b.vectors.shape[1] == 384
    ours = n / (time.perf_counter() - t)
    return {"bare_msgspec_per_line": bare, "embedstream_decode": ours, "ratio": ours / bare}


class _Chunks(Source):
    def __init__(self, chunks: list[Chunk]) -> None:
        self.items = chunks

    async def chunks(self, start: Positions) -> AsyncIterator[Chunk]:
        for c in self.items:
            yield c


class _Count(Sink[Any]):
    name = "count"

    def __init__(self) -> None:
        self.n = 0

    async def open(self, task_group: TaskGroup) -> Positions:
        return {}

    async def write(self, item: Any) -> None:
        self.n += len(item)

    async def close(self, *, ok: bool) -> None:
        pass


def _raw_chunks(n: int, dim: int = 128, per: int = 10_000) -> list[Chunk]:
    x = np.random.default_rng(0).standard_normal((n, dim)).astype("<f4")
    out = []
    for s in range(0, n, per):
        e = min(s + per, n)
        out.append(
            Chunk(
                "t-0",
                "t[0]",
                "f32",
                {"offset": e},
                np.arange(s, e),
                payloads=[x[i].tobytes() for i in range(s, e)],
                keys=[str(i).encode() for i in range(s, e)],
                read_at=time.time(),
            )
        )
    return out


async def _raw_once(chunks: list[Chunk], n: int) -> float:
    sink = _Count()
    p = _Chunks(chunks) | decode() | batch(8192) | normalize() | sink
    t = time.perf_counter()
    await p.run()
    assert sink.n == n
    return n / (time.perf_counter() - t)


def run(repeats: int = 5) -> dict[str, Any]:
    chunks, n = _json_chunks(20_000)
    json_runs = [_json_once(chunks, n) for _ in range(repeats)]
    raw_n = 1_000_000
    raw = _raw_chunks(raw_n)
    raw_runs = [anyio.run(_raw_once, raw, raw_n) for _ in range(repeats)]
    bare = statistics.median(r["bare_msgspec_per_line"] for r in json_runs)
    ours = statistics.median(r["embedstream_decode"] for r in json_runs)
    result = {
        "json_384d": {
            "records": n,
            "runs": repeats,
            "bare_msgspec_per_line_rps": round(bare),
            "embedstream_decode_rps": round(ours),
            # The median of the per-run ratios: both sides of a ratio ran back to
            # back, so machine noise between runs cancels.
            "ratio": round(statistics.median(r["ratio"] for r in json_runs), 3),
            "ratio_min": round(min(r["ratio"] for r in json_runs), 3),
            "ratio_max": round(max(r["ratio"] for r in json_runs), 3),
            "samples": json_runs,
        },
        "raw_f32_128d": {
            "records": raw_n,
            "runs": repeats,
            "decode_batch_normalize_rps_median": round(statistics.median(raw_runs)),
            "min": round(min(raw_runs)),
            "max": round(max(raw_runs)),
        },
    }
    save("operators", result)
    return result


def report(r: dict[str, Any]) -> str:
    j, f = r["json_384d"], r["raw_f32_128d"]
    rows = [
        (
            "JSON 384-d: bare msgspec typed decode, per line",
            f"{j['bare_msgspec_per_line_rps']:,}/s",
        ),
        ("JSON 384-d: embedstream decode to a 2-D batch", f"{j['embedstream_decode_rps']:,}/s"),
        (
            "JSON ratio embedstream / bare (per-run median)",
            f"{j['ratio']} ({j['ratio_min']}-{j['ratio_max']})",
        ),
        (
            "raw f32 128-d: decode -> batch -> normalize",
            f"{f['decode_batch_normalize_rps_median']:,}/s ({f['min']:,}-{f['max']:,})",
        ),
    ]
    return table(rows, ("figure", "median"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    print(report(run(ap.parse_args().repeats)))
