"""Against the real broker: ids, dimensions, missing topics and --until-idle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sinks import open_snapshot
from streams.keys import key_id
from tests.integration.kafka_util import create_topic, produce
from tests.integration.test_kafka import ingest, inspect
from tests.reliability.oracle import ingest_argv

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_keys_map_to_ids_record_by_record(
    kafka: str, topic_name: str, tmp_path: Path
) -> None:
    """Odd keys never crash decode or depend on their batch; a JSON string id and the
    same key are one id, so a tombstone with key 123 deletes {"id": "123"}."""
    await create_topic(kafka, topic_name, 1)
    x = np.eye(8, dtype=np.float32)
    keys = [b"5", b"+5", b" 7", b"1_000", b"--5", "\u00b2".encode(), b"-1", b"007"]
    await produce(kafka, topic_name, range(8), x, keys=keys)
    idx = tmp_path / "idx"
    ingest(kafka, topic_name, idx, "--dead-letter", str(tmp_path / "dead.jsonl"))
    view = open_snapshot(idx)
    want = {5, *(key_id(k.decode()) for k in keys[1:])}
    got = {int(i) for s in view.shards for i in s.ids().tolist()}
    assert got == want
    res = view.search(x[6:7], 1)  # key "-1": found, and returned as its key
    assert res.rows()[0]["ids"] == ["-1"]

    json_topic = topic_name + "-json"
    await create_topic(kafka, json_topic, 1)
    record = json.dumps({"id": "123", "vector": [1.0, 2.0]}).encode()
    await produce(kafka, json_topic, [0], None, values=[record], keys=[None])
    jidx = tmp_path / "jidx"
    ingest(kafka, json_topic, jidx, "--format", "json")
    assert inspect(jidx)["ntotal"] == 1
    await produce(kafka, json_topic, [0], None, values=[None], keys=[b"123"])
    ingest(kafka, json_topic, jidx, "--format", "json")
    assert inspect(jidx)["ntotal"] == 0


@pytest.mark.asyncio
async def test_a_stray_record_does_not_fix_the_dimension(
    kafka: str, topic_name: str, tmp_path: Path
) -> None:
    await create_topic(kafka, topic_name, 1)
    one_d = np.ones((1, 1), np.float32)
    await produce(kafka, topic_name, [999], one_d)  # a 1-d message at the head
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    await produce(kafka, topic_name, range(50), x)
    idx = tmp_path / "idx"
    dead = tmp_path / "dead.jsonl"
    ingest(kafka, topic_name, idx, "--dim", "4", "--dead-letter", str(dead))
    info = inspect(idx)
    assert info["dim"] == 4 and info["ntotal"] == 50
    assert [json.loads(line)["reason"] for line in dead.read_text().splitlines()] == [
        "wrong-dimension"
    ]
    # An existing index fixes it for every later run, without --dim.
    await produce(kafka, topic_name, [1000], one_d)
    ingest(kafka, topic_name, idx, "--dead-letter", str(dead))
    assert inspect(idx)["ntotal"] == 50 and len(dead.read_text().splitlines()) == 2


def test_a_missing_topic_fails_clearly(kafka: str, topic_name: str, tmp_path: Path) -> None:
    p = ingest(kafka, topic_name + "-nope", tmp_path / "idx", check=False, timeout=60)
    assert p.returncode == 1, p.stderr
    assert f"topic '{topic_name}-nope' does not exist" in p.stderr
    assert "Traceback" not in p.stderr


def test_a_bad_kafka_url_is_one_line(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "streams.app.cli", "ingest", "kafka://host:notaport/t", "--group",
         "g", "--index", str(tmp_path / "idx")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2 and "is not HOST:PORT" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.asyncio
async def test_until_idle_waits_for_partitions_a_dead_member_still_holds(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    """A is killed right after joining; B (--until-idle 2) must not stop while A's
    partitions are unread: it waits for the group to hand them over, and indexes all."""
    await create_topic(kafka, topic_name, 4)
    n = 4000
    x = np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32)
    await produce(kafka, topic_name, range(n), x)
    idx = tmp_path / "idx"
    a = subprocess.Popen(
        ingest_argv(kafka, topic_name, idx, "--worker", "a", "--until-idle", "60",
                    "--snapshot-every", "30"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    b = subprocess.Popen(
        ingest_argv(kafka, topic_name, idx, "--worker", "b", "--until-idle", "2"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Kill A once it has joined and claimed its partitions (its chain exists).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (idx / "workers" / "a").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(a.pid, signal.SIGKILL)
    a.communicate(timeout=30)
    out, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    info = inspect(idx)
    assert info["ntotal"] == n, (info["ntotal"], out, err)
