"""Shared fixtures: small real data files and a helper to run pipelines."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The real embeddings live beside the repository (../shared/data), as in CI;
# EMBEDSTREAM_SHARED_DATA points elsewhere.
SHARED_DATA = Path(
    os.environ.get("EMBEDSTREAM_SHARED_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)


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
