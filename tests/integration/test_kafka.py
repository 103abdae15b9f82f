"""KafkaSource against a real Apache Kafka broker."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np
import pytest

from operators import batch, decode
from sinks import open_snapshot
from streams.kafka import KafkaSource
from tests.integration.kafka_util import create_topic, produce, read_all

pytestmark = pytest.mark.integration


def ingest(
    kafka: str, topic: str, idx: Path, *extra: str, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    from tests.reliability.oracle import ingest_argv

    proc = subprocess.run(
        ingest_argv(kafka, topic, idx, "--until-idle", "2", *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def inspect(idx: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "streams.app.cli", "inspect", str(idx), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def vectors_by_id(idx: Path) -> dict[int, np.ndarray]:
    view = open_snapshot(idx)
    out: dict[int, np.ndarray] = {}
    for shard in view.shards:
        ids = shard.ids()
        assert len(ids) == len(set(ids.tolist())), "an id twice in one shard"
        vecs = shard.reconstruct(ids) if len(ids) else np.zeros((0, view.dim))
        for i, v in zip(ids.tolist(), vecs, strict=True):
            assert i not in out, f"id {i} in two shards"
            out[i] = v
    return out


@pytest.mark.asyncio
async def test_ingest_restart_and_pick_up_new_records(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6000, 16)).astype(np.float32)
    await create_topic(kafka, topic_name, 4)
    await produce(kafka, topic_name, range(4000), x[:4000])
    idx = tmp_path / "idx"
    out = ingest(kafka, topic_name, idx).stdout
    assert "4,000 records" in out
    info = inspect(idx)
    assert info["ntotal"] == 4000 and len(info["shards"]) == 4
    assert sum(s["position"]["offset"] for s in info["shards"]) == 4000
    # A restart resumes at the snapshot's offsets: nothing again.
    assert ingest(kafka, topic_name, idx).stdout.startswith("0 records")
    await produce(kafka, topic_name, range(4000, 6000), x[4000:])
    assert "2,000 records" in ingest(kafka, topic_name, idx).stdout
    got = vectors_by_id(idx)
    assert sorted(got) == list(range(6000))
    for i in (0, 3999, 4000, 5999):
        assert np.array_equal(got[i], x[i])


@pytest.mark.asyncio
async def test_tombstones_delete_and_bad_messages_go_to_dead_letter_topic(
    kafka: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka, topic_name, 2)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    await produce(kafka, topic_name, range(10), x)
    await produce(kafka, topic_name, [3, 7], None, values=[None, None])  # tombstones
    bad_values = [b"\x00\x01\x02", np.ones(5, "<f4").tobytes(), np.full(4, np.nan, "<f4").tobytes()]
    await produce(kafka, topic_name, [100, 101, 102], None, values=bad_values)
    no_key = [np.ones(4, "<f4").tobytes()]
    await produce(kafka, topic_name, [0], None, values=no_key, keys=[None])  # no id at all
    dl_topic = f"{topic_name}-dl"
    idx = tmp_path / "idx"
    ingest(kafka, topic_name, idx, "--dead-letter", f"kafka://{kafka}/{dl_topic}")
    got = vectors_by_id(idx)
    assert sorted(got) == [0, 1, 2, 4, 5, 6, 8, 9]
    letters = await read_all(kafka, dl_topic, 4)
    assert sorted(r["reason"] for r in letters) == [
        "bad-vector",
        "missing-id",
        "not-finite",
        "wrong-dimension",
    ]
    for r in letters:
        assert r["stage"] == "decode" and topic_name in r["source"]
        assert "offset" in r["position"]
        assert r["raw"] is None or isinstance(r["raw"], (str, dict))


@pytest.mark.asyncio
async def test_two_processes_in_one_group_split_partitions_and_lag_reaches_zero(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.streams.test_http import fetch, free_port

    await create_topic(kafka, topic_name, 4)
    x = np.random.default_rng(2).standard_normal((20000, 8)).astype(np.float32)
    await produce(kafka, topic_name, range(10000), x[:10000])
    ports = [free_port(), free_port()]
    procs = []

    def lag_of(port: int) -> dict[str, float]:
        _, text = fetch(f"http://127.0.0.1:{port}/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
        return {
            s.labels["partition"]: s.value for s in fams["embedstream_kafka_consumer_lag"].samples
        }

    try:
        for i, port in enumerate(ports):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "streams.app.cli",
                        "ingest",
                        f"kafka://{kafka}/{topic_name}",
                        "--index",
                        str(tmp_path / f"idx{i}"),
                        "--group",
                        f"g-{topic_name}",
                        "--serve",
                        f"127.0.0.1:{port}",
                        "--snapshot-every",
                        "0.5",
                        "--no-progress",
                        "--kafka-client",
                        kafka_client,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            await anyio.sleep(1.5)
        await produce(kafka, topic_name, range(10000, 20000), x[10000:])
        deadline = time.monotonic() + 90
        lags: list[dict[str, float]] = [{}, {}]
        while time.monotonic() < deadline:
            try:
                lags = [await anyio.to_thread.run_sync(lag_of, p) for p in ports]
            except OSError:
                await anyio.sleep(0.2)
                continue
            parts = [set(lag) for lag in lags]
            if (
                all(parts)
                and not parts[0] & parts[1]
                and len(parts[0] | parts[1]) == 4
                and all(v == 0 for lag in lags for v in lag.values())
            ):
                break
            await anyio.sleep(0.2)
        else:
            pytest.fail(f"partitions not split or lag not 0: {lags}")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.communicate(timeout=60)
    assert all(proc.returncode == 0 for proc in procs)
    ids: set[int] = set()
    for i in range(2):
        ids.update(vectors_by_id(tmp_path / f"idx{i}"))
    assert ids == set(range(20000))


@pytest.mark.asyncio
async def test_a_slow_sink_pauses_fetching_without_leaving_the_group(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    """The sink takes longer than max.poll.interval.ms per batch: the source pauses its
    partitions and keeps polling, so the consumer is never thrown out of the group."""
    from tests.streams.test_http import SlowSink

    await create_topic(kafka, topic_name, 2)
    await produce(kafka, topic_name, range(3000), np.ones((3000, 4), np.float32))

    # librdkafka wants max.poll.interval.ms >= session.timeout.ms, which the broker
    # keeps at 6 s or more.
    interval = 2.0 if kafka_client == "aiokafka" else 6.0
    options: dict[str, Any] = {
        "max_poll_interval_ms": int(interval * 1000),
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 500,
        "max_partition_fetch_bytes": 4096,
    }

    class VerySlow(SlowSink):
        async def write(self, item: Any) -> None:
            await anyio.sleep(1.25 * interval)

    source = KafkaSource(
        kafka,
        [topic_name],
        group=f"g-{topic_name}",
        max_records=200,
        consumer_options=options,
        client=kafka_client,
    )
    p = source | decode() | batch(100, max_latency=0.01) | VerySlow()
    p.capacity = 1
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.run)
        await anyio.sleep(4.5 * interval)  # several max.poll.interval.ms, the channel full
        stats = source.statistics()
        p.stop()
        tg.cancel_scope.cancel()
    assert stats.rebalances == 1, stats  # assigned once, never kicked out
    assert p.metrics().channels["kafka->decode"].send_blocked_seconds > 5


@pytest.mark.asyncio
async def test_kill_9_at_random_moments_then_exactly_once(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    n = 60000
    rng = np.random.default_rng(9)
    x = rng.standard_normal((n, 32)).astype(np.float32)
    await create_topic(kafka, topic_name, 4)
    await produce(kafka, topic_name, range(n), x)
    idx = tmp_path / "idx"
    argv = [
        sys.executable,
        "-m",
        "streams.app.cli",
        "ingest",
        f"kafka://{kafka}/{topic_name}",
        "--index",
        str(idx),
        "--group",
        f"g-{topic_name}",
        "--snapshot-every",
        "0.2",
        "--batch-size",
        "1000",
        "--no-progress",
        "--capacity",
        "2",
    ]
    chooser = random.Random(4)
    kills = 0
    for _ in range(5):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(chooser.uniform(1.0, 3.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    ingest(kafka, topic_name, idx)
    got = vectors_by_id(idx)
    assert len(got) == n and sorted(got) == list(range(n))
    stacked = np.stack([got[i] for i in range(n)])
    assert np.array_equal(stacked, x)  # bit-exact
    assert inspect(idx)["ntotal"] == n


def test_out_of_range_offset_is_an_error(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    anyio.run(create_topic, kafka, topic_name, 1)
    anyio.run(lambda: produce(kafka, topic_name, range(10), np.ones((10, 4), np.float32)))
    idx = tmp_path / "idx"
    ingest(kafka, topic_name, idx)
    # Pretend the index is ahead of the broker (as after the topic was recreated):
    view = open_snapshot(idx)
    owner = view.manifest["shards"][0]["owner"]
    seq = view.manifest["workers"][owner]["seq"]
    path = idx / "workers" / owner / "manifests" / f"{seq:08d}.json"
    manifest = msgspec.json.decode(path.read_bytes())
    manifest["shards"][0]["position"] = {"offset": 10_000}
    path.write_bytes(msgspec.json.encode(manifest))
    proc = ingest(kafka, topic_name, idx, check=False)
    assert proc.returncode == 1
    assert "no longer on the broker" in proc.stderr or "offset" in proc.stderr


@pytest.mark.asyncio
async def test_live_record_is_searchable_within_a_second_over_http(
    kafka: str, topic_name: str, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.streams.test_http import fetch, free_port

    await create_topic(kafka, topic_name, 2)
    x = np.random.default_rng(3).standard_normal((101, 16)).astype(np.float32)
    await produce(kafka, topic_name, range(100), x[:100])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.app.cli",
            "ingest",
            f"kafka://{kafka}/{topic_name}",
            "--index",
            str(tmp_path / "idx"),
            "--group",
            f"g-{topic_name}",
            "--metric",
            "l2",
            "--max-latency",
            "0.01",
            "--serve",
            f"127.0.0.1:{port}",
            "--no-progress",
            "--snapshot-every",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                code, body = await anyio.to_thread.run_sync(
                    fetch, f"{base}/search", {"vectors": [x[0].tolist()], "k": 1}
                )
                if code == 200 and json.loads(body)["results"][0]["ids"] == [0]:
                    break
            except OSError:
                pass
            await anyio.sleep(0.1)
        else:
            pytest.fail("the first records never became searchable")
        await produce(kafka, topic_name, [100], x[100:])
        produced = time.monotonic()
        while True:
            code, body = await anyio.to_thread.run_sync(
                fetch, f"{base}/search", {"vectors": [x[100].tolist()], "k": 1}
            )
            if json.loads(body)["results"][0]["ids"] == [100]:
                break
            assert time.monotonic() - produced < 5, "not searchable after 5 s"
            await anyio.sleep(0.01)
        took = time.monotonic() - produced
        assert took < 1.0, f"searchable after {took:.2f}s"
        _, text = await anyio.to_thread.run_sync(fetch, f"{base}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        lag = families["embedstream_kafka_consumer_lag"].samples
        assert {s.labels["partition"] for s in lag} == {"0", "1"}
        assert all(s.labels["topic"] == topic_name and s.value == 0 for s in lag)
        count = [
            s.value
            for s in families["embedstream_freshness_seconds"].samples
            if s.name.endswith("_count")
        ]
        assert count == [101.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "101 records" in out


@pytest.mark.asyncio
async def test_fetch_responses_read_whole_give_what_per_record_reading_gives(
    kafka: str, topic_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka's responses read straight into arrays (streams.kafka.wire), fetched
    in a thread (streams.kafka.transport) or on the event loop, against aiokafka's
    ConsumerRecords, on one topic with every kind of record: plain 96-d vectors, a
    gzip-compressed run, tombstones, headers, string keys, a NaN."""
    from aiokafka import AIOKafkaProducer

    from streams.deadletters import Rejects
    from tests.helpers import collect

    rng = np.random.default_rng(11)
    x = rng.standard_normal((3000, 96)).astype(np.float32)
    x[17, 5] = np.nan
    await create_topic(kafka, topic_name, 2)
    await produce(kafka, topic_name, range(2000), x[:2000])
    producer = AIOKafkaProducer(bootstrap_servers=kafka, compression_type="gzip")
    await producer.start()
    try:
        for i in range(2000, 2500):
            await producer.send(topic_name, key=str(i).encode(), value=x[i].tobytes())
    finally:
        await producer.stop()
    await produce(
        kafka,
        topic_name,
        range(2500, 2600),
        None,
        keys=[f"doc-{i}".encode() for i in range(2500, 2600)],
        values=[x[i].tobytes() for i in range(2500, 2600)],
        headers=[[("lang", b"en")] if i % 2 else None for i in range(2500, 2600)],
    )
    await produce(kafka, topic_name, range(0, 100), None, values=[None] * 100)
    await produce(kafka, topic_name, range(2600, 3000), x[2600:])

    from streams.kafka import chunks

    whole = 0
    vectors_chunk = chunks.vectors_chunk

    def counting(tp: Any, wire: Any, fmt: str, slabs: Any = None) -> Any:
        nonlocal whole
        got = vectors_chunk(tp, wire, fmt, slabs)
        whole += got is not None
        return got

    monkeypatch.setattr(chunks, "vectors_chunk", counting)

    from streams.kafka.transport import FetchLane

    lane_fetches = 0
    roundtrip = FetchLane.roundtrip

    def counted_roundtrip(self: FetchLane, *args: Any) -> Any:
        nonlocal lane_fetches
        lane_fetches += 1
        return roundtrip(self, *args)

    monkeypatch.setattr(FetchLane, "roundtrip", counted_roundtrip)

    class Letters:
        def __init__(self) -> None:
            self.letters: list[Any] = []

        async def write(self, letters: list[Any]) -> None:
            self.letters.extend(letters)

        async def aclose(self) -> None:
            pass

    async def consume(raw: bool, thread: bool = True) -> dict[int, tuple[bool, bytes, Any]]:
        source = KafkaSource(
            kafka,
            [topic_name],
            group=f"g-{raw}-{thread}-{topic_name}",
            until_idle=2.0,
            raw_records=raw,
            fetch_thread=thread,
            max_records=700,  # whole responses are cut, too
        )
        letters = Letters()
        rows: dict[int, tuple[bool, bytes, Any]] = {}
        got = await collect(source, decode(errors=Rejects("dead-letter", letters)))
        assert [(r.reason, r.raw) for r in letters.letters] == [("not-finite", x[17].tobytes())]
        for b in got:
            deleted = b.deleted if b.deleted is not None else np.zeros(len(b), bool)
            for j, i in enumerate(b.ids.tolist()):
                meta = b.metadata[j] if b.metadata is not None else None
                rows[i] = (bool(deleted[j]), b.vectors[j].tobytes(), meta)
        return rows

    per_record = await consume(False)
    assert whole == 0 and lane_fetches == 0
    read_whole = await consume(True)
    assert whole > 0  # the plain runs came as whole responses
    assert lane_fetches > 0  # through the fetch thread
    assert read_whole == per_record
    whole = lane_fetches = 0
    assert await consume(True, thread=False) == per_record
    assert whole > 0 and lane_fetches == 0
    # 2,900 integer ids (17, the NaN, only as a delete) and 100 hashed string keys.
    assert len(per_record) == 3000
    assert sum(d for d, _, _ in per_record.values()) == 100


@pytest.mark.asyncio
async def test_the_final_snapshot_offsets_are_committed_for_lag_tools(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    """`ingest --until-idle` takes its final snapshot after its consumer has left the
    group; the snapshot's offsets still reach Kafka, so lag tools see 0 behind."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from tests.reliability.oracle import ingest_argv

    await create_topic(kafka, topic_name, 2)
    await produce(kafka, topic_name, range(1000), np.ones((1000, 8), np.float32))
    argv = ingest_argv(kafka, topic_name, tmp_path / "idx", "--until-idle", "2")
    group = argv[argv.index("--group") + 1]
    subprocess.run(argv, check=True, capture_output=True, timeout=180)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic_name, p) for p in range(2)]
        ends = await consumer.end_offsets(parts)
        assert [await consumer.committed(tp) for tp in parts] == [ends[tp] for tp in parts]
    finally:
        await consumer.stop()
