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
    wrong_payloads: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.present == self.expected
            and not self.missing
            and not self.duplicated
            and not self.unknown
            and not self.wrong_vectors
            and not self.wrong_payloads
        )


def row_headers(ids: range | list[int]) -> list[list[tuple[str, bytes]] | None]:
    """The Kafka headers the oracle's records carry: their payload, ``{"row": id}``."""
    return [[("row", str(i).encode())] for i in ids]


def check(idx: Path, x: np.ndarray, payloads: bool = False) -> Verdict:
    """Compare the index at ``idx`` (what a restart loads) with rows ``x`` (id = row);
    with ``payloads``, every vector must also carry its :func:`row_headers` payload."""
    view = open_snapshot(idx)
    ids = np.concatenate([s.ids() for s in view.shards]) if view.shards else np.zeros(0, int)
    uniq, counts = np.unique(ids, return_counts=True)
    known = (uniq >= 0) & (uniq < len(x))
    wrong = wrong_payloads = 0
    for shard in view.shards:
        sid = shard.ids()
        sid = sid[(sid >= 0) & (sid < len(x))]
        if len(sid):
            wrong += int((shard.reconstruct(sid) != x[sid]).any(axis=1).sum())
        if payloads and len(sid):
            held = shard.payloads_of(sid)
            wrong_payloads += sum(held.get(i) != {"row": str(i)} for i in sid.tolist())
    return Verdict(
        expected=len(x),
        present=int(known.sum()),
        missing=len(x) - int(known.sum()),
        duplicated=int((counts > 1).sum()),
        unknown=int((~known).sum()),
        wrong_vectors=wrong,
        wrong_payloads=wrong_payloads,
    )


def ingest_argv(kafka: str, topic: str, idx: Path, *extra: str) -> list[str]:
    """``embedstream ingest`` of ``topic`` into ``idx``, on the Kafka client the
    ``kafka_client`` fixture chose (aiokafka when the test has none);
    ``aiokafka-loop`` is aiokafka fetching on the event loop, as it does over TLS."""
    client = os.environ.get("EMBEDSTREAM_TEST_KAFKA_CLIENT", "aiokafka")
    flags = ["--kafka-client", client]
    if client == "aiokafka-loop":
        flags = ["--kafka-client", "aiokafka", "--no-kafka-fetch-thread"]
    return [
        sys.executable,
        "-m",
        "streams.app.cli",
        "ingest",
        f"kafka://{kafka}/{topic}",
        "--index",
        str(idx),
        "--group",
        f"g-{topic}",
        "--no-progress",
        *flags,
        *extra,
    ]


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


def crash_rounds(kafka: str, topic: str, idx: Path, x: np.ndarray) -> list[tuple[str, int]]:
    """For every crash point: produce the next slice of ``x`` (id = row), ingest with a
    crash injected at that point, and note the exit code. Blocking."""
    import asyncio

    from tests.integration.kafka_util import produce

    per = len(x) // len(CRASH_POINTS)
    died = []
    for i, point in enumerate(CRASH_POINTS):
        ids = range(i * per, (i + 1) * per)
        asyncio.run(produce(kafka, topic, ids, x[list(ids)], headers=row_headers(ids)))
        proc = subprocess.run(
            ingest_argv(
                kafka,
                topic,
                idx,
                "--snapshot-every",
                "0.2",
                "--keep",
                "2",
                "--until-idle",
                "1.5",
                "--gc-grace",
                "0",
                # One name over the rounds, as a restarted worker keeps its chain.
                "--worker",
                "crashing",
            ),
            env={**os.environ, "EMBEDSTREAM_CRASH_AT": point},
            capture_output=True,
            timeout=120,
        )
        died.append((point, proc.returncode))
    return died


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


async def search_soak(tmp_path: Path, seconds: float) -> tuple[int, int, list[int]]:
    """Upserts, deletes and searches at once for ``seconds``.

    Every batch rewrites a whole block of ids with one new one-hot direction (or
    deletes the block): a search for a direction must see the whole block or none.
    Returns (searches, batches, hit counts that saw part of a block).
    """
    import anyio
    import anyio.lowlevel

    from sinks import FaissSink
    from streams import Batch

    dim, block = 32, 400
    sink = FaissSink(tmp_path / "soak-idx", snapshot_every=0.1, segment_size=3000)
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
    n = 0
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        tg.start_soon(searcher)
        tg.start_soon(searcher)
        start = time.monotonic()
        used: dict[int, int] = {}  # direction -> block holding it
        while time.monotonic() - start < seconds:
            b = int(rng.integers(0, 8))
            ids = np.arange(b * block, (b + 1) * block)
            vec = np.zeros((block, dim), np.float32)
            for d, holder in list(used.items()):
                if holder == b:
                    del used[d]
            deleted = None
            if rng.random() < 0.2:
                deleted = np.ones(block, bool)
            else:
                direction = int(rng.choice([d for d in range(dim) if d not in used]))
                vec[:, direction] = 1.0
                used[direction] = b
            await sink.write(Batch(ids, vec, np.zeros(block), "p", {"offset": n}, deleted=deleted))
            n += 1
        done.set()
        await sink.close(ok=True)
    return searches, n, half


def slow_sink_rss(tmp_path: Path, seconds: float) -> dict[str, float]:
    """A fast source and a sink throttled to ~2 MB/s for ``seconds``: anonymous RSS
    over time.

    The bound: interpreter, numpy and faiss (~150 MB), the index after ``seconds`` at
    2 MB/s, 3 channels x capacity 2 x 2 MB batches, chunks in flight, and 100 MB of
    slack for allocator noise.
    """
    import threading

    data = tmp_path / "big.npy"
    rows = 2_000_000 if seconds > 60 else 400_000
    np.save(data, np.random.default_rng(0).standard_normal((rows, 128)).astype(np.float32))
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
        f" | FaissSink({str(tmp_path / 'slow-idx')!r}, snapshot_every=0))\n"
        "pipeline.capacity = 2\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.app.cli", "run", str(script), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                text = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                return
            for line in text.splitlines():
                # Anonymous memory only: the memory-mapped input file's pages are
                # page cache the kernel can drop, not memory the pipeline holds.
                if line.startswith("RssAnon:"):
                    samples.append(int(line.split()[1]) / 1024)
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join()
    proc.kill()
    proc.wait()
    index_mb = seconds * 2.0
    bound = 150 + index_mb + 3 * 2 * 2 + 16 + 100
    return {
        "seconds": seconds,
        "samples": float(len(samples)),
        "early_mb": float(np.median(samples[20:40])) if len(samples) > 40 else float("nan"),
        "late_mb": float(np.median(samples[-20:])) if samples else float("nan"),
        "peak_mb": max(samples) if samples else float("nan"),
        "bound_mb": bound,
    }
