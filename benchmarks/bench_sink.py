"""The FAISS sink under load: snapshot stall, search latency during ingestion, and
bytes written per snapshot.

- stall: write() latency of 4096 x 128 batches into one growing Flat shard, with a
  snapshot every 0.5 s, against the same run without snapshots.
- search: latency of 16-query k=10 searches on an index of 200,000 x 128, idle and
  while ingestion adds 600,000 more at a steady 100,000 vectors/s; the ratio scales
  each search during ingestion to the idle index size (a Flat search costs in
  proportion to the vectors it scans), the raw ratio is reported beside it.
- bytes: 4 shards of 50,000; a snapshot after changing 1, 2 and 4 of them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import anyio
import numpy as np

from benchmarks.harness import save, table
from sinks import FaissSink
from streams import Batch

DIM = 128


def _batches(n: int, size: int, start: int = 0, partition: str = "p") -> list[Batch]:
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n, size):
        ids = np.arange(i, i + size, dtype=np.int64)
        out.append(
            Batch(
                ids,
                rng.standard_normal((size, DIM), dtype=np.float32),
                np.full(size, time.time()),
                partition,
                {"offset": i + size},
            )
        )
    return out


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def _stall(snapshot_every: float | None, n: int) -> dict[str, Any]:
    batches = _batches(n, 4096)
    with tempfile.TemporaryDirectory() as tmp:
        sink = FaissSink(tmp, snapshot_every=snapshot_every)
        waits: list[float] = []
        during: list[float] = []  # writes that began while a snapshot was being written
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            for b in batches:
                snapshotting = sink.snapshotting
                t = time.perf_counter()
                await sink.write(b)
                waits.append(time.perf_counter() - t)
                if snapshotting:
                    during.append(waits[-1])
                await anyio.sleep(0.005)  # a producer that is not infinitely fast
            await sink.close(ok=True)
        st = sink.statistics()
    return {
        "p50_ms": _pct(waits, 50) * 1e3,
        "p99_ms": _pct(waits, 99) * 1e3,
        "max_ms": max(waits) * 1e3,
        "during_snapshot_p99_ms": _pct(during, 99) * 1e3 if during else 0.0,
        "during_snapshot_max_ms": max(during) * 1e3 if during else 0.0,
        "writes_during_snapshots": len(during),
        "snapshots": st.snapshots,
        "deferred_batches": st.deferred_batches,
    }


async def _search(n: int, extra: int) -> dict[str, Any]:
    q = np.random.default_rng(1).standard_normal((16, DIM), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        sink = FaissSink(tmp, snapshot_every=None)
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            for b in _batches(n, 8192):
                await sink.write(b)
            idle: list[float] = []
            for _ in range(200):
                t = time.perf_counter()
                await sink.search(q, 10)
                idle.append(time.perf_counter() - t)
            busy: list[float] = []
            done = anyio.Event()
            more = _batches(extra, 4096, start=n)  # made before timing starts

            async def ingest() -> None:
                # A steady 100,000 vectors/s, not a flat-out burst.
                for b in more:
                    t = time.perf_counter()
                    await sink.write(b)
                    await anyio.sleep(max(0.0, 4096 / 100_000 - (time.perf_counter() - t)))
                done.set()

            tg.start_soon(ingest)
            # The index grows while we search, and a Flat search costs in proportion
            # to its size: scale each latency to the idle index's size, so that the
            # ratio measures contention, not growth.
            scaled: list[float] = []
            while not done.is_set():
                size = sink.ntotal
                t = time.perf_counter()
                await sink.search(q, 10)
                busy.append(time.perf_counter() - t)
                scaled.append(busy[-1] * n / max(size, n))
            await sink.close(ok=False)
    return {
        "idle_p50_ms": _pct(idle, 50) * 1e3,
        "idle_p99_ms": _pct(idle, 99) * 1e3,
        "ingesting_p50_ms": _pct(busy, 50) * 1e3,
        "ingesting_p99_ms": _pct(busy, 99) * 1e3,
        "ingesting_p99_scaled_ms": _pct(scaled, 99) * 1e3,
        "searches_during_ingest": len(busy),
        "p99_ratio_raw": _pct(busy, 99) / _pct(idle, 99),
        "p99_ratio": _pct(scaled, 99) / _pct(idle, 99),
    }


async def _bytes() -> dict[str, Any]:
    parts = ["a", "b", "c", "d"]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sink = FaissSink(tmp, snapshot_every=None)
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            for j, p in enumerate(parts):
                for b in _batches(50_000, 10_000, start=j * 1_000_000, partition=p):
                    await sink.write(b)
            await sink.snapshot()
            out["all 4 shards new"] = sink.statistics().last_snapshot_bytes
            for changed in (1, 2, 4):
                for j, p in enumerate(parts[:changed]):
                    await sink.write(
                        _batches(1000, 1000, start=j * 1_000_000 + 500_000 + changed, partition=p)[
                            0
                        ]
                    )
                await sink.snapshot()
                out[f"{changed} of 4 changed"] = sink.statistics().last_snapshot_bytes
            await sink.close(ok=False)
    return out


def run(repeats: int = 3) -> dict[str, Any]:
    stall_on = [anyio.run(_stall, 0.5, 400_000) for _ in range(repeats)]
    stall_off = [anyio.run(_stall, None, 400_000) for _ in range(repeats)]
    # 600,000 more vectors at 100,000/s: ~130 searches during ingestion per run, so
    # that a p99 is more than the single worst search.
    search = [anyio.run(_search, 200_000, 600_000) for _ in range(repeats)]

    def med(rows: list[dict[str, float]], k: str) -> float:
        return statistics.median(r[k] for r in rows)

    result = {
        "stall": {
            "with_snapshots_every_0.5s": {k: med(stall_on, k) for k in stall_on[0]},
            "without_snapshots": {k: med(stall_off, k) for k in stall_off[0]},
            "runs": repeats,
        },
        "search": {k: med(search, k) for k in search[0]}
        | {"runs": repeats, "p99_ratio_per_run": [round(r["p99_ratio"], 3) for r in search]},
        "snapshot_bytes": anyio.run(_bytes),
    }
    save("sink", result)
    return result


def report(r: dict[str, Any]) -> str:
    s_on, s_off = r["stall"]["with_snapshots_every_0.5s"], r["stall"]["without_snapshots"]
    rows = [
        ("write() p99 while a snapshot is written", f"{s_on['during_snapshot_p99_ms']:.2f} ms"),
        ("write() max while a snapshot is written", f"{s_on['during_snapshot_max_ms']:.2f} ms"),
        ("writes that began during snapshots", f"{s_on['writes_during_snapshots']}"),
        ("write() p99 overall, snapshots every 0.5 s", f"{s_on['p99_ms']:.2f} ms"),
        ("write() p99 without snapshots", f"{s_off['p99_ms']:.2f} ms"),
        ("write() max with snapshots", f"{s_on['max_ms']:.2f} ms"),
        ("snapshots taken / batches deferred", f"{s_on['snapshots']} / {s_on['deferred_batches']}"),
        ("search p99 idle", f"{r['search']['idle_p99_ms']:.2f} ms"),
        ("search p99 during ingestion", f"{r['search']['ingesting_p99_ms']:.2f} ms"),
        (
            "search p99 during ingestion, scaled to the idle size",
            f"{r['search']['ingesting_p99_scaled_ms']:.2f} ms",
        ),
        ("search p99 ratio (scaled / idle)", f"{r['search']['p99_ratio']:.2f}x"),
        ("search p99 ratio (raw / idle)", f"{r['search']['p99_ratio_raw']:.2f}x"),
    ]
    rows += [(f"snapshot bytes, {k}", f"{v:,}") for k, v in r["snapshot_bytes"].items()]
    return table(rows, ("figure", "value (median of runs)"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    print(report(run(ap.parse_args().repeats)))
