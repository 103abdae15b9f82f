"""Retraining quantize codecs (sq8, pq) on drift: the sink measures the drift on the
float vectors each batch carries, trains the next codec generation, encodes again
the batches encoded before the swap, and re-encodes older segments."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import faiss
import numpy as np
import pytest

from operators.quantize import Codec
from sinks import FaissSink, open_snapshot
from streams.records import Batch
from tests.helpers import run_cli
from tests.sinks.test_retrain import CLUSTERS, HALF, D, _draw, _recall

TRAIN = 10_000  # what a PQ of 256 centroids per sub-quantizer asks for


@pytest.fixture(scope="module")
def shifted() -> tuple[np.ndarray, np.ndarray]:
    """40,000 vectors whose cluster centres all move halfway, the new ones also
    offset (a new embedding model version: values outside the ranges an SQ8 codec
    learnt), and 200 queries, half from each."""
    rng = np.random.default_rng(11)
    old = rng.standard_normal((CLUSTERS, D)).astype(np.float32) * 4
    new = rng.standard_normal((CLUSTERS, D)).astype(np.float32) * 4 + 6
    x = np.concatenate([_draw(rng, old, HALF), _draw(rng, new, HALF)])
    q = np.concatenate([_draw(rng, old, 100), _draw(rng, new, 100)])
    return x, q


def _error(view, x: np.ndarray) -> float:
    """Mean squared distance between each stored vector's decoded code and its
    float vector: how well the codes fit the data."""
    parts = [seg.contents() for shard in view.shards for seg in shard.segments]
    ids = np.concatenate([p[0] for p in parts])
    decoded = np.concatenate([p[1] for p in parts])
    return float(np.mean(((decoded - x[ids]) ** 2).sum(axis=1)))


@pytest.mark.parametrize(("kind", "extra"), [("sq8", []), ("pq", ["--pq-m", "8"])])
def test_a_quantize_codec_is_retrained_after_a_shift(
    tmp_path: Path, shifted, kind: str, extra: list[str]
) -> None:
    x, q = shifted
    np.save(tmp_path / "x.npy", x)
    exact = faiss.IndexFlatL2(D)
    exact.add(x)
    truth = exact.search(q, 10)[1]
    # A codec trained on a sample of everything from the start.
    offline = Codec(kind, pq_m=8, metric="l2")
    offline.train(x[np.random.default_rng(0).choice(len(x), TRAIN, replace=False)])
    flat = offline.empty_index()
    flat.add_with_ids(x, np.arange(len(x)))
    want_recall = _recall(flat.search(q, 10)[1], truth)
    decoded = faiss.downcast_index(flat.index).sa_decode(offline.encode(x))
    want_error = float(np.mean(((decoded - x) ** 2).sum(axis=1)))
    got = {}
    runs = (("kept", "0", "50"), ("retrained", "1.25", "50"), ("no floats", "1.25", "0"))
    for name, threshold, rerank in runs:
        idx = tmp_path / name.replace(" ", "-")
        p = run_cli("ingest", str(tmp_path / "x.npy"), "--index", str(idx), "--metric", "l2",
                    "--quantize", kind, *extra, "--train-size", str(TRAIN),
                    *(["--rerank", rerank] if rerank != "0" else []),
                    "--retrain-threshold", threshold, "--no-progress")  # fmt: skip
        assert p.returncode == 0, p.stderr
        view = open_snapshot(idx)
        view.config.rerank = 0  # the codes alone
        got[name] = (_recall(view.search(q, 10).ids, truth), _error(view, x))
        info = json.loads(run_cli("inspect", str(idx), "--json").stdout)
        tokens = {seg.template for shard in view.shards for seg in shard.segments}
        if threshold != "0":
            assert info["generation"] == 1 and "drift" in info["last_retrain"]["reason"]
            # With floats, every segment holds codes of the manifest's codec; without,
            # older segments keep their generation.
            want = {view.manifest["codec"]} if rerank != "0" else {None, view.manifest["codec"]}
            assert tokens <= want and view.manifest["codec"] in tokens
        else:
            assert info["generation"] == 0
    print(kind, f"offline recall {want_recall:.3f} error {want_error:.4f}", got)
    # Kept: the new half is far from what the codec learnt.
    assert got["kept"][1] > 3 * want_error
    # Retrained with the floats on disk (--rerank): every vector encoded again from
    # its floats, as if the codec had been trained on everything.
    assert got["retrained"][1] <= 1.25 * want_error
    assert got["retrained"][0] >= min(want_recall, got["kept"][0]) - 0.03
    if kind == "sq8":  # (8-byte PQ codes of 32-d vectors rank too coarsely to tell)
        assert got["retrained"][0] >= want_recall - 0.03 > got["kept"][0]
    # Without floats, the vectors encoded before the retrain keep the older codec's
    # codes (never decoded and encoded again, which would add to their error).
    assert got["no floats"][1] <= got["kept"][1] * 1.01


@pytest.mark.asyncio
async def test_batches_encoded_before_a_retrain_are_encoded_again(tmp_path: Path, shifted) -> None:
    """The operator encodes ahead of the sink: batches still in flight when the
    codec is retrained hold the older generation's codes; the sink encodes them
    again from their floats, so no segment mixes generations."""
    x, _ = shifted
    codec = Codec("sq8", metric="l2")
    codec.train(x[:TRAIN])
    sink = FaissSink(tmp_path / "idx", codec=codec, metric="l2", snapshot_every=None,
                     train_size=TRAIN, segment_size=5000, rerank=10)  # fmt: skip

    def encoded(lo: int, hi: int) -> Batch:
        b = Batch(np.arange(lo, hi), x[lo:hi], np.zeros(hi - lo), "p", {"offset": hi})
        b.vectors, b.codec_tag = codec.encode_tagged(b.vectors)
        b.floats = x[lo:hi]
        return b

    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        for lo in range(0, HALF, 1000):
            await sink.write(encoded(lo, lo + 1000))
        in_flight = [encoded(lo, lo + 1000) for lo in range(HALF, HALF + 3000, 1000)]
        assert await sink.retrain("test")
        assert codec.generation == 1 and codec.token == sink.config.token
        for b in in_flight:
            await sink.write(b)
        shard = sink.shards["p"]
        assert shard.recoded == 3000
        assert {s.template for s in shard.segments} == {codec.token}
        ids, vecs = zip(*(s.contents() for s in shard.segments), strict=True)
        got = dict(zip(np.concatenate(ids).tolist(), np.concatenate(vecs), strict=True))
        assert len(got) == HALF + 3000
        # Decoded by the new codec, the late batches are close to their floats.
        late = np.stack([got[i] for i in range(HALF, HALF + 3000)])
        err = float(np.median(((late - x[HALF : HALF + 3000]) ** 2).sum(axis=1)))
        assert err < 0.05 * float(np.median((x[HALF : HALF + 3000] ** 2).sum(axis=1)))
        await sink.close(ok=True)
    # A restart takes the retrained codec, with its generation and token.
    again = Codec("sq8", metric="l2")
    sink = FaissSink(tmp_path / "idx", codec=again, snapshot_every=None)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        assert again.generation == 1 and again.token == codec.token
        assert np.array_equal(again.encode(x[:10]), codec.encode(x[:10]))
        await sink.close(ok=True)


def test_codec_generations_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    codec = Codec("pq", pq_m=4, metric="l2")
    codec.train(x)
    assert codec.tag == (0, None)
    generation, token = codec.adopt(codec.trained_index(x * 3))
    assert (generation, token) == codec.tag == (1, codec.token)
    copy = Codec("pq", pq_m=4, metric="l2")
    copy.restore(codec.state(), generation=1)
    assert copy.tag == codec.tag
    codes, tag = copy.encode_tagged(x[:5])
    assert tag == (1, token) and np.array_equal(codes, codec.encode(x[:5]))
    binary = Codec("binary")
    binary.train(x)
    assert not binary.trainable and binary.tag == (0, None)
