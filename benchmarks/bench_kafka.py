"""Kafka -> FAISS: embedstream against the aiokafka ceiling, hand-written loops, and
Bytewax, Pathway and Quix Streams doing the same job.

A topic of 4 partitions with N messages (key = decimal id, value = 128 float32 LE).
Each contender runs as its own process with a fresh consumer group; contenders
alternate, each several times; medians and ratios from this one run. The peers run
with their own interpreter (``bash benchmarks/peers-venv.sh`` makes it; or set
``EMBEDSTREAM_PEERS_PYTHON``); without it they are left out and the table says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, python, run_child, save, table
from benchmarks.kafka_env import broker, make_topic

# embedstream-ingest: `embedstream ingest kafka://...` itself, as users start it (its
# rate from its own /metrics); embedstream-ingest-confluent: the same with
# --kafka-client confluent (librdkafka); bare-confluent: librdkafka's consume() and
# count, its ceiling;
# embedstream-cli: the same pipeline with the process settings the CLI applies
# (streams.app.memory.tune_process: glibc's mmap threshold pinned, GC frozen after the
# imports); embedstream-gc-only: those settings without the mmap threshold pin;
# embedstream: the Python API without any.
OURS = (
    "bare-getmany",
    "bare-confluent",
    "embedstream",
    "embedstream-ingest",
    "embedstream-ingest-confluent",
    "embedstream-cli",
    "embedstream-gc-only",
    "hand-batched",
    "naive-per-message",
)
VARIANTS = (
    "embedstream",
    "embedstream-ingest",
    "embedstream-ingest-confluent",
    "embedstream-cli",
    "embedstream-gc-only",
)
PEERS = ("bytewax", "pathway", "quixstreams")
CONTENDERS = OURS + PEERS


def peers_python() -> str | None:
    """The interpreter that has the peers installed, if any."""
    given = os.environ.get("EMBEDSTREAM_PEERS_PYTHON")
    if given:
        return given
    venv = ROOT / ".peers-venv" / "bin" / "python"
    return str(venv) if venv.exists() else None


def argv_of(contender: str, bootstrap: str, topic: str, n: int) -> list[str]:
    if contender in PEERS:
        peers = peers_python()
        assert peers is not None
        return [peers, "-m", "benchmarks.peer_contenders", contender, bootstrap, topic, str(n)]
    return [python(), "-m", "benchmarks.kafka_contenders", contender, bootstrap, topic, str(n)]


def run(
    n: int = 200_000,
    dim: int = 128,
    repeats: int = 3,
    contenders: tuple[str, ...] = CONTENDERS,
    name_128: bool = True,
) -> dict[str, Any]:
    skipped = []
    if peers_python() is None:
        skipped = [c for c in contenders if c in PEERS]
        contenders = tuple(c for c in contenders if c not in PEERS)
    # The peers import the benchmark package from the repository, not from a wheel.
    env = {"PYTHONPATH": str(Path(ROOT).parent)}
    with broker() as bootstrap:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        make_topic(bootstrap, topic, n, dim)
        samples: dict[str, list[Any]] = {c: [] for c in contenders}
        for _ in range(repeats):
            for c in contenders:
                samples[c].append(run_child(argv_of(c, bootstrap, topic, n), env=env))
    out: dict[str, Any] = {}
    for c, ss in samples.items():
        steady = [s.extra["steady_rate"] for s in ss]
        wall = [s.extra["wall_rate"] for s in ss]
        out[c] = {
            "runs": len(ss),
            "steady_rate_median": round(statistics.median(steady)),
            "steady_rate_min": round(min(steady)),
            "steady_rate_max": round(max(steady)),
            "wall_rate_median": round(statistics.median(wall)),
            "peak_rss_mb_median": round(statistics.median(_peak(s) for s in ss), 1),
            "samples": [s.extra | {"peak_rss_mb": _peak(s)} for s in ss],
        }
    index_mb = n * (dim * 4 + 8) / 2**20  # vectors + ids, held by every contender
    result = {
        "job": f"Kafka -> normalize -> IDMap2,Flat (ip); {n:,} x {dim}-d f32, 4 partitions",
        "dim": dim,
        "index_mb": round(index_mb, 1),
        "contenders": out,
        "ratios": ratios_of(out, index_mb),
        "skipped": {c: "no peers interpreter (bash benchmarks/peers-venv.sh)" for c in skipped},
    }
    # The full 128-d table (every contender, 200,000 records) is kafka.json; runs per
    # dimension (--dim) go to kafka-<dim>d.json.
    save("kafka" if dim == 128 and name_128 else f"kafka-{dim}d", result)
    return result


def _peak(sample: Any) -> float:
    # `embedstream-ingest` is a process of its own: its peak, not the wrapper's.
    return float(sample.extra.get("child_peak_rss_mb", sample.peak_rss_mb))


def ratios_of(out: dict[str, Any], index_mb: float) -> dict[str, Any]:
    """Each embedstream variant against the ceiling, the hand-written loop and the
    peers, from this one run's medians; and its peak RSS beyond the index."""
    ratios: dict[str, Any] = {}

    def steady(c: str) -> float:
        return float(out[c]["steady_rate_median"])

    best_peer = max((steady(p) for p in ("bytewax", "pathway") if p in out), default=0)
    for c in VARIANTS:
        if c not in out:
            continue
        if "bare-getmany" in out:
            ratios[f"{c}_steady_vs_getmany"] = round(steady(c) / steady("bare-getmany"), 3)
            ratios[f"{c}_wall_vs_getmany"] = round(
                out[c]["wall_rate_median"] / out["bare-getmany"]["wall_rate_median"], 3
            )
        if "hand-batched" in out:
            ratios[f"{c}_steady_vs_hand_batched"] = round(steady(c) / steady("hand-batched"), 3)
        if best_peer:
            ratios[f"{c}_steady_vs_best_of_bytewax_pathway"] = round(steady(c) / best_peer, 3)
        if "quixstreams" in out:
            ratios[f"{c}_steady_vs_quixstreams"] = round(steady(c) / steady("quixstreams"), 3)
    for c in (*VARIANTS, "hand-batched"):
        if c in out:
            ratios[f"{c}_rss_minus_index_mb"] = round(out[c]["peak_rss_mb_median"] - index_mb, 1)
    return ratios


def report(result: dict[str, Any]) -> str:
    rows = [
        (
            c,
            f"{r['steady_rate_median']:,}",
            f"{r['steady_rate_min']:,}-{r['steady_rate_max']:,}",
            f"{r['wall_rate_median']:,}",
            f"{r['peak_rss_mb_median']:.0f}",
        )
        for c, r in result["contenders"].items()
    ]
    t = table(
        rows,
        (
            "contender",
            "records/s steady (median)",
            "min-max",
            "records/s incl. group join",
            "peak RSS MB",
        ),
    )
    return f"{result['job']}\n\n{t}\n\nratios: {result['ratios']}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="*", choices=CONTENDERS)
    ap.add_argument("--dim", type=int, nargs="*", default=None)
    a = ap.parse_args()
    for dim in a.dim or [128]:
        contenders = tuple(a.only or CONTENDERS)
        result = run(a.records, dim, a.repeats, contenders, name_128=a.dim is None)
        print(report(result))
