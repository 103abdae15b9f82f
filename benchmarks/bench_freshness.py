"""Freshness: how long after a record is produced it is searchable, at a fixed produce
rate of half the measured maximum (``benchmarks/results/kafka.json``).

A producer process writes 128-d float32 records to a 4-partition topic at a steady
rate (aiokafka batches built by hand, each record stamped when appended); an
embedstream pipeline tuned for latency (``batch(4096, max_latency=0.001)``) indexes
them. Freshness of a record = the moment the batch holding it became searchable
minus its Kafka timestamp, for every record after a warm-up second.

Read-your-writes, in the same runs: every 20 ms a probe record (its own id and
vector) is produced with ``acks=all``; from the producer's acknowledgement to a
``sink.search(..., after=after_record(meta))`` answer that holds the probe is its
latency. Runs repeat; medians of the per-run p50/p99.

    python -m benchmarks.bench_freshness [--rate R] [--seconds S] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, python, run_child, save, table
from benchmarks.kafka_env import broker

DIM = 128
WARMUP_S = 1.0


async def _produce(bootstrap: str, topic: str, rate: float, seconds: float) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    await producer.start()
    x = np.random.default_rng(0).standard_normal((4096, DIM)).astype("<f4")
    values = [row.tobytes() for row in x]
    partitions = sorted(await producer.partitions_for(topic))
    tick = 0.005
    sent = 0
    start = time.perf_counter()
    try:
        while (now := time.perf_counter() - start) < seconds:
            due = int(rate * now) - sent
            if due > 0:
                per = -(-due // len(partitions))
                futures = []
                for p in partitions:
                    batch = producer.create_batch()
                    for _ in range(min(per, due)):
                        i = sent
                        batch.append(key=str(i).encode(), value=values[i % 4096], timestamp=None)
                        sent += 1
                        due -= 1
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                await asyncio.gather(*futures)
            await asyncio.sleep(tick)
    finally:
        await producer.stop()
    return sent


def produce(bootstrap: str, topic: str, rate: float, seconds: float) -> None:
    sent = asyncio.run(_produce(bootstrap, topic, rate, seconds))
    print("RESULT " + json.dumps({"sent": sent, "rate": sent / seconds}))


def consume(bootstrap: str, topic: str, seconds: float, max_latency: float) -> None:
    """Index the topic for ``seconds`` after the first record; report freshness."""
    import anyio
    from aiokafka import AIOKafkaProducer

    from operators import batch, decode
    from sinks import FaissSink
    from streams import Batch
    from streams.kafka import KafkaSource, after_record

    fresh: list[np.ndarray] = []
    marks: dict[str, float] = {}
    events: dict[str, anyio.Event] = {}
    probes: list[float] = []
    misses = [0]

    class Timed(FaissSink):
        async def write(self, item: Batch) -> None:
            await super().write(item)
            now = time.time()
            if "first" not in marks:
                marks["first"] = now
                events["first"].set()
            if now - marks["first"] > WARMUP_S and len(item):
                fresh.append(now - item.timestamps)

    with tempfile.TemporaryDirectory() as tmp:
        source = KafkaSource(bootstrap, [topic], group=uuid.uuid4().hex, poll_timeout=0.05)
        sink = Timed(tmp, snapshot_every=None)
        pipeline = source | decode() | batch(4096, max_latency=max_latency) | sink

        async def main() -> None:
            events["first"] = anyio.Event()

            async def stop_later() -> None:
                await events["first"].wait()
                await anyio.sleep(seconds)
                pipeline.stop()

            async def probe() -> None:
                await events["first"].wait()
                await anyio.sleep(WARMUP_S)
                rng = np.random.default_rng(1)
                producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
                await producer.start()
                try:
                    j = 0
                    while not pipeline.stopping:
                        pid = 10**9 + j
                        v = rng.standard_normal(DIM).astype("<f4")
                        meta = await producer.send_and_wait(
                            topic, v.tobytes(), key=str(pid).encode()
                        )
                        acked = time.perf_counter()
                        hits = await sink.search(v[None], 1, after=after_record(meta), timeout=5)
                        probes.append(time.perf_counter() - acked)
                        misses[0] += int(hits.ids[0, 0] != pid)
                        j += 1
                        await anyio.sleep(0.02)
                finally:
                    await producer.stop()

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_later)
                tg.start_soon(probe)
                await pipeline.run()

        print("READY", flush=True)
        anyio.run(main)
    f = np.concatenate(fresh) if fresh else np.zeros(0)
    print(
        "RESULT "
        + json.dumps(
            {
                "records": int(f.size),
                "p50_ms": float(np.percentile(f, 50) * 1000),
                "p99_ms": float(np.percentile(f, 99) * 1000),
                "max_ms": float(f.max() * 1000),
                "ryw_probes": len(probes),
                "ryw_misses": misses[0],
                "ryw_p50_ms": float(np.percentile(probes, 50) * 1000) if probes else None,
                "ryw_p99_ms": float(np.percentile(probes, 99) * 1000) if probes else None,
            }
        )
    )


def default_rate() -> float:
    """Half of embedstream's steady rate in the last Kafka benchmark."""
    try:
        kafka = json.loads((RESULTS / "kafka.json").read_text())
        return float(kafka["contenders"]["embedstream"]["steady_rate_median"]) / 2
    except (OSError, KeyError, ValueError):
        return 150_000.0


def run(rate: float, seconds: float, repeats: int, max_latency: float) -> dict[str, Any]:
    runs = []
    with broker() as bootstrap:
        for _ in range(repeats):
            topic = f"fresh-{uuid.uuid4().hex[:8]}"
            subprocess.run(
                [python(), "-m", "benchmarks.kafka_env", "create", bootstrap, topic],
                check=True,
            )
            consumer = subprocess.Popen(
                [
                    python(),
                    "-m",
                    "benchmarks.bench_freshness",
                    "consume",
                    bootstrap,
                    topic,
                    str(seconds),
                    str(max_latency),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert consumer.stdout is not None
            consumer.stdout.readline()  # READY
            time.sleep(3)  # the group join
            produced = run_child(
                [
                    *(python(), "-m", "benchmarks.bench_freshness", "produce", bootstrap, topic),
                    *(str(rate), str(seconds + 2)),
                ]
            )
            out, _ = consumer.communicate(timeout=120)
            result = next(json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT "))
            runs.append({**result, "produced_rate": produced.extra["rate"]})
    res = {
        "job": f"Kafka 4 partitions, {DIM}-d f32, produced at {rate:,.0f} records/s for "
        f"{seconds:.0f}s; decode -> batch(4096, max_latency={max_latency * 1000:g} ms) -> Flat",
        "rate": rate,
        "max_latency_s": max_latency,
        "runs": runs,
        "p50_ms_median": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms_median": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "read_your_writes_p50_ms_median": round(
            statistics.median(r["ryw_p50_ms"] for r in runs), 2
        ),
        "read_your_writes_p99_ms_median": round(
            statistics.median(r["ryw_p99_ms"] for r in runs), 2
        ),
        "read_your_writes_misses": sum(r["ryw_misses"] for r in runs),
        "produced_rate_median": round(statistics.median(r["produced_rate"] for r in runs)),
    }
    save("freshness", res)
    return res


def report(res: dict[str, Any]) -> str:
    rows = [
        (
            str(i + 1),
            f"{r['produced_rate']:,.0f}",
            f"{r['records']:,}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['max_ms']:.1f}",
            f"{r['ryw_probes']}",
            f"{r['ryw_p50_ms']:.1f}",
            f"{r['ryw_p99_ms']:.1f}",
        )
        for i, r in enumerate(res["runs"])
    ]
    t = table(
        rows,
        ("run", "produced/s", "records measured", "p50 ms", "p99 ms", "max ms",
         "read-your-writes probes", "ack -> answer p50 ms", "p99 ms"),
    )  # fmt: skip
    return (
        f"{res['job']}\n\n{t}\n\nmedian p50 {res['p50_ms_median']} ms, "
        f"p99 {res['p99_ms_median']} ms; read-your-writes (ack -> answer holding the record) "
        f"p50 {res['read_your_writes_p50_ms_median']} ms, p99 "
        f"{res['read_your_writes_p99_ms_median']} ms, {res['read_your_writes_misses']} misses"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "produce":
        produce(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "consume":
        consume(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        ap = argparse.ArgumentParser(description=__doc__)
        ap.add_argument("--rate", type=float, default=None)
        ap.add_argument("--seconds", type=float, default=10.0)
        ap.add_argument("--repeats", type=int, default=3)
        ap.add_argument("--max-latency", type=float, default=0.001)
        a = ap.parse_args()
        print(report(run(a.rate or default_rate(), a.seconds, a.repeats, a.max_latency)))
