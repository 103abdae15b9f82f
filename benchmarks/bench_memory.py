"""Memory stays bounded: peak RSS of ``embedstream ingest`` from Kafka at 1,000,000 and
5,000,000 records, minus the bytes of the index it built.

What grows with the stream is the index; everything else (channels, fetch buffers,
batches in flight) must not. So peak RSS minus index bytes should be the same at
both sizes. Index bytes = the size of the segment objects of the final snapshot
(vectors and ids, as FAISS holds them) plus the sink's id set (8 bytes per vector).
Five variants alternate: as shipped (the CLI pins glibc's mmap threshold at 4 MiB,
so big freed buffers go back to the system; :mod:`streams.app.memory`; over this
plaintext broker the client is aiokafka with its fetch thread); the same plus heap
trimming once a second (``EMBEDSTREAM_TRIM_SECONDS=1``, off by default); glibc's own
dynamic threshold (``EMBEDSTREAM_MMAP_THRESHOLD=0``), under which the heap fragments
as the index grows; on librdkafka (``--kafka-client confluent``, what ``auto`` takes
over TLS with ``embedstream[fast]``); and on aiokafka fetching on the event loop
(``--no-kafka-fetch-thread``, what it does over TLS without the extra). Each
size and variant runs ``--repeats`` times; medians. ``--variants`` runs some of them
(results then go to ``memory-some.json``).

    python -m benchmarks.bench_memory [--sizes 1000000 5000000] [--repeats 5]
        [--variants "as shipped" ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import python, run_child, save, table
from benchmarks.kafka_env import broker, make_topic

DIM = 128


def index_bytes(idx: Path) -> int:
    from sinks import open_snapshot

    view = open_snapshot(idx)
    objects = {seg["object"] for s in view.manifest["shards"] for seg in s["segments"]}
    id_set = 8 * int(view.manifest["ntotal"])
    return int(sum((idx / "objects" / o).stat().st_size for o in objects)) + id_set


VARIANTS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "as shipped (mmap threshold 4 MiB)": ({}, ()),
    "plus trimming every 1 s": ({"EMBEDSTREAM_TRIM_SECONDS": "1"}, ()),
    "glibc dynamic threshold": ({"EMBEDSTREAM_MMAP_THRESHOLD": "0"}, ()),
    "on librdkafka": ({}, ("--kafka-client", "confluent")),
    "on aiokafka, fetching on the event loop": (
        {},
        ("--kafka-client", "aiokafka", "--no-kafka-fetch-thread"),
    ),
}
"""Variant -> (environment, extra ingest arguments)."""


def run(sizes: tuple[int, ...], repeats: int, only: list[str] | None = None) -> dict[str, Any]:
    variants = {k: v for k, v in VARIANTS.items() if not only or any(k.startswith(o) for o in only)}
    rows: dict[tuple[str, int], list[dict[str, float]]] = {
        (v, n): [] for v in variants for n in sizes
    }
    with broker() as bootstrap:
        topics = {}
        for n in sizes:
            topics[n] = f"mem-{n}-{uuid.uuid4().hex[:6]}"
            make_topic(bootstrap, topics[n], n, DIM)
        for _ in range(repeats):
            for n in sizes:
                for variant, (env, extra) in variants.items():
                    with tempfile.TemporaryDirectory() as tmp:
                        idx = Path(tmp) / "idx"
                        sample = run_child(
                            [
                                *(python(), "-m", "streams.app.cli", "ingest"),
                                f"kafka://{bootstrap}/{topics[n]}",
                                *("--index", str(idx), "--group", uuid.uuid4().hex),
                                *("--until-idle", "3", "--no-progress"),
                                *extra,
                            ],
                            env=env,
                            timeout=1800,
                        )
                        ib = index_bytes(idx)
                    rows[(variant, n)].append(
                        {
                            "peak_rss_mb": sample.peak_rss_mb,
                            "index_mb": ib / 2**20,
                            "overhead_mb": sample.peak_rss_mb - ib / 2**20,
                            "seconds": sample.seconds,
                        }
                    )
    out: dict[str, Any] = {}
    for (variant, n), rs in rows.items():
        out.setdefault(variant, {})[str(n)] = {
            "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in rs), 1),
            "index_mb": round(statistics.median(r["index_mb"] for r in rs), 1),
            "overhead_mb_median": round(statistics.median(r["overhead_mb"] for r in rs), 1),
            "seconds_median": round(statistics.median(r["seconds"] for r in rs), 1),
            "runs": rs,
        }
    ratios = {
        variant: round(
            v[str(sizes[-1])]["overhead_mb_median"] / v[str(sizes[0])]["overhead_mb_median"], 3
        )
        for variant, v in out.items()
    }
    result = {
        "job": f"embedstream ingest kafka:// (4 partitions, {DIM}-d f32) into Flat, CLI defaults",
        "variants": out,
        "overhead_ratio_last_vs_first": ratios,
    }
    save("memory" if not only else "memory-some", result)
    return result


def report(r: dict[str, Any]) -> str:
    rows = [
        (
            variant,
            f"{int(n):,}",
            f"{v['peak_rss_mb_median']:,.0f}",
            f"{v['index_mb']:,.0f}",
            f"{v['overhead_mb_median']:,.0f}",
            f"{v['seconds_median']:.1f}",
        )
        for variant, sizes in r["variants"].items()
        for n, v in sizes.items()
    ]
    t = table(
        rows, ("variant", "records", "peak RSS MB", "index MB", "peak RSS - index MB", "seconds")
    )
    ratio = r["overhead_ratio_last_vs_first"]
    return f"{r['job']}\n\n{t}\n\noverhead ratio (last / first size): {ratio}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--variants", nargs="+", help="run only the variants whose names start so (default: all)"
    )
    a = ap.parse_args()
    print(report(run(tuple(a.sizes), a.repeats, a.variants)))
