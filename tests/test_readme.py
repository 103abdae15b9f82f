"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_pipeline_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = blocks[0]
    assert 'FileSource("embeddings.npy")' in example
    np.save(
        tmp_path / "embeddings.npy",
        np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32),
    )
    proc = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "ChannelStatistics" in proc.stdout
    assert (tmp_path / "my-index" / "CURRENT").exists()
