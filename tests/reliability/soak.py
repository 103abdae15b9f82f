"""The long reliability run: ``python -m tests.reliability.soak``.

Against a real broker (``KAFKA_BOOTSTRAP_SERVERS``, or one started with
``compose/kafka-local.sh`` on a free port):

1. kill -9 at random moments while ingesting N records (default 200,000 x 32-d over
   4 partitions), ``--kills`` times (default 100), then one clean run; the oracle
   checks every id exactly once and every vector bit-exact;
2. a crash at every step of the snapshot protocol, each followed by a restart;
3. prints the figures (and writes them to ``benchmarks/results/soak.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from benchmarks.kafka_env import broker
from sinks.store import CRASH_EXIT_CODE
from tests.integration.kafka_util import create_topic, produce
from tests.reliability.oracle import (
    CRASH_POINTS,
    check,
    crash_rounds,
    kill_cycles,
    run_to_idle,
    search_soak,
    slow_sink_rss,
)

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--minutes",
        type=float,
        default=3.0,
        help="minutes for the slow-sink and the search phases, each",
    )
    a = ap.parse_args()
    figures: dict[str, object] = {}
    with broker() as kafka, tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        x = np.random.default_rng(a.seed).standard_normal((a.records, 32)).astype(np.float32)
        topic = f"soak-{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topic(kafka, topic, 4))
        asyncio.run(produce(kafka, topic, range(a.records), x))
        idx = Path(tmp) / "idx"
        started = time.monotonic()
        kills = kill_cycles(kafka, topic, idx, a.kills, seed=a.seed, low=0.3, high=2.0)
        run_to_idle(kafka, topic, idx)
        v = check(idx, x)
        figures["kill_9"] = {
            "kills": kills,
            "records": a.records,
            "present": v.present,
            "lost": v.missing,
            "duplicated": v.duplicated,
            "unknown": v.unknown,
            "wrong_vectors": v.wrong_vectors,
            "seconds": round(time.monotonic() - started, 1),
        }
        print("kill -9:", figures["kill_9"], flush=True)

        topic2 = f"soak-crash-{uuid.uuid4().hex[:8]}"
        asyncio.run(create_topic(kafka, topic2, 4))
        per = 2000
        y = (
            np.random.default_rng(a.seed + 1)
            .standard_normal((per * len(CRASH_POINTS), 16))
            .astype(np.float32)
        )
        idx2 = Path(tmp) / "idx2"
        rounds = crash_rounds(kafka, topic2, idx2, y)
        died = sum(code == CRASH_EXIT_CODE for _, code in rounds)
        run_to_idle(kafka, topic2, idx2)
        v2 = check(idx2, y)
        figures["crash_points"] = {
            "points": len(CRASH_POINTS),
            "died_there": died,
            "records": len(y),
            "lost": v2.missing,
            "duplicated": v2.duplicated,
            "wrong_vectors": v2.wrong_vectors,
        }
        print("crash points:", figures["crash_points"], flush=True)

        rss = slow_sink_rss(Path(tmp), a.minutes * 60)
        figures["slow_sink_rss"] = {k: round(v, 1) for k, v in rss.items()}
        print("slow sink:", figures["slow_sink_rss"], flush=True)

        searches, batches, half = asyncio.run(search_soak(Path(tmp), a.minutes * 60))
        figures["searches_during_upserts"] = {
            "searches": searches,
            "batches": batches,
            "half_applied_seen": len(half),
        }
        print("searches:", figures["searches_during_upserts"], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(figures, indent=2) + "\n")
    exact = [figures["kill_9"], figures["crash_points"]]
    ok = all(
        f["lost"] == 0 and f["duplicated"] == 0 and f["wrong_vectors"] == 0  # type: ignore[index]
        for f in exact
    )
    ok = ok and figures["searches_during_upserts"]["half_applied_seen"] == 0  # type: ignore[index]
    ok = ok and rss["peak_mb"] < rss["bound_mb"]
    print("soak:", "passed" if ok else "FAILED", flush=True)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
