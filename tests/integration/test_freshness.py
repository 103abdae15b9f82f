"""Freshness contracts against the real broker: read-your-writes with ``after``
(through HTTP and from Python), positions in every answer, 504 on timeout."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from operators import batch, decode
from sinks import FaissSink, SearchTimeout
from streams import Operator
from streams.kafka import KafkaSource, after_record
from tests.integration.kafka_util import create_topic
from tests.streams.test_http import fetch, free_port

DIM = 16


def _vector(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.standard_normal(DIM).astype(np.float32)


async def _up(url: str) -> None:
    """Wait for the ingest process's HTTP server."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, _ = await anyio.to_thread.run_sync(fetch, url)
            if status == 200:
                return
        except OSError:
            pass
        await anyio.sleep(0.2)
    pytest.fail(f"{url} did not answer")


@pytest.mark.asyncio
async def test_read_your_writes_over_http_finds_every_record(
    kafka: str, topic_name: str, tmp_path: Path
) -> None:
    """Produce, then search with the record's offset as `after`: found every time
    (1,000 tries, 0 misses); a future offset times out with 504 and the positions."""
    await create_topic(kafka, topic_name, partitions=2)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.app.cli", "ingest", f"kafka://{kafka}/{topic_name}",
         "--index", str(tmp_path / "idx"), "--group", f"g-{topic_name}", "--dim", str(DIM),
         "--metric", "l2", "--serve", f"127.0.0.1:{port}", "--snapshot-every", "1",
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=0)
    await producer.start()
    url = f"http://127.0.0.1:{port}/search"
    try:
        await _up(url.replace("search", "healthz"))
        misses, waits = 0, []
        for i in range(1000):
            v = _vector(i)
            meta = await producer.send_and_wait(topic_name, v.tobytes(), key=str(i).encode())
            body = {"vectors": [v.tolist()], "k": 1, "after": after_record(meta),
                    "timeout_ms": 5000}  # fmt: skip
            started = time.perf_counter()
            status, raw = await anyio.to_thread.run_sync(fetch, url, body)
            waits.append(time.perf_counter() - started)
            assert status == 200, raw
            answer = json.loads(raw)
            if answer["results"][0]["ids"] != [i]:
                misses += 1
            shard = f"{topic_name}-{meta.partition}"
            # The answer covers the record: its shard's position is past its offset.
            assert answer["positions"][shard] > meta.offset
            assert shard in answer["snapshots"]
        assert misses == 0
        print(f"read-your-writes: p50 {np.median(waits) * 1e3:.1f} ms")
        # A record that was never produced: 504, with how far each shard got.
        ahead = {f"{topic_name}-0": 10**9}
        body = {"vectors": [_vector(0).tolist()], "k": 1, "after": ahead, "timeout_ms": 300}
        status, raw = await anyio.to_thread.run_sync(fetch, url, body)
        assert status == 504, raw
        answer = json.loads(raw)
        assert answer["waiting_for"] == [f"{topic_name}-0"]
        assert answer["positions"][f"{topic_name}-0"] > 0
        assert "not searchable within 0.3s" in answer["error"]
        bad = {"vectors": [[0.0] * DIM], "after": {"x-0": -1}}
        status, raw = await anyio.to_thread.run_sync(fetch, url, bad)
        assert status == 400 and b"after" in raw
    finally:
        await producer.stop()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


@pytest.mark.asyncio
async def test_after_waits_while_ingestion_is_paused_then_answers(
    kafka: str, topic_name: str, tmp_path: Path
) -> None:
    """From Python: a search with `after` waits while the pipeline is paused (a
    stage holds the batches back) and times out; once ingestion resumes, the same
    search finds the record."""
    await create_topic(kafka, topic_name, partitions=1)
    gate = anyio.Event()

    async def hold(inbox):
        async for b in inbox:
            await gate.wait()
            yield b

    sink = FaissSink(tmp_path / "idx", metric="l2", snapshot_every=None)
    source = KafkaSource(kafka, [topic_name], group=f"g-{topic_name}")
    pipeline = (
        source | decode(dim=DIM) | batch(64, max_latency=0.01) | Operator("pause", hold) | sink
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run)
            v = _vector(7)
            meta = await producer.send_and_wait(topic_name, v.tobytes(), key=b"7")
            with pytest.raises(SearchTimeout) as info:
                await sink.search(v[None], 1, after=after_record(meta), timeout=0.5)
            assert info.value.waiting_for == [f"{topic_name}-0"]
            gate.set()
            hits = await sink.search(v[None], 1, after=after_record(meta), timeout=30)
            assert hits.ids[0, 0] == 7
            assert hits.positions[f"{topic_name}-0"] == meta.offset + 1
            # Commit the offsets while the consumer runs: the final snapshot then has
            # nothing new (an offset commit after the consumer stopped opens a
            # connection aiokafka never closes).
            await sink.snapshot()
            pipeline.stop()
    finally:
        await producer.stop()


@pytest.mark.asyncio
async def test_a_short_ttl_expires_kafka_records_while_ingest_runs(
    kafka: str, topic_name: str, tmp_path: Path
) -> None:
    """`ingest --ttl 2s` from Kafka: records are found, then gone after their
    Kafka timestamp + 2 s, counted in /metrics; an upsert renews one."""
    await create_topic(kafka, topic_name, partitions=1)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.app.cli", "ingest", f"kafka://{kafka}/{topic_name}",
         "--index", str(tmp_path / "idx"), "--group", f"g-{topic_name}", "--dim", str(DIM),
         "--metric", "l2", "--ttl", "2s", "--serve", f"127.0.0.1:{port}",
         "--snapshot-every", "0.5", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    url = f"http://127.0.0.1:{port}"
    try:
        await _up(f"{url}/healthz")
        metas = [
            await producer.send_and_wait(topic_name, _vector(i).tobytes(), key=str(i).encode())
            for i in range(20)
        ]
        q = [_vector(i).tolist() for i in range(20)]
        body = {"vectors": q, "k": 1, "after": after_record(*metas), "timeout_ms": 30000}
        status, raw = await anyio.to_thread.run_sync(fetch, f"{url}/search", body)
        assert status == 200, raw
        assert [r["ids"] for r in json.loads(raw)["results"]] == [[i] for i in range(20)]
        await anyio.sleep(1.2)
        renewed = await producer.send_and_wait(topic_name, _vector(0).tobytes(), key=b"0")
        await anyio.sleep(1.5)  # past the first 20 deadlines, not the renewed one
        body = {"vectors": q, "k": 1, "after": after_record(renewed), "timeout_ms": 30000}
        status, raw = await anyio.to_thread.run_sync(fetch, f"{url}/search", body)
        # Only the renewed record is left: it is every query's nearest.
        assert {tuple(r["ids"]) for r in json.loads(raw)["results"]} == {(0,)}
        _, text = await anyio.to_thread.run_sync(fetch, f"{url}/metrics")
        assert "embedstream_expired_total 19.0" in text.decode()
    finally:
        await producer.stop()
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
