"""File -> Flat index: `embedstream ingest` against a bare numpy + faiss script.

Both run as whole processes on the same float32 .npy and end with the index durable
on disk; alternated, medians of several runs. One dimension (500,000 x 128 by
default, ``file_ingest.json``), or several with ``--dim D [D ...]``: each then gets
``--mb`` MiB of vectors (512 by default: 1,048,576 x 128-d ... 87,381 x 1536-d) and
its own ``file_ingest-<dim>d.json``.

    python -m benchmarks.bench_file_ingest --dim 128 384 768 1536 [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import DATA, Sample, python, run_child, save, summarise, table

BARE = """
import sys, numpy as np, faiss
x = np.load(sys.argv[1])
index = faiss.IndexIDMap2(faiss.IndexFlat(x.shape[1], faiss.METRIC_INNER_PRODUCT))
index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
faiss.write_index(index, sys.argv[2])
"""


def make_data(rows: int, dim: int) -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"vectors-{rows}x{dim}.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        np.save(path, rng.standard_normal((rows, dim), dtype=np.float32))
    return path


def run(
    rows: int = 500_000, dim: int = 128, repeats: int = 3, name: str = "file_ingest"
) -> dict[str, Any]:
    data = make_data(rows, dim)
    ours: list[Sample] = []
    bare: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        script = Path(tmp) / "bare.py"
        script.write_text(BARE)
        for i in range(repeats):
            out = Path(tmp) / f"idx{i}"
            ours.append(
                run_child(
                    [
                        python(),
                        "-m",
                        "streams.app.cli",
                        "ingest",
                        str(data),
                        "--index",
                        str(out),
                        "--batch-size",
                        "16384",
                        "--snapshot-every",
                        "0",
                        "--no-progress",
                    ]
                )
            )
            shutil.rmtree(out)
            bare.append(
                run_child([python(), str(script), str(data), str(Path(tmp) / "bare.index")])
            )
    r_ours, r_bare = summarise(ours, rows), summarise(bare, rows)
    result = {
        "job": f"ingest {rows:,} x {dim} float32 .npy into Flat (ip), whole process",
        "contenders": {"embedstream ingest": r_ours, "bare numpy+faiss script": r_bare},
        "ratio_embedstream_to_bare": round(r_ours["rate_median"] / r_bare["rate_median"], 3),
    }
    save(name, result)
    return result


def report(result: dict[str, Any]) -> str:
    rows = []
    for name, r in result["contenders"].items():
        rows.append(
            (
                name,
                f"{r['rate_median']:,.0f}",
                f"{r['seconds_median']:.2f}",
                f"{r['seconds_min']:.2f}-{r['seconds_max']:.2f}",
                f"{r['peak_rss_mb_median']:.0f}",
            )
        )
    t = table(rows, ("contender", "records/s (median)", "seconds", "min-max", "peak RSS MB"))
    return (
        f"{result['job']}\n\n{t}\n\nratio embedstream / bare: {result['ratio_embedstream_to_bare']}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", type=int, nargs="*", default=None)
    ap.add_argument("--mb", type=int, default=512, help="MiB of vectors a dimension")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.dim is None:
        print(report(run(a.rows, 128, a.repeats)))
    for dim in a.dim or []:
        rows = (a.mb << 20) // (4 * dim)
        print(report(run(rows, dim, a.repeats, name=f"file_ingest-{dim}d")))
