"""Kafka -> FAISS: embedstream against the aiokafka ceiling and hand-written loops.

A topic of 4 partitions with N messages (key = decimal id, value = 128 float32 LE).
Each contender runs as its own process with a fresh consumer group; contenders
alternate, each several times; medians and ratios from this one run.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from typing import Any

from benchmarks.harness import python, run_child, save, table
from benchmarks.kafka_env import broker, make_topic

CONTENDERS = ("bare-getmany", "embedstream", "hand-batched", "naive-per-message")


def run(
    n: int = 200_000, dim: int = 128, repeats: int = 3, contenders: tuple[str, ...] = CONTENDERS
) -> dict[str, Any]:
    with broker() as bootstrap:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        make_topic(bootstrap, topic, n, dim)
        samples: dict[str, list[Any]] = {c: [] for c in contenders}
        for _ in range(repeats):
            for c in contenders:
                samples[c].append(
                    run_child(
                        [python(), "-m", "benchmarks.kafka_contenders", c, bootstrap, topic, str(n)]
                    )
                )
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
            "peak_rss_mb_median": round(statistics.median(s.peak_rss_mb for s in ss), 1),
            "samples": [s.extra | {"peak_rss_mb": s.peak_rss_mb} for s in ss],
        }
    ceiling = out.get("bare-getmany", {}).get("steady_rate_median")
    ratios = {}
    if ceiling and "embedstream" in out:
        ratios["embedstream_steady_vs_getmany"] = round(
            out["embedstream"]["steady_rate_median"] / ceiling, 3
        )
        ratios["embedstream_wall_vs_getmany"] = round(
            out["embedstream"]["wall_rate_median"] / out["bare-getmany"]["wall_rate_median"], 3
        )
    if "hand-batched" in out and "embedstream" in out:
        ratios["embedstream_steady_vs_hand_batched"] = round(
            out["embedstream"]["steady_rate_median"] / out["hand-batched"]["steady_rate_median"], 3
        )
    result = {
        "job": f"Kafka -> normalize -> IDMap2,Flat (ip); {n:,} x {dim}-d f32, 4 partitions",
        "contenders": out,
        "ratios": ratios,
    }
    save("kafka", result)
    return result


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
    a = ap.parse_args()
    print(report(run(a.records, repeats=a.repeats, contenders=tuple(a.only or CONTENDERS))))
