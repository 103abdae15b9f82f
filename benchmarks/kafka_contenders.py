"""The Kafka job, one contender per invocation:

    python -m benchmarks.kafka_contenders CONTENDER BOOTSTRAP TOPIC N

Consume the topic from the start, L2-normalise, add with ids to ``IDMap2,Flat``
(inner product), stop when all N are in. Prints ``RESULT {json}`` with the seconds
from consumer start to the first record and to the last record being searchable.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid


def _result(t0: float, first: float, last: float, n: int) -> None:
    print(
        "RESULT "
        + json.dumps(
            {
                "records": n,
                "first_record_s": first - t0,
                "wall_s": last - t0,
                "steady_s": last - first,
                "steady_rate": n / (last - first) if last > first else 0.0,
                "wall_rate": n / (last - t0),
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
    t0 = time.perf_counter()
    await c.start()
    got, first = 0, 0.0
    while got < n:
        batch = await c.getmany(timeout_ms=500, max_records=50000)
        for msgs in batch.values():
            if msgs and not first:
                first = time.perf_counter()
            got += len(msgs)
    last = time.perf_counter()
    await c.stop()
    _result(t0, first, last, got)


def bare_confluent(bootstrap: str, topic: str, n: int) -> None:
    """librdkafka's ceiling: confluent-kafka's consume() and count, nothing else."""
    from confluent_kafka import Consumer

    t0 = time.perf_counter()
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
    got, first = 0, 0.0
    while got < n:
        msgs = c.consume(num_messages=50000, timeout=0.5)
        if msgs and not first:
            first = time.perf_counter()
        got += sum(1 for m in msgs if m.error() is None)
    last = time.perf_counter()
    c.close()
    _result(t0, first, last, got)


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
    t0 = time.perf_counter()
    await c.start()
    got, first = 0, 0.0
    if naive:
        async for m in c:
            if not first:
                first = time.perf_counter()
            v = np.frombuffer(m.value, dtype="<f4").reshape(1, -1).copy()
            faiss.normalize_L2(v)
            if index is None:
                index = faiss.IndexIDMap2(faiss.IndexFlatIP(v.shape[1]))
            index.add_with_ids(v, np.array([int(m.key)], dtype=np.int64))
            got += 1
            if got >= n:
                break
    else:
        while got < n:
            batch = await c.getmany(timeout_ms=500, max_records=50000)
            for msgs in batch.values():
                if not msgs:
                    continue
                if not first:
                    first = time.perf_counter()
                x = np.frombuffer(b"".join(m.value for m in msgs), dtype="<f4")
                x = x.reshape(len(msgs), -1).copy()
                ids = np.array([int(m.key) for m in msgs], dtype=np.int64)
                faiss.normalize_L2(x)
                if index is None:
                    index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
                await asyncio.to_thread(index.add_with_ids, x, ids)
                got += len(msgs)
    last = time.perf_counter()
    await c.stop()
    _result(t0, first, last, got)


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
        t0 = time.perf_counter()
        marks: dict[str, float] = {}

        async def watch() -> None:
            while True:
                if (
                    "first" not in marks
                    and pipeline.channels
                    and pipeline.channels[0].stats.items_in
                ):
                    marks["first"] = time.perf_counter()
                if sink.ntotal >= n:
                    marks["last"] = time.perf_counter()
                    pipeline.stop()
                    return
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await pipeline.run()
        _result(t0, marks["first"], marks["last"], sink.ntotal)


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
    read from its own /metrics (polled every 20 ms); its peak RSS from /proc."""
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
                "--kafka-client", client]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        first = last = 0.0
        hwm = 0
        try:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"ingest exited {proc.returncode}")
                got = _vectors_held(port)
                if got is not None:
                    read, held = got
                    if read and not first:
                        first = time.perf_counter()
                    if held >= n:
                        last = time.perf_counter()
                        break
                time.sleep(0.02)
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm = int(line.split()[1])
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    print(f"RESULT {json.dumps({'child_peak_rss_mb': hwm / 1024})}")
    _result(t0, first, last, n)


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
