"""Crashes, faults and bad input against the real broker; short versions for CI.

The soak (``python -m tests.reliability.soak``) runs the same checks at scale.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import anyio
import numpy as np
import pytest

from sinks.store import CRASH_EXIT_CODE
from tests.integration.kafka_util import create_topic, produce
from tests.reliability.oracle import (
    CRASH_POINTS,
    check,
    crash_rounds,
    ingest_argv,
    kill_cycles,
    row_headers,
    run_to_idle,
    search_soak,
    slow_sink_rss,
)

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_crash_at_every_step_of_the_snapshot_protocol(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    rng = np.random.default_rng(11)
    per_round = 1500
    x = rng.standard_normal((per_round * len(CRASH_POINTS), 16)).astype(np.float32)
    await create_topic(kafka, topic_name, 4)
    idx = tmp_path / "idx"
    died = await anyio.to_thread.run_sync(crash_rounds, kafka, topic_name, idx, x)
    assert [d for d in died if d[1] != CRASH_EXIT_CODE] == []
    await anyio.to_thread.run_sync(run_to_idle, kafka, topic_name, idx)
    verdict = check(idx, x, payloads=True)
    assert verdict.ok, verdict


@pytest.mark.asyncio
async def test_kill_9_while_ingesting(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    x = np.random.default_rng(12).standard_normal((50_000, 32)).astype(np.float32)
    await create_topic(kafka, topic_name, 4)
    # Every record carries its payload in its headers: vectors and payloads must
    # both come through the kills exactly.
    await produce(kafka, topic_name, range(len(x)), x, headers=row_headers(range(len(x))))
    idx = tmp_path / "idx"
    kills = await anyio.to_thread.run_sync(lambda: kill_cycles(kafka, topic_name, idx, 4, seed=1))
    assert kills >= 2
    await anyio.to_thread.run_sync(run_to_idle, kafka, topic_name, idx)
    verdict = check(idx, x, payloads=True)
    assert verdict.ok, verdict


@pytest.mark.asyncio
async def test_broker_restart_mid_stream(
    kafka_client: str, kafka: str, kafka_broker, topic_name: str, tmp_path: Path
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


@pytest.mark.asyncio
async def test_searches_during_adds_upserts_and_deletes(tmp_path: Path) -> None:
    searches, batches, half = await search_soak(tmp_path, 3.0)
    assert searches > 20 and batches > 20
    assert half == []


def test_rss_stays_bounded_with_a_slow_sink(tmp_path: Path) -> None:
    r = slow_sink_rss(tmp_path, 15.0)
    assert r["samples"] > 50
    assert r["late_mb"] - r["early_mb"] < 60, r
    assert r["peak_mb"] < r["bound_mb"], r
