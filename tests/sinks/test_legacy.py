"""Index directories written by the release before the layered packages and typed
manifests (tests/data/legacy) load, search identically and take new records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sinks import open_snapshot
from sinks.dirlock import MARKER
from tests.conftest import TEST_DATA
from tests.helpers import run_cli

LEGACY = TEST_DATA / "legacy"


@pytest.mark.parametrize("name", ["flat", "sq8", "hnsw"])
def test_a_legacy_index_searches_identically(tmp_path: Path, name: str) -> None:
    idx = tmp_path / name
    shutil.copytree(LEGACY / name, idx)
    expected = (LEGACY / f"{name}.expected.jsonl").read_text().splitlines()
    p = run_cli("search", str(idx), "--queries", str(LEGACY / "queries.npy"), "-k", "5")
    assert p.returncode == 0, p.stderr
    assert [json.loads(line) for line in p.stdout.splitlines()] == [
        json.loads(line) for line in expected
    ]
    assert not (idx / MARKER).exists()  # reading changes nothing


def test_a_writer_adopts_a_legacy_index(tmp_path: Path) -> None:
    idx = tmp_path / "flat"
    shutil.copytree(LEGACY / "flat", idx)
    before = open_snapshot(idx)
    assert before.ntotal == 299 and before.config.metric == "l2"
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "new-1", "vector": [9.0] * 8}) + "\n")
    p = run_cli("ingest", str(more), "--index", str(idx))
    assert p.returncode == 0, p.stderr
    assert (idx / MARKER).is_file()
    after = open_snapshot(idx)
    assert after.ntotal == 300
    q = np.load(LEGACY / "queries.npy")
    old = before.search(q, 5)
    new = after.search(q, 5)
    assert new.rows() == old.rows()
    assert after.search(np.full((1, 8), 9.0, np.float32), 1).rows()[0]["ids"] == ["new-1"]
