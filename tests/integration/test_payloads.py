"""Payloads through the real broker and the real CLI: from Kafka JSON metadata,
msgpack maps and f32 record headers into the index, back out with results, and
filtered; bad headers and oversized payloads become dead letters; an upsert
replaces a payload and a tombstone removes it."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from sinks import open_snapshot
from tests.helpers import run_cli
from tests.integration.kafka_util import create_topic, produce
from tests.integration.test_kafka import ingest, inspect

pytestmark = pytest.mark.integration


def _search(idx: Path, tmp_path: Path, q: np.ndarray, *args: str) -> list[dict]:
    np.save(tmp_path / "q.npy", q)
    proc = run_cli("search", str(idx), "--queries", str(tmp_path / "q.npy"), *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.asyncio
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_record_metadata_is_stored_returned_and_filtered(
    kafka: str, topic_name: str, tmp_path: Path, fmt: str
) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    metas = [{"lang": ["en", "fr"][i % 2], "year": 2000 + i % 30, "n": i} for i in range(400)]
    metas[5] = {"lang": "de", "nested": {"a": [1, 2]}}
    encode = (lambda r: json.dumps(r).encode()) if fmt == "json" else msgspec.msgpack.encode
    values = [encode({"id": i, "vector": x[i].tolist(), "metadata": metas[i]}) for i in range(400)]
    await create_topic(kafka, topic_name, 2)
    await produce(kafka, topic_name, range(400), None, values=values)
    idx = tmp_path / "idx"
    ingest(
        kafka,
        topic_name,
        idx,
        "--format",
        fmt,
        "--metric",
        "l2",
        "--payload-index",
        "lang",
        "--payload-index",
        "year:int",
    )
    view = open_snapshot(idx)
    got = view.search(x, 1, with_payload=True).rows()
    assert [r["payloads"][0] for r in got] == metas  # bit-exact vectors: each finds itself
    rows = _search(
        idx,
        tmp_path,
        x[:20],
        "-k",
        "5",
        "--filter",
        '{"lang": "fr", "year": {"gte": 2020}}',
        "--with-payload",
    )
    for row in rows:
        assert len(row["ids"]) == 5
        for i, p in zip(row["ids"], row["payloads"], strict=True):
            assert p == metas[i] and p["lang"] == "fr" and p["year"] >= 2020
    fields = inspect(idx)["payload_fields"]
    assert fields["lang"] == {"type": "keyword", "count": 400, "indexed": True, "mismatched": 0}
    assert fields["n"]["indexed"] is False and fields["n"]["count"] == 399
    assert fields["nested"]["type"] == "object"


@pytest.mark.asyncio
async def test_f32_record_headers_become_the_payload(
    kafka_client: str, kafka: str, topic_name: str, tmp_path: Path
) -> None:
    x = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    headers = [[("source", b"crawler"), ("lang", [b"en", b"fr"][i % 2])] for i in range(50)]
    headers[7] = []  # no headers: no payload
    headers[8] = [("lang", b"\xff\xfe")]  # not UTF-8: a dead letter
    headers[9] = [("blob", b"x" * 300)]  # with the value over --max-payload-bytes
    await create_topic(kafka, topic_name, 1)
    await produce(kafka, topic_name, range(50), x, headers=headers)
    # An upsert with other headers, then a tombstone.
    await produce(kafka, topic_name, [3], x[3:4], headers=[[("lang", b"de")]])
    await produce(kafka, topic_name, [4], None, values=[None])
    idx = tmp_path / "idx"
    dl = tmp_path / "dead.jsonl"
    ingest(
        kafka,
        topic_name,
        idx,
        "--metric",
        "l2",
        "--payload-index",
        "lang",
        "--max-payload-bytes",
        "256",
        "--dead-letter",
        str(dl),
    )
    view = open_snapshot(idx)
    got = view.search(x, 1, with_payload=True).rows()
    by_id = {r["ids"][0]: r["payloads"][0] for r in got if r["ids"]}
    assert by_id[0] == {"source": "crawler", "lang": "en"}
    assert by_id[3] == {"lang": "de"}
    assert by_id[7] is None
    assert 4 not in by_id and 8 not in by_id and 9 not in by_id
    letters = [json.loads(line) for line in dl.read_text().splitlines()]
    reasons = {r["position"]["offset"]: (r["reason"], r["detail"]) for r in letters}
    assert reasons[8][0] == "bad-header" and "'lang'" in reasons[8][1]
    assert reasons[9][0] == "oversized" and "headers" in reasons[9][1]
    hits = view.search(x, 50, filter={"lang": "fr"}).ids
    # 3: upserted to "de"; 7: no headers; 9: a dead letter.
    assert set(hits[hits >= 0].tolist()) == set(range(1, 50, 2)) - {3, 7, 9}
