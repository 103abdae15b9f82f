"""Producing a known stream and checking an index against it, exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sinks import open_snapshot


@dataclass
class Verdict:
    """What the oracle found: every produced id exactly once, bit-exact."""

    expected: int
    present: int
    missing: int
    duplicated: int
    unknown: int
    wrong_vectors: int

    @property
    def ok(self) -> bool:
        return (
            self.present == self.expected
            and not self.missing
            and not self.duplicated
            and not self.unknown
            and not self.wrong_vectors
        )


def check(idx: Path, x: np.ndarray) -> Verdict:
    """Compare the index at ``idx`` (what a restart loads) with rows ``x`` (id = row)."""
    view = open_snapshot(idx)
    ids = np.concatenate([s.ids() for s in view.shards]) if view.shards else np.zeros(0, int)
    uniq, counts = np.unique(ids, return_counts=True)
    known = (uniq >= 0) & (uniq < len(x))
    wrong = 0
    for shard in view.shards:
        sid = shard.ids()
        sid = sid[(sid >= 0) & (sid < len(x))]
        if len(sid):
            wrong += int((shard.reconstruct(sid) != x[sid]).any(axis=1).sum())
    return Verdict(
        expected=len(x),
        present=int(known.sum()),
        missing=len(x) - int(known.sum()),
        duplicated=int((counts > 1).sum()),
        unknown=int((~known).sum()),
        wrong_vectors=wrong,
    )


def ingest_argv(kafka: str, topic: str, idx: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streams.cli",
        "ingest",
        f"kafka://{kafka}/{topic}",
        "--index",
        str(idx),
        "--group",
        f"g-{topic}",
        "--no-progress",
        *extra,
    ]


def run_to_idle(kafka: str, topic: str, idx: Path) -> None:
    subprocess.run(
        ingest_argv(kafka, topic, idx, "--until-idle", "2"),
        check=True,
        capture_output=True,
        timeout=300,
    )


def kill_cycles(
    kafka: str,
    topic: str,
    idx: Path,
    cycles: int,
    *,
    seed: int,
    low: float = 0.5,
    high: float = 2.5,
) -> int:
    """Start ingestion and kill -9 it at a random moment, ``cycles`` times.

    Returns how many runs were really killed (a run may finish first).
    """
    rng = np.random.default_rng(seed)
    kills = 0
    argv = ingest_argv(
        kafka, topic, idx, "--snapshot-every", "0.2", "--batch-size", "1000", "--capacity", "2"
    )
    for _ in range(cycles):
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ}
        )
        time.sleep(float(rng.uniform(low, high)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    return kills
