"""The Kafka job, one contender per invocation:

    python -m benchmarks.kafka_contenders CONTENDER BOOTSTRAP TOPIC N

Consume the topic from the start, L2-normalise, add with ids to ``IDMap2,Flat``
(inner product), stop when all N are in. Prints ``RESULT {json}`` with the seconds
from consumer start to the first record and to the last record being searchable,
and the steady rate (:class:`Progress`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid


class Progress:
    """When a contender had how many records (read, or searchable: each says).

    The steady window opens at the first count of at least a tenth of all records
    and closes at the last; the steady rate is the records counted inside it over
    its length. A tenth, not the first record: group join, the first fetches and
    every buffer's warm-up stay out, whatever size each contender's first poll has
    (one that takes half of a small topic in its first poll would otherwise count
    that half at no cost).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.t0 = time.perf_counter()
        self.first = 0.0
        self.last = 0.0
        self.count = 0
        self.mark: tuple[float, int] | None = None

    def saw(self, count: int) -> None:
        """``count`` records so far (call after each poll or add)."""
        now = time.perf_counter()
        self.count = count
        if count and not self.first:
            self.first = now
        if self.mark is None and count >= self.n / 10:
            self.mark = (now, count)
        if count >= self.n and not self.last:
            self.last = now

    def report(self) -> None:
        """Print the ``RESULT`` line."""
        at, counted = self.mark or (self.first, 0)
        steady = self.last - at
        print(
            "RESULT "
            + json.dumps(
                {
                    "records": self.count,
                    "first_record_s": self.first - self.t0,
                    "wall_s": self.last - self.t0,
                    "steady_s": steady,
                    "steady_rate": (self.count - counted) / steady if steady > 0 else 0.0,
                    "wall_rate": self.count / (self.last - self.t0),
                }
            )
        )


async def bare_count(bootstrap: str, topic: str, n: int) -> None:
    """The ceiling: getmany and count, nothing else."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=uuid.uuid4().hex,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
    )
    progress = Progress(n)
    await c.start()
    got = 0
    while got < n:
        batch = await c.getmany(timeout_ms=500, max_records=50000)
        got += sum(len(msgs) for msgs in batch.values())
        progress.saw(got)
    await c.stop()
    progress.report()


def bare_confluent(bootstrap: str, topic: str, n: int) -> None:
    """librdkafka's ceiling: confluent-kafka's consume() and count, nothing else."""
    from confluent_kafka import Consumer

    progress = Progress(n)
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 32 << 20,
            "max.partition.fetch.bytes": 8 << 20,
            # librdkafka waits 1 s by default before fetching again once its queue
            # was full, which throttles big messages (see streams/kafka/confluent.py).
            "fetch.queue.backoff.ms": 5,
        }
    )
    c.subscribe([topic])
    got = 0
    while got < n:
        msgs = c.consume(num_messages=50000, timeout=0.5)
        got += sum(1 for m in msgs if m.error() is None)
        progress.saw(got)
    c.close()
    progress.report()


async def hand_batched(bootstrap: str, topic: str, n: int, naive: bool = False) -> None:
    """What a careful user writes by hand (or, naive, one message at a time)."""
    import faiss
    import numpy as np
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=uuid.uuid4().hex,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
        fetch_max_bytes=32 << 20,
    )
    index = None
    progress = Progress(n)
    await c.start()
    got = 0
    if naive:
        async for m in c:
            v = np.frombuffer(m.value, dtype="<f4").reshape(1, -1).copy()
            faiss.normalize_L2(v)
            if index is None:
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(v.shape[1]))
            index.add_with_ids(v, np.array([int(m.key)], dtype=np.int64))
            got += 1
            progress.saw(got)
            if got >= n:
                break
    else:
        while got < n:
            batch = await c.getmany(timeout_ms=500, max_records=50000)
            for msgs in batch.values():
                if not msgs:
                    continue
                x = np.frombuffer(b"".join(m.value for m in msgs), dtype="<f4")
                x = x.reshape(len(msgs), -1).copy()
                ids = np.array([int(m.key) for m in msgs], dtype=np.int64)
                faiss.normalize_L2(x)
                if index is None:
                    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
                await asyncio.to_thread(index.add_with_ids, x, ids)
                got += len(msgs)
                progress.saw(got)
    await c.stop()
    progress.report()


async def embedstream(bootstrap: str, topic: str, n: int, tuned: bool = False) -> None:
    """The pipeline; ``tuned``: with the process settings the CLI applies."""
    import aiokafka  # noqa: F401  (imported before tuning, as the CLI does)
    import anyio

    from operators import batch, decode, normalize
    from sinks import FaissSink
    from streams.app.memory import tune_process
    from streams.kafka import KafkaSource

    if tuned:
        tune_process()

    with tempfile.TemporaryDirectory() as tmp:
        source = KafkaSource(bootstrap, [topic], group=uuid.uuid4().hex, format="f32")
        sink = FaissSink(tmp, factory="IDMap2,Flat", metric="ip", snapshot_every=None)
        pipeline = source | decode() | batch(32768) | normalize() | sink
        progress = Progress(n)

        async def watch() -> None:
            while True:
                progress.saw(sink.ntotal)
                if sink.ntotal >= n:
                    pipeline.stop()
                    return
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await pipeline.run()
        progress.report()


def _vectors_held(port: int) -> tuple[float, float] | None:
    """(records read by the source, vectors in the index) from the process's own
    /metrics, or None while it is not serving yet."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    read = held = 0.0
    for line in text.splitlines():
        if line.startswith('embedstream_stage_records_total{stage="kafka"}'):
            read = float(line.rsplit(" ", 1)[1])
        elif line.startswith("embedstream_index_vectors{"):
            held += float(line.rsplit(" ", 1)[1])
    return read, held


def ingest_cli(bootstrap: str, topic: str, n: int, client: str = "aiokafka") -> None:
    """The real thing: `embedstream ingest kafka://...` as users start it, its rate
    read from its own /metrics (polled every 100 ms, as a scraper might); its peak
    RSS from /proc."""
    import shlex
    import signal
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "streams.app.cli", "ingest",
                f"kafka://{bootstrap}/{topic}", "--index", f"{tmp}/idx",
                "--group", uuid.uuid4().hex, "--normalize", "--metric", "ip",
                "--factory", "IDMap2,Flat", "--snapshot-every", "0",
                "--serve", f"127.0.0.1:{port}", "--no-progress",
                "--kafka-client", client,
                # Settings to try against the defaults, e.g. "--batch-bytes 4194304".
                *shlex.split(os.environ.get("EMBEDSTREAM_BENCH_INGEST_ARGS", ""))]  # fmt: skip
        progress = Progress(n)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        hwm = 0
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"ingest exited {proc.returncode}")
                got = _vectors_held(port)
                if got is not None:
                    read, held = got
                    if read and not progress.first:
                        progress.first = time.perf_counter()  # read, not yet held
                    progress.saw(int(held))
                    if held >= n:
                        break
                time.sleep(0.1)
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    print(f"RESULT {json.dumps({'child_peak_rss_mb': hwm / 1024})}")
    progress.report()


def main() -> None:
    contender, bootstrap, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if contender == "embedstream-ingest":
        ingest_cli(bootstrap, topic, n)
        return
    if contender == "embedstream-ingest-confluent":
        ingest_cli(bootstrap, topic, n, client="confluent")
        return
    if contender == "bare-confluent":
        bare_confluent(bootstrap, topic, n)
        return
    if contender == "bare-getmany":
        asyncio.run(bare_count(bootstrap, topic, n))
    elif contender == "hand-batched":
        asyncio.run(hand_batched(bootstrap, topic, n))
    elif contender == "naive-per-message":
        asyncio.run(hand_batched(bootstrap, topic, n, naive=True))
    elif contender in ("embedstream", "embedstream-cli"):
        asyncio.run(embedstream(bootstrap, topic, n, tuned=contender == "embedstream-cli"))
    elif contender == "embedstream-gc-only":
        # The CLI's settings without the mmap threshold pin: what the pin costs in
        # rate (page faults of freshly mapped buffers) and saves in memory.
        os.environ["EMBEDSTREAM_MMAP_THRESHOLD"] = "0"
        asyncio.run(embedstream(bootstrap, topic, n, tuned=True))
    else:
        raise SystemExit(f"unknown contender {contender}")


if __name__ == "__main__":
    main()
