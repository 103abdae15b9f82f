"""Quantised indexes on real MiniLM embeddings (the slice in tests/data): recall
against exact search, computed here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sinks import open_snapshot
from tests.conftest import MINILM_BASE, MINILM_QUERIES, exact_top_k
from tests.streams.test_cli import cli

ROWS = 4000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    d = tmp_path_factory.mktemp("minilm")
    base = d / "base.npy"
    x = np.load(MINILM_BASE).astype(np.float32)
    np.save(base, x)
    queries = np.load(MINILM_QUERIES).astype(np.float32)
    return base, queries, exact_top_k(x, queries, 10)


def recall_at_10(ids: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(a[:10]) & set(t[:10])) / 10 for a, t in zip(ids, truth, strict=True)]
    return float(np.mean(hits))


@pytest.mark.parametrize(
    ("args", "floor", "bytes_per_vector"),
    [
        (["--quantize", "sq8"], 0.99, 384),
        (["--quantize", "binary", "--rerank", "200"], 0.95, 48),
        (["--quantize", "pq", "--pq-m", "48", "--rerank", "100"], 0.98, 48),
    ],
)
def test_recall_of_quantized_indexes(tmp_path: Path, data, args, floor, bytes_per_vector) -> None:
    base, queries, truth = data
    idx = tmp_path / "idx"
    cli("ingest", str(base), "--index", str(idx), "--train-size", str(ROWS), "--no-progress", *args)
    info = json.loads(cli("inspect", str(idx), "--json").stdout)
    assert info["ntotal"] == ROWS and info["quantize"] == args[1]
    view = open_snapshot(idx)
    res = view.search(queries, 10)
    r = recall_at_10(res.ids, truth)
    code_bytes = view.shards[0].code_bytes
    print(f"{args}: recall@10 {r:.4f}, {code_bytes} code bytes per vector in RAM")
    assert r >= floor
    assert code_bytes == bytes_per_vector
    # The CLI search answers from the same index, with original order and floats reranked.
    q = tmp_path / "q.npy"
    np.save(q, queries[:5])
    rows = [
        json.loads(line)
        for line in cli("search", str(idx), "--queries", str(q)).stdout.splitlines()
    ]
    assert [row["ids"] for row in rows] == res.ids[:5].tolist()


def test_quantized_index_resumes_with_the_same_codec(tmp_path: Path, data) -> None:
    base, queries, truth = data
    x = np.load(base)
    head = tmp_path / "part.npy"
    np.save(head, x[:2500])
    idx = tmp_path / "idx"
    cli("ingest", str(head), "--index", str(idx), "--quantize", "sq8", "--train-size", "2000")
    np.save(head, x)  # the same file, grown: resumes at row 2500 with the stored codec
    cli("ingest", str(head), "--index", str(idx), "--quantize", "sq8")
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == ROWS
    assert recall_at_10(view.search(queries, 10).ids, truth) >= 0.99
    p = cli("ingest", str(head), "--index", str(idx), check=False)
    assert p.returncode == 1 and "--quantize sq8" in p.stderr


def test_batches_carry_their_floats_only_while_the_sink_may_retrain() -> None:
    """A trained codec's batches keep their floats for the sink's drift check; a
    sink that never retrains (and has no rerank) tells the codec, and the floats
    are dropped at once."""
    from operators.quantize import Codec, _encode
    from sinks import FaissSink
    from streams.records import Batch

    x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    codec = Codec("sq8", train_size=500, metric="l2")
    codec.train(x)

    def encoded(keep_floats: bool = False) -> Batch:
        b = Batch(np.arange(100), x[:100].copy(), np.zeros(100), "p", {})
        return _encode(codec, b, keep_floats)

    assert encoded().floats is not None
    FaissSink("unused-dir", metric="l2", codec=codec, retrain_threshold=0)
    assert codec.retrains is False
    assert encoded().floats is None
    assert encoded(keep_floats=True).floats is not None  # rerank needs them
    FaissSink("unused-dir", metric="l2", codec=codec)
    assert codec.retrains and encoded().floats is not None
