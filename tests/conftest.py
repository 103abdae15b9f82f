"""Shared fixtures: small real data files and a helper to run pipelines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# A small slice of real sentence embeddings, committed with the tests (a clone has
# nothing beside it): 4,000 MiniLM 384-d base vectors and 200 held-out queries, as
# float16 (see tests/data/README.md).
TEST_DATA = Path(__file__).resolve().parent / "data"
MINILM_BASE = TEST_DATA / "minilm-base-4000.f16.npy"
MINILM_QUERIES = TEST_DATA / "minilm-queries-200.f16.npy"


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the exact top-``k`` of ``base`` by inner product, per query."""
    scores = queries.astype(np.float32) @ base.astype(np.float32).T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The event loops the runtime core's tests (``pytest.mark.anyio``) run on."""
    return str(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def make_npy(tmp_path: Path, rng: np.random.Generator) -> Callable[..., tuple[Path, np.ndarray]]:
    def make(
        rows: int = 1000, dim: int = 16, name: str = "x.npy", dtype: Any = np.float32
    ) -> tuple[Path, np.ndarray]:
        x = rng.standard_normal((rows, dim)).astype(dtype)
        path = tmp_path / name
        np.save(path, x)
        return path, x

    return make


@pytest.fixture
def make_jsonl(tmp_path: Path) -> Callable[..., Path]:
    def make(records: list[Any], name: str = "x.jsonl") -> Path:
        path = tmp_path / name
        with open(path, "w") as f:
            for r in records:
                f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
        return path

    return make
