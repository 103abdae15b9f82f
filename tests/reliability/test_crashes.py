"""Crashes, faults and bad input against the real broker; short versions for CI.

The soak (``python -m tests.reliability.soak``) runs the same checks at scale.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import numpy as np
import pytest

from sinks import FaissSink
from sinks.store import CRASH_EXIT_CODE
from streams import Batch
from tests.integration.kafka_util import create_topic, produce
from tests.reliability.oracle import check, ingest_argv, kill_cycles, run_to_idle

pytestmark = pytest.mark.integration

CRASH_POINTS = [
    "objects/*:written",
    "objects/*:synced",
    "objects/*:renamed",
    "objects:dir-synced",
    "manifests/*:written",
    "manifests/*:synced",
    "manifests/*:renamed",
    "manifests:dir-synced",
    "CURRENT:written",
    "CURRENT:synced",
    "CURRENT:renamed",
    "CURRENT:dir-synced",
    "snapshot:listeners-done",
    "prune:manifest *",
    "prune:object *",
]


async def test_crash_at_every_step_of_the_snapshot_protocol(
    kafka: str, topic_name: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    per_round = 1500
    x = rng.standard_normal((per_round * len(CRASH_POINTS), 16)).astype(np.float32)
    await create_topic(kafka, topic_name, 4)
    idx = tmp_path / "idx"
    died = []
    for i, point in enumerate(CRASH_POINTS):
        ids = range(i * per_round, (i + 1) * per_round)
        await produce(kafka, topic_name, ids, x[list(ids)])
        proc = await anyio.to_thread.run_sync(
            lambda point=point: subprocess.run(
                ingest_argv(
                    kafka,
                    topic_name,
                    idx,
                    "--snapshot-every",
                    "0.2",
                    "--keep",
                    "2",
                    "--until-idle",
                    "1.5",
                ),
                env={**os.environ, "EMBEDSTREAM_CRASH_AT": point},
                capture_output=True,
                timeout=120,
            )
        )
        died.append((point, proc.returncode))
    assert all(code == CRASH_EXIT_CODE for _, code in died), died
    await anyio.to_thread.run_sync(run_to_idle, kafka, topic_name, idx)
    verdict = check(idx, x)
    assert verdict.ok, verdict


async def test_kill_9_while_ingesting(kafka: str, topic_name: str, tmp_path: Path) -> None:
    x = np.random.default_rng(12).standard_normal((50_000, 32)).astype(np.float32)
    await create_topic(kafka, topic_name, 4)
    await produce(kafka, topic_name, range(len(x)), x)
    idx = tmp_path / "idx"
    kills = await anyio.to_thread.run_sync(lambda: kill_cycles(kafka, topic_name, idx, 4, seed=1))
    assert kills >= 2
    await anyio.to_thread.run_sync(run_to_idle, kafka, topic_name, idx)
    verdict = check(idx, x)
    assert verdict.ok, verdict


async def test_broker_restart_mid_stream(
    kafka: str, kafka_broker, topic_name: str, tmp_path: Path
) -> None:
    if kafka_broker is None:
        pytest.skip("the broker was given from outside (KAFKA_BOOTSTRAP_SERVERS)")
    x = np.random.default_rng(13).standard_normal((30_000, 16)).astype(np.float32)
    await create_topic(kafka, topic_name, 4)
    await produce(kafka, topic_name, range(15_000), x[:15_000])
    idx = tmp_path / "idx"
    proc = subprocess.Popen(
        ingest_argv(kafka, topic_name, idx, "--snapshot-every", "0.3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(kafka_broker.stop)
        await anyio.sleep(2)
        await anyio.to_thread.run_sync(kafka_broker.start)
        await produce(kafka, topic_name, range(15_000, 30_000), x[15_000:])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await anyio.sleep(1)
            try:
                if check(idx, x).present == len(x):
                    break
            except Exception:
                continue
        assert proc.poll() is None, proc.communicate()[1]  # survived the restart
    finally:
        proc.send_signal(15)
        out, err = proc.communicate(timeout=60)
    verdict = check(idx, x)
    (tmp_path.parent / "broker-restart-stderr.txt").write_text(err)
    assert verdict.ok, (verdict, out, err[-3000:])


async def test_searches_during_adds_upserts_and_deletes(tmp_path: Path) -> None:
    """Every batch rewrites a whole block of ids with one new one-hot direction (or
    deletes the block): a search for a direction sees the whole block or none."""
    dim, block, seconds = 32, 400, 3.0
    sink = FaissSink(tmp_path / "idx", snapshot_every=0.1, segment_size=3000)
    half: list[int] = []
    searches = 0
    done = anyio.Event()

    async def searcher() -> None:
        nonlocal searches
        q = np.eye(dim, dtype=np.float32)
        while not done.is_set():
            if sink.dim is not None:
                res = await sink.search(q, block + 1)
                hits = (res.scores > 0.5).sum(axis=1)
                half.extend(h for h in hits.tolist() if h not in (0, block))
                searches += 1
            await anyio.lowlevel.checkpoint()

    rng = np.random.default_rng(5)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        tg.start_soon(searcher)
        tg.start_soon(searcher)
        start = time.monotonic()
        n = 0
        used: dict[int, int] = {}  # direction -> block now holding it
        while time.monotonic() - start < seconds:
            b = int(rng.integers(0, 8))
            ids = np.arange(b * block, (b + 1) * block)
            if rng.random() < 0.2:
                vec = np.zeros((block, dim), np.float32)
                deleted = np.ones(block, bool)
                direction = None
            else:
                # A direction no other block holds, so hits count one block only.
                free = [d for d in range(dim) if d not in used]
                direction = int(rng.choice(free))
                vec = np.zeros((block, dim), np.float32)
                vec[:, direction] = 1.0
                deleted = None
            for d, holder in list(used.items()):
                if holder == b:
                    del used[d]
            if direction is not None:
                used[direction] = b
            await sink.write(Batch(ids, vec, np.zeros(block), "p", {"offset": n}, deleted=deleted))
            n += 1
        done.set()
        await sink.close(ok=True)
    assert searches > 20 and n > 20
    assert half == []


def test_rss_stays_bounded_with_a_slow_sink(tmp_path: Path) -> None:
    """A fast source and a sink throttled to ~2 MB/s for 15 s: peak RSS stays within
    what the channel capacities imply (no queue grows without bound)."""
    data = tmp_path / "big.npy"
    np.save(data, np.random.default_rng(0).standard_normal((400_000, 128)).astype(np.float32))
    script = tmp_path / "slow.py"
    script.write_text(
        "import anyio\n"
        "from streams import FileSource, Operator\n"
        "from operators import decode, batch\n"
        "from sinks import FaissSink\n"
        "async def throttle(inbox):\n"
        "    async for b in inbox:\n"
        "        await anyio.sleep(b.nbytes / 2e6)\n"
        "        yield b\n"
        f"pipeline = (FileSource({str(data)!r}, chunk_bytes=1 << 20) | decode() | batch(4096)"
        " | Operator('throttle', throttle)"
        f" | FaissSink({str(tmp_path / 'idx')!r}, snapshot_every=0))\n"
        "pipeline.capacity = 2\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", str(script), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    samples = []
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                text = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                    samples.append(rss)
                    peak = max(peak, rss)
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    time.sleep(15)
    stop.set()
    t.join()
    proc.kill()
    proc.wait()
    assert len(samples) > 50
    # Index after 15 s at 2 MB/s: ~30 MB. Channels: 3 x capacity 2 x ~2 MB batches,
    # plus the memory-mapped chunks in flight. Interpreter, numpy, faiss: ~150 MB.
    early = float(np.median(samples[20:40]))
    late = float(np.median(samples[-20:]))
    assert late - early < 60, (early, late)
    assert peak < 400, peak
