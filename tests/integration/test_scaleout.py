"""Scale-out: several ``embedstream ingest`` workers of one consumer group sharing one
index directory, against the real broker.

Every test produces a known stream (id = row, key = decimal id) while workers come and
go, then checks the directory's combined state with the oracle: every id exactly
once, bit-exact vectors.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import faiss
import numpy as np

from sinks import open_snapshot
from tests.integration.kafka_util import create_topic, produce
from tests.integration.test_kafka import inspect
from tests.reliability.oracle import check, ingest_argv

# Short sessions so that a killed worker's partitions move on within seconds.
GROUP_OPTIONS = (
    "--kafka-option",
    "session_timeout_ms=6000",
    "--kafka-option",
    "heartbeat_interval_ms=1000",
)


def vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


class Workers:
    """Worker processes writing into one directory, with their output kept."""

    def __init__(self, kafka: str, topic: str, idx: Path, logs: Path) -> None:
        self.kafka, self.topic, self.idx, self.logs = kafka, topic, idx, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, until_idle: float = 10.0) -> None:
        argv = ingest_argv(
            self.kafka,
            self.topic,
            self.idx,
            "--worker",
            name,
            "--until-idle",
            str(until_idle),
            "--snapshot-every",
            "0.5",
            "--batch-size",
            "500",
            *GROUP_OPTIONS,
        )
        with (
            open(self.logs / f"{name}.out", "wb") as out,
            open(self.logs / f"{name}.err", "wb") as err,
        ):
            # The child keeps its own copies of the descriptors.
            self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=err)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait(timeout=120)

    def wait_all(self, timeout: float = 240) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for name, proc in self.procs.items():
            codes[name] = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        return codes

    def records(self, name: str) -> int:
        """Records the worker's sink took in, from its summary line."""
        text = (self.logs / f"{name}.out").read_text()
        m = re.search(r"([\d,]+) records in", text)
        return int(m.group(1).replace(",", "")) if m else 0

    def explain(self) -> str:
        parts = []
        for name in self.procs:
            err = (self.logs / f"{name}.err").read_text()[-3000:]
            parts.append(f"--- {name}\n{(self.logs / f'{name}.out').read_text()}\n{err}")
        return "\n".join(parts)


def produce_over(kafka: str, topic: str, x: np.ndarray, seconds: float) -> threading.Thread:
    """Produce rows of ``x`` (id = row) in slices spread over ``seconds``."""
    slices = 20

    def run() -> None:
        async def go() -> None:
            for part in np.array_split(np.arange(len(x)), slices):
                await produce(kafka, topic, part.tolist(), x[part])
                await asyncio.sleep(seconds / slices)

        asyncio.run(go())

    t = threading.Thread(target=run)
    t.start()
    return t


def assert_exact(idx: Path, x: np.ndarray, workers: Workers) -> None:
    verdict = check(idx, x)
    assert verdict.ok, f"{verdict}\n{workers.explain()}"


def test_two_and_three_workers_ingest_every_record_once(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    for n_workers in (2, 3):
        topic = f"{topic_name}-{n_workers}"
        anyio.run(create_topic, kafka, topic, 4)
        x = vectors(12_000, seed=n_workers)
        idx = tmp_path / f"idx{n_workers}"
        workers = Workers(kafka, topic, idx, tmp_path)
        for i in range(n_workers):
            workers.start(f"w{n_workers}{i}", until_idle=6)
        producer = produce_over(kafka, topic, x, 6)
        producer.join()
        codes = workers.wait_all()
        assert set(codes.values()) == {0}, workers.explain()
        assert_exact(idx, x, workers)
        # The work was divided: every worker indexed some of it.
        assert all(workers.records(w) > 0 for w in workers.procs), workers.explain()
        info = inspect(idx)
        assert info["ntotal"] == len(x)
        assert sorted(s["name"] for s in info["shards"]) == [f"{topic}-{p}" for p in range(4)]
        for shard in info["shards"]:
            assert shard["owner"] in workers.procs
            assert shard["position"]["offset"] > 0
        assert sum(s["ntotal"] for s in info["shards"]) == len(x)
        assert set(info["workers"]) == set(workers.procs)


def test_merged_search_equals_one_index_holding_everything(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    anyio.run(create_topic, kafka, topic_name, 4)
    x = vectors(6000, seed=9)
    anyio.run(lambda: produce(kafka, topic_name, range(len(x)), x))
    idx = tmp_path / "idx"
    workers = Workers(kafka, topic_name, idx, tmp_path)
    workers.start("a", until_idle=4)
    workers.start("b", until_idle=4)
    assert set(workers.wait_all().values()) == {0}, workers.explain()
    view = open_snapshot(idx)
    assert len({s["owner"] for s in view.manifest["shards"]}) >= 1
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    q = vectors(50, seed=10)
    want_scores, want_ids = flat.search(q, 10)
    got = view.search(q, 10)
    assert (got.ids == want_ids).all()
    assert np.allclose(got.scores, want_scores, atol=1e-4)
    # The CLI answers the same.
    qpath = tmp_path / "q.npy"
    np.save(qpath, q)
    out = subprocess.run(
        [sys.executable, "-m", "streams.app.cli", "search", str(idx), "-q", str(qpath), "-k", "10"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["ids"] for r in rows] == want_ids.tolist()


def test_workers_joining_and_leaving_mid_stream_lose_and_double_nothing(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    anyio.run(create_topic, kafka, topic_name, 4)
    x = vectors(30_000, seed=11)
    idx = tmp_path / "idx"
    workers = Workers(kafka, topic_name, idx, tmp_path)
    producer = produce_over(kafka, topic_name, x, 20)
    workers.start("a", until_idle=8)
    time.sleep(3)
    workers.start("b", until_idle=8)  # join: a hands two partitions over
    time.sleep(3)
    workers.start("c", until_idle=8)
    time.sleep(3)
    assert workers.stop("b") == 0  # leave gracefully: c and a take b's partitions
    time.sleep(3)
    workers.start("d", until_idle=8)
    time.sleep(2)
    assert workers.stop("a") == 0
    producer.join()
    codes = workers.wait_all()
    assert codes["c"] == 0 and codes["d"] == 0, workers.explain()
    assert_exact(idx, x, workers)
    assert inspect(idx)["ntotal"] == len(x)


def test_a_killed_worker_loses_nothing_the_others_take_over(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    anyio.run(create_topic, kafka, topic_name, 4)
    x = vectors(30_000, seed=12)
    idx = tmp_path / "idx"
    workers = Workers(kafka, topic_name, idx, tmp_path)
    producer = produce_over(kafka, topic_name, x, 15)
    for name in ("a", "b", "c"):
        workers.start(name, until_idle=12)
    time.sleep(6)
    workers.stop("b", signal.SIGKILL)
    time.sleep(3)
    workers.stop("c", signal.SIGKILL)
    producer.join()
    codes = workers.wait_all()
    assert codes["a"] == 0, workers.explain()
    assert_exact(idx, x, workers)
    info = inspect(idx)
    assert info["ntotal"] == len(x)
    assert {s["owner"] for s in info["shards"]} == {"a"}
