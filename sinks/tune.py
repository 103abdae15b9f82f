"""Recall-targeted tuning: the cheapest search-time parameters that reach a recall.

``embedstream tune DIR --recall 0.95`` draws query vectors from the index's own
vectors, each moved by about its nearest-neighbour distance so that it behaves like a
new item (or takes given queries), computes their exact top-k by brute force over the
stored vectors (the float file with ``--rerank``, else what the index reconstructs),
then searches the index with each candidate parameter setting, cheapest first, and
keeps the first whose recall, less two standard errors, reaches the target. The
choice is stored in the next manifest (:meth:`store_choice`), so plain searches,
``serve`` and a restarted ``ingest`` use it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from sinks.manifest import ManifestBody
from sinks.params import SearchParams, applicable_params
from sinks.search import SnapshotView, prepare_queries
from sinks.shared import current_manifests
from sinks.store import SnapshotStore, chain_names
from streams.errors import ConfigError, SnapshotError

__all__ = ["Trial", "TuneResult", "candidates", "store_choice", "tune"]


@dataclass(frozen=True)
class Trial:
    """One parameter setting tried: its recall@k and search time per query."""

    params: SearchParams
    recall: float
    seconds_per_query: float

    def margin(self, samples: int) -> float:
        """The recall less two standard errors over ``samples`` query-result pairs:
        a setting is chosen when this reaches the target, so that queries the
        sample did not contain reach it too."""
        spread = math.sqrt(self.recall * (1 - self.recall) / max(samples, 1))
        return self.recall - 2 * spread


@dataclass
class TuneResult:
    """What tuning tried and chose (``chosen`` is ``None`` when nothing reached the
    target; then ``best`` is the setting with the highest recall)."""

    target: float
    k: int
    queries: int
    trials: list[Trial] = field(default_factory=list)
    chosen: Trial | None = None

    @property
    def best(self) -> Trial | None:
        return max(self.trials, key=lambda t: t.recall, default=None)


def candidates(index: Any, k: int) -> list[SearchParams]:
    """Parameter settings for ``index``'s type, cheapest first (a single ``{}`` for
    types without search-time parameters, such as Flat)."""
    names = applicable_params(index)
    out: list[SearchParams] = []
    if "nprobe" in names:
        ivf = faiss.extract_index_ivf(index)
        nprobe = 1
        while nprobe < ivf.nlist:
            setting: SearchParams = {"nprobe": nprobe}
            if "quantizer_efSearch" in names:
                setting["quantizer_efSearch"] = max(64, 2 * nprobe)
            out.append(setting)
            nprobe *= 2
        out.append({"nprobe": int(ivf.nlist)})
    elif "efSearch" in names:
        ef = 16
        while ef < 2048:
            if ef >= k:
                out.append({"efSearch": ef})
            ef *= 2
        out.append({"efSearch": 2048})
    return out or [{}]


def _stored_vectors(view: SnapshotView) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Every live id and its stored vector (exact floats with rerank). Blocking."""
    ids: list[npt.NDArray[np.int64]] = []
    vecs: list[npt.NDArray[np.float32]] = []
    for shard in view.shards:
        for seg in shard.segments:
            live = seg.ids.to_array()
            if not len(live):
                continue
            if shard.floats is not None:
                got, found = shard.floats.gather(live)
                live, rows = live[found], got[found]
            elif seg.binary:
                raise ConfigError("binary codes (--quantize binary) have nothing to tune")
            else:
                rows = np.asarray(seg.reconstruct(live), dtype=np.float32)
            ids.append(live)
            vecs.append(rows)
    if not ids:
        raise ConfigError(f"{view.root}: the index is empty; nothing to tune")
    return np.concatenate(ids), np.ascontiguousarray(np.concatenate(vecs), dtype=np.float32)


def _sample_queries(
    base: npt.NDArray[np.float32], n: int, metric: str, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Queries like new items: stored vectors moved by about the distance to their
    nearest other vector, in a random direction. A stored vector itself would be too
    easy a query for a graph index (it is linked to its own neighbours) and would
    overstate the recall real queries get."""
    picks = rng.choice(len(base), size=min(n, len(base)), replace=False)
    x = base[picks]
    # Distance to the nearest other stored vector (the first hit is the vector itself).
    dist, _ = faiss.knn(x, base, min(2, len(base)), metric=faiss.METRIC_L2)
    step = np.sqrt(np.maximum(dist[:, -1], 0.0))[:, None]
    direction = rng.standard_normal(x.shape).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    q = x + step * direction
    if metric == "ip":
        # Keep the queries' norms those of the data (inner product depends on them).
        q *= (np.linalg.norm(x, axis=1) / np.maximum(np.linalg.norm(q, axis=1), 1e-12))[:, None]
    return np.ascontiguousarray(q, dtype=np.float32)


def tune(
    view: SnapshotView,
    recall: float,
    *,
    k: int = 10,
    sample: int = 1000,
    queries: npt.ArrayLike | None = None,
    seed: int = 0,
) -> TuneResult:
    """Try parameter settings on ``view`` until one reaches ``recall`` (blocking).

    Raises:
        ConfigError: a target outside (0, 1], an empty index, or queries that do not
            fit it.
    """
    if not 0 < recall <= 1:
        raise ConfigError(f"--recall {recall}: give a recall between 0 and 1")
    ids, base = _stored_vectors(view)
    if queries is None:
        q = _sample_queries(base, sample, view.metric, np.random.default_rng(seed))
    else:
        q = prepare_queries(queries, view.dim, False)
    q = prepare_queries(q, view.dim, view.config.normalize_queries)
    k = min(k, len(base))
    metric = faiss.METRIC_INNER_PRODUCT if view.metric == "ip" else faiss.METRIC_L2
    _, rows = faiss.knn(q, base, k, metric=metric)
    truth = ids[rows]
    result = TuneResult(target=recall, k=k, queries=len(q))
    index = view.shards[0].segments[0].index
    for setting in candidates(index, k):
        started = time.perf_counter()
        found = view.search(q, k, setting).ids
        seconds = (time.perf_counter() - started) / len(q)
        hits = [len(set(a.tolist()) & set(t.tolist())) for a, t in zip(found, truth, strict=True)]
        trial = Trial(setting, float(np.mean(hits)) / k, seconds)
        result.trials.append(trial)
        if trial.margin(len(q) * k) >= recall:
            result.chosen = trial
            break
    return result


def store_choice(root: str, params: SearchParams) -> list[int]:
    """Commit, on every manifest chain of ``root``, a manifest equal to its current
    one but for ``search_params``. Returns the new seqs.

    Raises:
        SnapshotError: a chain is being written (its writer lock is held: a running
            writer would go on writing its own parameters), or has no snapshot.
    """
    seqs = []
    current = current_manifests(root)
    for chain in chain_names(root):
        manifest = current.get(chain)
        if manifest is None:
            continue
        store = SnapshotStore(root, chain=chain)
        try:
            fields = {f: getattr(manifest, f) for f in ManifestBody.__struct_fields__}
            body = ManifestBody(**{**fields, "search_params": dict(params)})
            seqs.append(store.commit(body))
        finally:
            store.close()
    if not seqs:
        raise SnapshotError(f"{root}: holds no snapshot to store the parameters in")
    return seqs
