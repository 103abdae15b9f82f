"""Restart: how long `embedstream serve DIR` takes from its start to its first
answer, with segments mapped in place (the default) against read into memory
(``--no-mmap``), at several index sizes.

Each size is ingested once through the CLI (128-d Flat, the snapshot left warm in
the page cache, as on a restart of the same machine); then ``serve`` is started and
``POST /search`` is polled every 5 ms until it answers 200. Alternated runs, medians;
peak RSS of the serving process from its VmHWM (mapped pages it touched count
there too: they are shared page cache, not private memory).

    python -m benchmarks.bench_startup [--rows 1000000 2000000 5000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import DATA, python, run_child, save, table

DIM = 128


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_answer(idx: Path, mmap: bool) -> tuple[float, float]:
    """Seconds from spawning `serve` to its first 200 on POST /search, and the
    server's peak RSS (MB) then."""
    port = _free_port()
    argv = [python(), "-m", "streams.app.cli", "serve", str(idx), "--http",
            f"127.0.0.1:{port}", *([] if mmap else ["--no-mmap"])]  # fmt: skip
    body = json.dumps({"vectors": [[0.5] * DIM], "k": 10}).encode()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/search",
                data=body,
                headers={"content-type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.005)
        seconds = time.perf_counter() - started
        hwm = 0.0
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
        return seconds, hwm
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(sizes: list[int], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"dim": DIM, "factory": "Flat", "repeats": repeats, "by_rows": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        for rows in sizes:
            DATA.mkdir(parents=True, exist_ok=True)
            data = DATA / f"vectors-{rows}x{DIM}.npy"
            if not data.exists():
                rng = np.random.default_rng(1)
                np.save(data, rng.standard_normal((rows, DIM), dtype=np.float32))
            idx = tmp / f"idx{rows}"
            print(f"ingest {rows:,} ...", flush=True)
            run_child(
                [python(), "-m", "streams.app.cli", "ingest", str(data), "--index", str(idx),
                 "--snapshot-every", "0", "--no-progress"],
                timeout=3600,
            )  # fmt: skip
            size = sum(p.stat().st_size for p in (idx / "objects").iterdir())
            times: dict[str, list[float]] = {"mapped": [], "read": []}
            rss: dict[str, list[float]] = {"mapped": [], "read": []}
            for _ in range(repeats):
                for name in ("mapped", "read"):
                    s, mb = _first_answer(idx, name == "mapped")
                    times[name].append(s)
                    rss[name].append(mb)
            first = {k: round(statistics.median(v), 3) for k, v in times.items()}
            row: dict[str, Any] = {
                "index_bytes": size,
                "first_answer_seconds": first,
                "runs": times,
                "peak_rss_mb": {k: round(statistics.median(v), 1) for k, v in rss.items()},
                "ratio_read_vs_mapped": round(first["read"] / first["mapped"], 2),
            }
            out["by_rows"][str(rows)] = row
            print(rows, row, flush=True)
            shutil.rmtree(idx)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def report(res: dict[str, Any]) -> str:
    rows = []
    for n, r in res["by_rows"].items():
        first, rss = r["first_answer_seconds"], r["peak_rss_mb"]
        rows.append(
            [f"{int(n):,}", f"{r['index_bytes'] / 1e9:.2f} GB", f"{first['mapped']:.2f} s",
             f"{first['read']:.2f} s", f"{r['ratio_read_vs_mapped']:.1f}x",
             f"{rss['mapped']:.0f} / {rss['read']:.0f} MB"]
        )  # fmt: skip
    return table(
        rows,
        ["vectors", "index", "first answer, mapped", "read", "read / mapped",
         "peak RSS mapped / read"],
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 2_000_000, 5_000_000])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    os.environ.setdefault("EMBEDSTREAM_LOG", "warning")
    res = run(a.rows, a.repeats)
    save("startup", res)
    print(report(res))


if __name__ == "__main__":
    main()
