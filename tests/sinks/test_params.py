"""Search-time parameters reach FAISS, and tuning finds the cheapest that reach a
recall target on held-out queries (the real MiniLM slice in tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sinks import open_snapshot
from sinks.params import parse_params
from streams import ConfigError
from tests.conftest import MINILM_BASE, MINILM_QUERIES, exact_top_k
from tests.helpers import run_cli


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(t)) / k for a, t in zip(ids, truth, strict=True)]))


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray, Path]:
    d = tmp_path_factory.mktemp("minilm")
    x = np.load(MINILM_BASE).astype(np.float32)
    q = np.load(MINILM_QUERIES).astype(np.float32)
    np.save(d / "base.npy", x)
    np.save(d / "queries.npy", q)
    return d / "base.npy", q, exact_top_k(x, q, 10), d / "queries.npy"


def _index(tmp_path: Path, base: Path, factory: str) -> Path:
    idx = tmp_path / factory.replace(",", "_")
    p = run_cli("ingest", str(base), "--index", str(idx), "--factory", factory,
                "--train-size", "4000", "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    return idx


@pytest.mark.parametrize(
    ("factory", "name", "values"),
    [("IVF64,Flat", "nprobe", [1, 4, 16, 64]), ("HNSW8", "efSearch", [10, 20, 64, 256])],
)
def test_recall_rises_with_the_search_parameter(
    tmp_path: Path, minilm, factory: str, name: str, values: list[int]
) -> None:
    base, q, truth, _ = minilm
    view = open_snapshot(_index(tmp_path, base, factory))
    got = [recall(view.search(q, 10, {name: v}).ids, truth) for v in values]
    print(factory, name, dict(zip(values, got, strict=True)))
    assert got == sorted(got) and got[-1] - got[0] > 0.1
    # The same through the CLI and its ParameterSpace syntax.
    p = run_cli("search", str(view.root), "--queries", str(minilm[3]),
                "--params", f"{name}={values[-1]}")  # fmt: skip
    rows = [json.loads(line)["ids"] for line in p.stdout.splitlines()]
    assert recall(np.array(rows), truth) == pytest.approx(got[-1])


def test_unknown_or_inapplicable_parameters_are_clear_errors(tmp_path: Path, minilm) -> None:
    base, q, _, qpath = minilm
    idx = _index(tmp_path, base, "IVF64,Flat")
    with pytest.raises(ConfigError, match="unknown search parameter 'bogus'"):
        parse_params("bogus=3")
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_params("nprobe")
    with pytest.raises(ConfigError, match=r"efSearch does not apply .* it takes nprobe"):
        open_snapshot(idx).search(q, 10, {"efSearch": 64})
    for params in ("bogus=3", "efSearch=64", "nprobe=-1"):
        p = run_cli("search", str(idx), "--queries", str(qpath), "--params", params)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("factory", ["IVF64,Flat", "HNSW16"])
def test_tune_reaches_its_target_on_held_out_queries(tmp_path: Path, minilm, factory) -> None:
    """Tuned on queries drawn from the index, checked on 200 real queries it never saw."""
    base, q, truth, _qpath = minilm
    idx = _index(tmp_path, base, factory)
    default = recall(open_snapshot(idx).search(q, 10).ids, truth)
    p = run_cli("tune", str(idx), "--recall", "0.95", "--sample", "500")
    assert p.returncode == 0, p.stderr
    assert "<- chosen" in p.stdout and "stored search parameters" in p.stdout
    info = json.loads(run_cli("inspect", str(idx), "--json").stdout)
    assert info["search_params"]
    tuned = recall(open_snapshot(idx).search(q, 10).ids, truth)
    print(factory, info["search_params"], f"default {default:.3f} -> tuned {tuned:.3f}")
    assert tuned >= 0.95
    # A restarted ingest keeps the tuned parameters in its next manifest.
    more = tmp_path / "more.npy"
    np.save(more, np.load(base)[:10] * 0.5)
    assert (
        run_cli("ingest", str(more), "--index", str(idx), "--id-offset", "100000").returncode == 0
    )
    assert (
        json.loads(run_cli("inspect", str(idx), "--json").stdout)["search_params"]
        == (info["search_params"])
    )


def test_tune_refuses_while_a_writer_holds_the_index(tmp_path: Path, minilm) -> None:
    from sinks.store import SnapshotStore

    idx = _index(tmp_path, minilm[0], "HNSW8")
    writer = SnapshotStore(idx)
    try:
        p = run_cli("tune", str(idx), "--recall", "0.9", "--sample", "100")
        assert p.returncode == 1 and "another writer holds this index" in p.stderr
    finally:
        writer.close()


def test_an_existing_file_index_fixes_the_dimension(tmp_path: Path) -> None:
    """The dimension of an index written from files (the directory's own chain) makes
    a stray record of another size a dead letter, not the stream's new shape."""
    data = tmp_path / "x.npy"
    np.save(data, np.ones((10, 4), np.float32))
    idx = tmp_path / "idx"
    assert run_cli("ingest", str(data), "--index", str(idx)).returncode == 0
    lines = tmp_path / "more.jsonl"
    lines.write_text('{"id": 100, "vector": [1]}\n{"id": 101, "vector": [1, 2, 3, 4]}\n')
    dead = tmp_path / "dead.jsonl"
    p = run_cli("ingest", str(lines), "--index", str(idx), "--dead-letter", str(dead))
    assert p.returncode == 0, p.stderr
    assert [json.loads(x)["reason"] for x in dead.read_text().splitlines()] == ["wrong-dimension"]
    assert open_snapshot(idx).ntotal == 11


@pytest.mark.asyncio
async def test_http_and_the_live_sink_take_parameters(tmp_path: Path, minilm) -> None:
    from sinks import FaissSink
    from sinks.live import LiveView
    from streams.app.http import make_app
    from tests.streams.test_http import _asgi_post

    base, q, truth, _ = minilm
    idx = _index(tmp_path, base, "IVF64,Flat")
    live = LiveView(idx)
    app = make_app(live.stats, live.registry(), live.search, params={"nprobe": 64})

    async def post(body: dict) -> tuple[int, dict]:
        status, text = await _asgi_post(app, json.dumps(body).encode())
        return status, json.loads(text)

    vectors = q[:50].tolist()
    status, wide = await post({"vectors": vectors, "k": 10})  # the server's default
    assert status == 200
    status, narrow = await post({"vectors": vectors, "k": 10, "params": {"nprobe": 1}})
    assert status == 200
    r_wide = recall(np.array([r["ids"] for r in wide["results"]]), truth[:50])
    r_narrow = recall(np.array([r["ids"] for r in narrow["results"]]), truth[:50])
    assert r_wide == 1.0 and r_narrow < 0.7
    for bad, says in (({"bogus": 1}, "unknown search parameter"), ({"efSearch": 5}, "nprobe")):
        status, body = await post({"vectors": vectors, "k": 10, "params": bad})
        assert status == 400 and says in body["error"]
    # The live sink of a running pipeline takes them the same way.
    sink = FaissSink(tmp_path / "live", factory="IVF16,Flat", train_size=1000, snapshot_every=0)
    import anyio

    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        from streams.records import Batch

        x = np.load(base)
        await sink.write(Batch(np.arange(len(x)), x, np.zeros(len(x)), "p", {"o": len(x)}))
        full = await sink.search(q, 10, "nprobe=16")
        one = await sink.search(q, 10, {"nprobe": 1})
        assert recall(full.ids, truth) == 1.0 > recall(one.ids, truth)
        with pytest.raises(ConfigError):
            await sink.search(q, 10, {"efSearch": 8})
        await sink.close(ok=True)
