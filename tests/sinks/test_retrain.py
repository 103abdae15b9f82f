"""Retraining on drift (sinks.drift, sinks.retrain): a stream whose clusters move
gets a new codec generation that restores recall and list balance; a steady
stream never retrains; writes during a retrain are kept; a restart resumes
re-encoding; the CLI reports it."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import faiss
import numpy as np
import pytest

from sinks import FaissSink, open_snapshot
from sinks.drift import DriftMonitor, codec_fit
from streams.records import Batch
from tests.helpers import run_cli

D, CLUSTERS, HALF = 32, 64, 20_000
FACTORY = "IVF64,Flat"


def _draw(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), n)]
    return (picks + rng.standard_normal((n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def shifted() -> tuple[np.ndarray, np.ndarray]:
    """40,000 vectors whose 64 cluster centres are all replaced halfway, and 200
    queries (half from each)."""
    rng = np.random.default_rng(7)
    old = rng.standard_normal((CLUSTERS, D)).astype(np.float32) * 4
    new = rng.standard_normal((CLUSTERS, D)).astype(np.float32) * 4
    x = np.concatenate([_draw(rng, old, HALF), _draw(rng, new, HALF)])
    q = np.concatenate([_draw(rng, old, 100), _draw(rng, new, 100)])
    return x, q


def _sink(path: Path, **kw) -> FaissSink:
    opts = {"factory": FACTORY, "metric": "l2", "train_size": 4000, "snapshot_every": None}
    return FaissSink(path, segment_size=5000, **{**opts, **kw})


async def _ingest(sink: FaissSink, x: np.ndarray, ids: np.ndarray | None = None) -> None:
    ids = np.arange(len(x)) if ids is None else ids
    for lo in range(0, len(x), 1000):
        part = ids[lo : lo + 1000]
        batch = Batch(part, x[lo : lo + 1000], np.zeros(len(part)), "p", {"offset": lo + 1000})
        await sink.write(batch)


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(t)) / len(t) for a, t in zip(got, truth, strict=True)]))


def _balance(shards) -> float:
    """FAISS's imbalance factor of the lists summed over every segment (1: even)."""
    sizes = np.zeros(64)
    for shard in shards:
        for seg in shard.segments:
            inv = seg.index.invlists
            sizes += [inv.list_size(i) for i in range(seg.index.nlist)]
    return float(len(sizes) * (sizes**2).sum() / sizes.sum() ** 2)


def _run(sink: FaissSink, x: np.ndarray) -> None:
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            await _ingest(sink, x)
            await sink.close(ok=True)

    anyio.run(main)


def test_retraining_after_a_shift_restores_recall_and_list_balance(tmp_path: Path, shifted) -> None:
    x, q = shifted
    exact = faiss.IndexFlatL2(D)
    exact.add(x)
    truth = exact.search(q, 10)[1]
    # k-means on a 4,000-vector sample lands in a different local optimum per
    # sample (imbalance 1.37-1.52 over eight seeds here), so the offline reference
    # is the worst of four trainings, not one draw.
    want_recall, want_balance = 1.0, 0.0
    for seed in range(4):
        offline = faiss.index_factory(D, FACTORY)
        offline.train(x[np.random.default_rng(seed).choice(len(x), 4000, replace=False)])
        offline.add(x)
        offline.nprobe = 1
        want_recall = min(want_recall, _recall(offline.search(q, 10)[1], truth))
        want_balance = max(want_balance, offline.invlists.imbalance_factor())

    got = {}
    for name, threshold in (("kept", 0), ("retrained", 1.25)):
        sink = _sink(tmp_path / name, retrain_threshold=threshold)
        _run(sink, x)
        view = open_snapshot(tmp_path / name)
        got[name] = (_recall(view.search(q, 10, {"nprobe": 1}).ids, truth), _balance(view.shards))
        stats = sink.statistics()
        if name == "retrained":
            assert stats.retrains == 1 and stats.reencoded_segments >= 4
            assert view.config.generation == 1
            assert "drift" in view.config.last_retrain.reason
            # Every segment is of the new generation: the one the manifest names.
            tokens = {seg.template for shard in view.shards for seg in shard.segments}
            assert tokens == {view.config.template}
        else:
            assert stats.retrains == 0 and view.config.generation == 0
    print(f"offline {want_recall:.3f} {want_balance:.2f}; {got}")
    # Without retraining, the new half crowds a few lists of the old centroids.
    assert got["kept"][0] < want_recall - 0.1
    assert got["kept"][1] > 1.25 * want_balance
    # Retrained: as if trained on everything from the start.
    assert got["retrained"][0] >= want_recall - 0.02
    assert got["retrained"][1] <= 1.2 * want_balance
    assert got["retrained"][1] < got["kept"][1] - 0.2


def test_a_steady_stream_never_retrains(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((CLUSTERS, D)).astype(np.float32) * 4
    sink = _sink(tmp_path / "idx")
    _run(sink, _draw(rng, centres, 2 * HALF))
    stats = sink.statistics()
    assert stats.retrains == 0
    assert stats.codec_drift is not None and 0.9 < stats.codec_drift < 1.1


def test_drift_monitor_reservoir_is_uniform_and_ring_is_newest() -> None:
    monitor = DriftMonitor(1, 2000, seed=1)
    for lo in range(0, 100_000, 700):
        monitor.observe(np.arange(lo, min(lo + 700, 100_000), dtype=np.float32)[:, None])
    assert monitor.seen == 100_000 and monitor.filled == 2000
    sample = monitor._reservoir[:, 0]
    # Uniform over the whole stream: each tenth holds about a tenth of the sample.
    counts = np.histogram(sample, bins=10, range=(0, 100_000))[0]
    assert counts.min() > 140 and counts.max() < 260, counts
    assert monitor.recent()[:, 0].tolist() == list(range(99_000, 100_000))
    # Half the newest, half the reservoir (a recent vector may be in both).
    sample = monitor.training_sample()[:, 0]
    assert len(sample) == 2000 and set(range(99_000, 100_000)) <= set(sample.tolist())


def test_codec_fit_grows_with_the_shift() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, D)).astype(np.float32)
    for factory in ("IVF32,Flat", "PQ8", "SQ8"):
        index = faiss.index_factory(D, factory)
        index.train(x[:4000])
        same = codec_fit(index, x[4000:])
        moved = codec_fit(index, x[4000:] * 2 + 3)
        assert moved > 1.5 * same, factory


@pytest.mark.asyncio
async def test_writes_during_a_retrain_are_kept(tmp_path: Path, shifted) -> None:
    """Upserts and deletes that race the retrain and the re-encoding: every id ends
    up present exactly once, with its last vector."""
    x, _ = shifted
    rng = np.random.default_rng(5)
    sink = _sink(tmp_path / "idx", retrain_threshold=0)
    model: dict[int, np.ndarray] = {}
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        sink.retrainer.threshold = 1.25  # watch the drift, retrain only when told
        sink.retrainer._watching = None
        await _ingest(sink, x[:HALF])
        model.update(enumerate(x[:HALF]))

        async def writes() -> None:
            for step in range(20):
                ids = rng.choice(HALF, 300, replace=False).astype(np.int64)
                vecs = x[HALF + step * 300 : HALF + (step + 1) * 300]
                deleted = np.zeros(300, bool)
                deleted[:50] = True
                batch = Batch(ids, vecs.copy(), np.zeros(300), "p", {"offset": HALF + step})
                batch.deleted = deleted
                await sink.write(batch)
                for i, v, dead in zip(ids.tolist(), vecs, deleted, strict=True):
                    if dead:
                        model.pop(i, None)
                    else:
                        model[i] = v
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as inner:
            inner.start_soon(writes)
            assert await sink.retrain("test")
        await sink.close(ok=True)
    shard = sink.shards["p"]
    assert {s.template for s in shard.segments} == {sink.config.token}
    held = shard.ids()
    assert len(held) == len(set(held.tolist())) == len(model)
    assert set(held.tolist()) == set(model)
    ids, vecs = zip(*(s.contents() for s in shard.segments), strict=True)
    got = dict(zip(np.concatenate(ids).tolist(), np.concatenate(vecs), strict=True))
    for i, v in model.items():
        np.testing.assert_array_equal(got[i], v)


@pytest.mark.asyncio
async def test_a_restart_in_the_middle_of_reencoding_resumes_it(tmp_path: Path, shifted) -> None:
    x, q = shifted
    sink = _sink(tmp_path / "idx", retrain_threshold=0)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        sink.retrainer.threshold = 1.25
        sink.retrainer._watching = None
        await _ingest(sink, x[:HALF])

        async def no_reencode() -> int:
            return 0

        sink.retrainer.reencode = no_reencode  # the "crash": swapped, not re-encoded
        assert await sink.retrain("test")
        await _ingest(sink, x[HALF:], np.arange(HALF, 2 * HALF))
        await sink.snapshot()
        tokens = {s.template for s in sink.shards["p"].segments}
        assert len(tokens) == 2
        await sink.close(ok=False)  # stops as a crash would: no last snapshot
    # Mixed generations search correctly (each segment with its own quantizer).
    view = open_snapshot(tmp_path / "idx")
    exact = faiss.IndexFlatL2(D)
    exact.add(x)
    np.testing.assert_array_equal(view.search(q, 5, {"nprobe": 64}).ids, exact.search(q, 5)[1])
    assert view.config.generation == 1
    # The restarted sink re-encodes what is left of the older generation.
    sink = _sink(tmp_path / "idx")
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        await sink.maintain()
        assert {s.template for s in sink.shards["p"].segments} == {sink.config.token}
        assert sink.config.token == view.config.template
        got = await sink.search(q, 5, {"nprobe": 64})
        np.testing.assert_array_equal(got.ids, exact.search(q, 5)[1])
        await sink.close(ok=True)


def test_the_cli_retrains_and_reports_it(tmp_path: Path, shifted) -> None:
    x, _ = shifted
    np.save(tmp_path / "x.npy", x)
    idx = tmp_path / "idx"
    p = run_cli("ingest", str(tmp_path / "x.npy"), "--index", str(idx), "--factory", FACTORY,
                "--metric", "l2", "--train-size", "4000", "--retrain-threshold", "1.5",
                "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    info = json.loads(run_cli("inspect", str(idx), "--json").stdout)
    assert info["generation"] == 1 and info["last_retrain"]["sample"] == 4000
    assert "codec generation 1: retrained" in run_cli("inspect", str(idx)).stdout
    bad = run_cli("ingest", str(tmp_path / "x.npy"), "--index", str(tmp_path / "other"),
                  "--retrain-threshold", "0.5")  # fmt: skip
    assert bad.returncode == 2 and "not above 1" in bad.stderr


@pytest.mark.asyncio
async def test_no_drift_is_measured_before_the_first_training(tmp_path: Path, shifted) -> None:
    """An untrained IVF quantizer has no centroid to measure against (FAISS would
    read out of bounds): the monitor waits for the training."""
    x, _ = shifted
    sink = _sink(tmp_path / "idx")
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        await _ingest(sink, x[:3500])  # more than the ring, less than train_size
        assert not sink.retrainer.monitor.due()
        await sink.maintain()
        assert sink.retrainer.monitor.baseline is None
        await _ingest(sink, x[3500:9000], np.arange(3500, 9000))
        assert sink.retrainer.monitor.ready
        await sink.close(ok=True)
    with pytest.raises(ValueError, match="not trained"):
        codec_fit(faiss.index_factory(D, FACTORY), x[:10])
