"""ANN indexes through `embedstream ingest` against one FAISS index built offline.

Part ``ivf``: clustered synthetic vectors (``--rows``, 128-d) go through the real CLI
(``embedstream ingest data.npy --factory IVF1024,Flat``), whose shard ends as
merged segments; the same vectors go into one ``IVF1024,Flat`` built offline with the
same training sample. Both answer the same held-out queries at equal ``nprobe``:
time per query (median of repeats, alternated) and recall@10 against the exact
top-10. The ingest runs twice more, with merging on and off, for the rate.

Part ``hnsw``: the same with ``HNSW32`` (``--hnsw-rows``), compared at equal recall
(the offline index's cheapest ``efSearch`` whose recall is within 0.01 of ours).

Part ``drift``: ``--rows`` clustered vectors whose 1,000 cluster centres are all
replaced by new ones halfway through the stream, into ``IVF1024,Flat`` through the
CLI with retraining on drift (the default) and off (``--retrain-threshold 0``),
against one index trained offline on a uniform sample of all of them. ``embedstream
tune --recall 0.95`` picks our parameters; recall@10 of held-out queries from both
halves and time per query at those parameters, per index.

Part ``tune``: the real MiniLM embeddings of ``../shared/data`` (20,000 base vectors,
500 held-out queries with exact ground truth) into IVF, HNSW and PQ with rerank;
``embedstream tune --recall 0.95`` on each, then recall@10 of the held-out queries
at the tuned parameters.

    python -m benchmarks.bench_ann [--rows 1000000] [--only ivf tune]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.harness import DATA, RESULTS, python, run_child, save, table

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def clustered(rows: int, dim: int, seed: int, centers: int = 1000) -> np.ndarray:
    """Vectors around ``centers`` Gaussian cluster centres (the shape of real
    embedding collections more than uniform noise is)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim), dtype=np.float32)
    out = np.empty((rows, dim), dtype=np.float32)
    step = 1 << 18
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        pick = rng.integers(0, centers, hi - lo)
        out[lo:hi] = c[pick] + rng.standard_normal((hi - lo, dim), dtype=np.float32)
    return out


def _dataset(name: str, rows: int, dim: int, make: Any) -> tuple[Path, np.ndarray]:
    """``make(rows, dim, seed=1)`` saved once under the benchmark data directory, and
    mapped."""
    DATA.mkdir(parents=True, exist_ok=True)
    data = DATA / f"{name}-{rows}x{dim}.npy"
    if not data.exists():
        np.save(data, make(rows, dim, seed=1))
    return data, np.load(data, mmap_mode="r")


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = [len(set(a[:k].tolist()) & set(t.tolist())) for a, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k)


def _ingest(
    data: Path, idx: Path, factory: str, train: int, merge_factor: int, *extra: str
) -> float:
    sample = run_child(
        [python(), "-m", "streams.app.cli", "ingest", str(data), "--index", str(idx),
         "--factory", factory, "--metric", "l2", "--train-size", str(train),
         "--merge-factor", str(merge_factor), "--snapshot-every", "0", "--no-progress",
         *extra],
        timeout=3600,
    )  # fmt: skip
    return sample.seconds


def _timed(search: Any, q: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    times, ids = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        ids = search(q)
        times.append(time.perf_counter() - started)
    assert ids is not None
    return statistics.median(times) / len(q), ids


def _per_query(search: Any, q: np.ndarray, repeats: int = 3) -> float:
    """Median over repeats of the mean seconds of one-query calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for row in q:
            search(row[None, :])
        times.append((time.perf_counter() - started) / len(q))
    return statistics.median(times)


def run_ivf(rows: int, queries: int = 2000, repeats: int = 5) -> dict[str, Any]:
    from sinks import open_snapshot

    dim, nlist, train = 128, 1024, 65_536
    data, x = _dataset("clustered", rows, dim, clustered)
    q = clustered(queries, dim, seed=1)[:queries]  # same centres, new points
    q = q + 0.01 * np.random.default_rng(9).standard_normal(q.shape, dtype=np.float32)
    print(f"exact top-10 of {queries:,} queries over {rows:,} vectors ...", flush=True)
    _, truth = faiss.knn(q, np.ascontiguousarray(x), 10, metric=faiss.METRIC_L2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ann-"))
    try:
        print("embedstream ingest (merging on) ...", flush=True)
        on = [_ingest(data, tmp / f"on{i}", f"IVF{nlist},Flat", train, 4) for i in range(2)]
        print("embedstream ingest (merging off) ...", flush=True)
        off = [_ingest(data, tmp / f"off{i}", f"IVF{nlist},Flat", train, 0) for i in range(2)]
        view = open_snapshot(tmp / "on0")
        unmerged = open_snapshot(tmp / "off0")
        segments = [len(s.segments) for s in view.shards]
        print("offline FAISS index ...", flush=True)
        offline = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_L2)
        offline.train(np.ascontiguousarray(x[:train]))
        for lo in range(0, rows, 1 << 18):
            offline.add(np.ascontiguousarray(x[lo : lo + (1 << 18)]))
        out: dict[str, Any] = {
            "rows": rows,
            "dim": dim,
            "factory": f"IVF{nlist},Flat",
            "queries": queries,
            "segments_merged": segments,
            "segments_unmerged": [len(s.segments) for s in unmerged.shards],
            "ingest_seconds_merging_on": on,
            "ingest_seconds_merging_off": off,
            "ingest_rate_ratio_on_vs_off": round(statistics.median(off) / statistics.median(on), 3),
            "by_nprobe": {},
        }
        for nprobe in (8, 16, 32, 64):
            p = faiss.SearchParametersIVF()
            p.nprobe = nprobe
            t_ours, ids_ours = _timed(
                lambda qq, n=nprobe: view.search(qq, 10, {"nprobe": n}).ids, q, repeats
            )
            t_raw, _ = _timed(
                lambda qq, n=nprobe: unmerged.search(qq, 10, {"nprobe": n}).ids, q, repeats
            )
            t_off, ids_off = _timed(
                lambda qq, pp=p: offline.search(qq, 10, params=pp)[1], q, repeats
            )
            # One query per call, as a service answers requests: per-call overheads
            # (one coarse-quantizer search per segment, thread hand-offs) show here.
            single = q[:200]
            s_ours = _per_query(lambda qq, n=nprobe: view.search(qq, 10, {"nprobe": n}), single)
            s_raw = _per_query(lambda qq, n=nprobe: unmerged.search(qq, 10, {"nprobe": n}), single)
            s_off = _per_query(lambda qq, pp=p: offline.search(qq, 10, params=pp), single)
            rows_out = {
                "single_query_ms": {
                    "ours": round(s_ours * 1e3, 4),
                    "unmerged": round(s_raw * 1e3, 4),
                    "offline": round(s_off * 1e3, 4),
                    "ratio_ours_vs_offline": round(s_ours / s_off, 3),
                    "ratio_unmerged_vs_offline": round(s_raw / s_off, 3),
                },
                "ours_ms_per_query": round(t_ours * 1e3, 4),
                "unmerged_ms_per_query": round(t_raw * 1e3, 4),
                "offline_ms_per_query": round(t_off * 1e3, 4),
                "ratio_ours_vs_offline": round(t_ours / t_off, 3),
                "ratio_unmerged_vs_offline": round(t_raw / t_off, 3),
                "recall_ours": round(recall(ids_ours, truth), 4),
                "recall_offline": round(recall(ids_off, truth), 4),
            }
            out["by_nprobe"][str(nprobe)] = rows_out
            print(nprobe, rows_out, flush=True)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_hnsw(rows: int, queries: int = 2000, repeats: int = 5) -> dict[str, Any]:
    """HNSW32 through `embedstream ingest` (merged segments) against one HNSW32 built
    offline: time per query at equal recall, over a range of efSearch."""
    from sinks import open_snapshot

    dim = 128
    data, mapped = _dataset("clustered", rows, dim, clustered)
    x = np.ascontiguousarray(mapped)
    q = clustered(queries, dim, seed=1)[:queries]
    q = q + 0.01 * np.random.default_rng(9).standard_normal(q.shape, dtype=np.float32)
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_L2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-hnsw-"))
    try:
        started = time.perf_counter()
        ours_s = _ingest(data, tmp / "idx", "HNSW32", 1, 4)
        view = open_snapshot(tmp / "idx")
        started = time.perf_counter()
        offline = faiss.index_factory(dim, "HNSW32", faiss.METRIC_L2)
        offline.add(x)
        offline_s = time.perf_counter() - started
        out: dict[str, Any] = {
            "rows": rows,
            "factory": "HNSW32",
            "segments": [len(s.segments) for s in view.shards],
            "ingest_seconds": round(ours_s, 1),
            "offline_build_seconds": round(offline_s, 1),
            "by_efSearch": {},
        }
        curve_off = {}
        curve_ours = {}
        efs = (16, 32, 64, 128, 256)
        # The offline curve goes further and denser, so every point of ours has an
        # offline time at its recall (interpolated between the two settings around it).
        efs_off = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)
        times_off: dict[int, list[float]] = {ef: [] for ef in efs_off}
        times_ours: dict[int, list[float]] = {ef: [] for ef in efs}
        found: dict[tuple[str, int], np.ndarray] = {}
        for _ in range(repeats):  # alternated, so the machine's drifts hit both alike
            for ef in efs_off:
                p = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
                p.efSearch = ef
                t, found["off", ef] = _timed(
                    lambda qq, pp=p: offline.search(qq, 10, params=pp)[1], q, 1
                )
                times_off[ef].append(t)
                if ef not in times_ours:
                    continue
                t, found["ours", ef] = _timed(
                    lambda qq, e=ef: view.search(qq, 10, {"efSearch": e}).ids, q, 1
                )
                times_ours[ef].append(t)
        for ef in efs_off:
            curve_off[ef] = (statistics.median(times_off[ef]), recall(found["off", ef], truth))
        for ef in efs:
            curve_ours[ef] = (statistics.median(times_ours[ef]), recall(found["ours", ef], truth))
        out["offline_curve"] = {
            str(ef): {"ms_per_query": round(t * 1e3, 4), "recall": round(r, 4)}
            for ef, (t, r) in curve_off.items()
        }
        for ef in efs:
            t_ours, r_ours = curve_ours[ef]
            t_eq = _time_at_recall(list(curve_off.values()), r_ours)
            out["by_efSearch"][str(ef)] = {
                "ours_ms_per_query": round(t_ours * 1e3, 4),
                "recall_ours": round(r_ours, 4),
                "offline_ms_per_query_same_ef": round(curve_off[ef][0] * 1e3, 4),
                "recall_offline_same_ef": round(curve_off[ef][1], 4),
                "offline_ms_per_query_equal_recall": None if t_eq is None else round(t_eq * 1e3, 4),
                "ratio_at_equal_recall": None if t_eq is None else round(t_ours / t_eq, 3),
            }
            print(ef, out["by_efSearch"][str(ef)], flush=True)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _time_at_recall(curve: list[tuple[float, float]], target: float) -> float | None:
    """The time (s/query) a curve of (time, recall) points takes at ``target``
    recall: linear between the two points around it; None beyond its end."""
    points = sorted(curve, key=lambda v: v[1])
    if not points or points[-1][1] < target:
        return None
    if points[0][1] >= target:
        return points[0][0]
    for (t0, r0), (t1, r1) in itertools.pairwise(points):
        if r0 < target <= r1:
            return t0 + (t1 - t0) * (target - r0) / (r1 - r0)
    return points[-1][0]


def shifted(rows: int, dim: int, seed: int, centers: int = 1000) -> np.ndarray:
    """Clustered vectors (as :func:`clustered`) whose cluster centres are all
    replaced by new random ones after the first half."""
    half = rows // 2
    return np.concatenate(
        [clustered(half, dim, seed, centers), clustered(rows - half, dim, seed + 1000, centers)]
    )


def run_drift(rows: int, queries: int = 2000, repeats: int = 5) -> dict[str, Any]:
    """A stream whose clusters move halfway: retraining on against off against one
    index trained offline on all of it, at the parameters `tune` picks."""
    from sinks import open_snapshot

    dim, nlist, train = 128, 1024, 65_536
    data, x = _dataset("shifted", rows, dim, shifted)
    # Held-out queries from both halves' clusters.
    q = np.concatenate(
        [clustered(queries // 2, dim, seed=1), clustered(queries // 2, dim, seed=1001)]
    )
    q = q + 0.01 * np.random.default_rng(9).standard_normal(q.shape, dtype=np.float32)
    print(f"exact top-10 of {queries:,} queries over {rows:,} vectors ...", flush=True)
    _, truth = faiss.knn(q, np.ascontiguousarray(x), 10, metric=faiss.METRIC_L2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    factory = f"IVF{nlist},Flat"
    try:
        print("embedstream ingest (retraining on, then off) ...", flush=True)
        seconds = {
            "retrain": _ingest(data, tmp / "retrain", factory, train, 4),
            "kept": _ingest(data, tmp / "kept", factory, train, 4, "--retrain-threshold", "0"),
        }
        print("embedstream tune --recall 0.95 ...", flush=True)
        tuned = subprocess.run(
            [python(), "-m", "streams.app.cli", "tune", str(tmp / "retrain"), "--recall", "0.95"],
            capture_output=True, text=True, timeout=3600, check=True,
        )  # fmt: skip
        print(tuned.stdout, flush=True)
        views = {name: open_snapshot(tmp / name) for name in ("retrain", "kept")}
        params = dict(views["retrain"].config.search_params)
        print("offline FAISS index ...", flush=True)
        offline = faiss.index_factory(dim, factory, faiss.METRIC_L2)
        pick = np.sort(np.random.default_rng(3).choice(rows, train, replace=False))
        offline.train(np.ascontiguousarray(x[pick]))
        for lo in range(0, rows, 1 << 18):
            offline.add(np.ascontiguousarray(x[lo : lo + (1 << 18)]))
        p = faiss.SearchParametersIVF()
        p.nprobe = params.get("nprobe", 1)
        searches = {
            "retrain": lambda qq: views["retrain"].search(qq, 10, params).ids,
            "kept": lambda qq: views["kept"].search(qq, 10, params).ids,
            "offline": lambda qq: offline.search(qq, 10, params=p)[1],
        }
        times: dict[str, list[float]] = {name: [] for name in searches}
        found: dict[str, np.ndarray] = {}
        for _ in range(repeats):  # alternated, so drifts of the machine hit all alike
            for name, search in searches.items():
                t, found[name] = _timed(search, q, 1)
                times[name].append(t)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        retrain = views["retrain"].config.last_retrain
        out: dict[str, Any] = {
            "rows": rows,
            "dim": dim,
            "factory": factory,
            "queries": queries,
            "search_params": params,
            "generation": views["retrain"].config.generation,
            "last_retrain": None if retrain is None else retrain.reason,
            "retrain_sample": None if retrain is None else retrain.sample,
            "retrain_train_seconds": None if retrain is None else retrain.seconds,
            "ingest_seconds": seconds,
            "segments": {n: [len(s.segments) for s in v.shards] for n, v in views.items()},
            "ms_per_query": {n: round(v, 4) for n, v in ms.items()},
            "recall": {n: round(recall(f, truth), 4) for n, f in found.items()},
            "list_imbalance": {
                "offline": round(_imbalance_of(offline), 3),
                **{n: round(_imbalance(v), 3) for n, v in views.items()},
            },
        }
        out["latency_ratio_retrain_vs_offline"] = round(ms["retrain"] / ms["offline"], 3)
        out["latency_ratio_kept_vs_offline"] = round(ms["kept"] / ms["offline"], 3)
        out["recall_gap_retrain_vs_offline"] = round(
            out["recall"]["offline"] - out["recall"]["retrain"], 4
        )
        print(out, flush=True)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _imbalance_of(index: Any) -> float:
    ivf: Any = faiss.extract_index_ivf(index)
    return float(ivf.invlists.imbalance_factor())


def _imbalance(view: Any) -> float:
    """FAISS's imbalance factor of list sizes summed over a snapshot's segments (of
    one codec generation; 1 is even)."""
    sizes: np.ndarray | None = None
    for shard in view.shards:
        for seg in shard.segments:
            inv = seg.index.invlists
            got = np.array([inv.list_size(i) for i in range(seg.index.nlist)], float)
            sizes = got if sizes is None else sizes + got
    assert sizes is not None
    return float(len(sizes) * (sizes**2).sum() / sizes.sum() ** 2)


def run_tune(target: float = 0.95) -> dict[str, Any]:
    from sinks import open_snapshot

    base = np.load(SHARED / "minilm-pypi-base.f16.npy").astype(np.float32)
    q = np.load(SHARED / "minilm-pypi-queries.f16.npy").astype(np.float32)
    truth = np.load(SHARED / "minilm-pypi-groundtruth-ip-top100.i32.npy")[:, :10]
    tmp = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    out: dict[str, Any] = {"data": "MiniLM 20,000 x 384, 500 held-out queries", "target": target}
    try:
        data = tmp / "base.npy"
        np.save(data, base)
        setups = {
            "IVF256,Flat": ["--factory", "IVF256,Flat", "--train-size", "20000"],
            "HNSW32": ["--factory", "HNSW32"],
            "PQ48 + rerank 100": [
                "--quantize",
                "pq",
                "--pq-m",
                "48",
                "--rerank",
                "100",
                "--train-size",
                "20000",
            ],
        }
        for name, args in setups.items():
            idx = tmp / name.replace(" ", "").replace(",", "_").replace("+", "")
            run_child([python(), "-m", "streams.app.cli", "ingest", str(data), "--index",
                       str(idx), *args, "--no-progress"], timeout=1800)  # fmt: skip
            before = recall(open_snapshot(idx).search(q, 10).ids, truth)
            tuned = run_child(
                [python(), "-m", "streams.app.cli", "tune", str(idx), "--recall", str(target)],
                timeout=1800,
            )
            view = open_snapshot(idx)
            after = recall(view.search(q, 10).ids, truth)
            out[name] = {
                "recall_default": round(before, 4),
                "search_params": view.config.search_params,
                "recall_tuned_held_out": round(after, 4),
                "tune_seconds": round(tuned.seconds, 1),
            }
            print(name, out[name], flush=True)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(result: dict[str, Any]) -> str:
    lines = []
    ivf = result.get("ivf")
    if ivf:
        rows = [
            [
                n,
                f"{r['ours_ms_per_query']:.3f}",
                f"{r['offline_ms_per_query']:.3f}",
                f"{r['ratio_ours_vs_offline']:.2f}x",
                f"{r['unmerged_ms_per_query']:.3f}",
                f"{r['ratio_unmerged_vs_offline']:.2f}x",
                f"{r['recall_ours']:.4f}",
                f"{r['recall_offline']:.4f}",
            ]
            for n, r in ivf["by_nprobe"].items()
        ]
        lines.append(
            f"{ivf['factory']}, {ivf['rows']:,} x {ivf['dim']}-d clustered, {ivf['queries']:,} "
            f"queries; segments merged {ivf['segments_merged']}, unmerged "
            f"{ivf['segments_unmerged']}; ingest rate merging on / off: "
            f"{ivf['ingest_rate_ratio_on_vs_off']}x"
        )
        lines.append(
            table(
                rows,
                [
                    "nprobe",
                    "ours ms/q",
                    "offline ms/q",
                    "ratio",
                    "unmerged ms/q",
                    "ratio",
                    "recall ours",
                    "recall offline",
                ],
            )
        )
        single = [
            [
                n,
                *(f"{r['single_query_ms'][c]:.3f}" for c in ("ours", "offline", "unmerged")),
                f"{r['single_query_ms']['ratio_ours_vs_offline']:.2f}x",
                f"{r['single_query_ms']['ratio_unmerged_vs_offline']:.2f}x",
            ]
            for n, r in ivf["by_nprobe"].items()
        ]
        lines.append("One query per call (ms):")
        lines.append(
            table(
                single,
                ["nprobe", "ours", "offline", "unmerged", "ours/offline", "unmerged/offline"],
            )
        )
    hnsw = result.get("hnsw")
    if hnsw:
        lines.append(
            f"HNSW32, {hnsw['rows']:,} x 128-d clustered; segments {hnsw['segments']}; ingest "
            f"{hnsw['ingest_seconds']} s, offline build {hnsw['offline_build_seconds']} s"
        )

        def cell(value: float | None, fmt: str) -> str:
            return "beyond the offline curve" if value is None else format(value, fmt)

        rows = [
            [ef, f"{r['ours_ms_per_query']:.3f}", f"{r['recall_ours']:.4f}",
             cell(r["offline_ms_per_query_equal_recall"], ".3f"),
             cell(r["ratio_at_equal_recall"], ".2f") + "x"]
            for ef, r in hnsw["by_efSearch"].items()
        ]  # fmt: skip
        lines.append(
            table(
                rows,
                ["efSearch", "ours ms/q", "recall ours", "offline ms/q at equal recall", "ratio"],
            )
        )
    drift = result.get("drift")
    if drift:
        lines.append(
            f"Drift: {drift['factory']}, {drift['rows']:,} x {drift['dim']}-d, cluster centres "
            f"replaced halfway; tuned {json.dumps(drift['search_params'])}; "
            f"retrained: {drift['last_retrain']} on {drift['retrain_sample']:,} vectors"
        )
        rows = [
            [name, f"{drift['ms_per_query'][name]:.3f}",
             f"{drift['ms_per_query'][name] / drift['ms_per_query']['offline']:.2f}x",
             f"{drift['recall'][name]:.4f}", f"{drift['list_imbalance'][name]:.2f}"]
            for name in ("retrain", "kept", "offline")
        ]  # fmt: skip
        lines.append(
            table(rows, ["index", "ms/query", "vs offline", "recall@10", "list imbalance"])
        )
    tune = result.get("tune")
    if tune:
        rows = [
            [
                name,
                f"{r['recall_default']:.4f}",
                json.dumps(r["search_params"]),
                f"{r['recall_tuned_held_out']:.4f}",
            ]
            for name, r in tune.items()
            if isinstance(r, dict)
        ]
        lines.append(table(rows, ["index", "recall@10 default", "tuned", "recall@10 tuned"]))
    return "\n\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--hnsw-rows", type=int, default=1_000_000)
    ap.add_argument("--only", nargs="*", choices=["ivf", "hnsw", "drift", "tune"])
    a = ap.parse_args()
    parts = a.only or ["ivf", "hnsw", "drift", "tune"]
    result: dict[str, Any] = {}
    if "ivf" in parts:
        result["ivf"] = run_ivf(a.rows)
    if "hnsw" in parts:
        result["hnsw"] = run_hnsw(a.hnsw_rows)
    if "drift" in parts:
        result["drift"] = run_drift(a.rows)
    if "tune" in parts:
        result["tune"] = run_tune()
    name = "ann" if a.rows == 1_000_000 else f"ann-{a.rows}"
    # Parts not run this time keep their last figures.
    earlier = RESULTS / f"{name}.json"
    if earlier.exists():
        kept = json.loads(earlier.read_text())
        result = {k: v for k, v in kept.items() if k != "machine" and k not in result} | result
    save(name, result)
    print(report(result))


if __name__ == "__main__":
    main()
