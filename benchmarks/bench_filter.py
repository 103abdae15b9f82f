"""Payloads and filtered search at 1,000,000 x 128-d Flat, three payload fields.

Payloads: ``{"lang": one of 10 keywords, "year": 1000-1999, "price": [0, 1)}``, all
three declared (``--payload-index lang --payload-index year:int --payload-index
price:float``).

1. **Filtered search latency** against the unfiltered search of the same index,
   at selectivity 50% (``price < 0.5``), 10% (``lang == "l3"``), 1% (``year <
   1010``) and 0.1% (``year == 1500``): single queries (the HTTP case) and batches
   of 100, alternated with the unfiltered search, medians. Target: every
   filtered latency <= 1.2x the unfiltered one.
2. **Payload memory**: bytes the payload stores hold, against the raw payload
   bytes (each ``metadata`` object as compact JSON). Target: <= 1.5x.
3. **JSON ingest with payloads** against the same records without them, through
   ``embedstream ingest FILE.jsonl`` as users run it (its own records/s), runs
   alternated, medians. Target: >= 0.9x.

    python -m benchmarks.bench_filter [--rows 1000000] [--ingest-rows 300000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from benchmarks.harness import DATA, python, save, table

DIM = 128
FIELDS = {"lang": "keyword", "year": "int", "price": "float"}
FILTERS = {
    "50%": {"price": {"lt": 0.5}},
    "10%": {"lang": "l3"},
    "1%": {"year": {"lt": 1010}},
    "0.1%": {"year": 1500},
}


def _payloads(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    langs = rng.integers(0, 10, n).tolist()
    years = rng.integers(1000, 2000, n).tolist()
    prices = rng.random(n).round(4).tolist()
    return [
        {"lang": f"l{a}", "year": y, "price": p}
        for a, y, p in zip(langs, years, prices, strict=True)
    ]


def _build(path: Path, x: np.ndarray, metas: list[dict[str, Any]]) -> None:
    from sinks import FaissSink
    from streams.records import Batch

    async def main() -> None:
        sink = FaissSink(path, metric="l2", snapshot_every=None, payload_index=FIELDS)
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            step = 20_000
            for lo in range(0, len(x), step):
                hi = min(lo + step, len(x))
                ids = np.arange(lo, hi)
                await sink.write(
                    Batch(ids, x[lo:hi], np.zeros(hi - lo), "p", {"offset": hi},
                          metadata=metas[lo:hi])
                )  # fmt: skip
            await sink.close(ok=True)

    anyio.run(main)


def _latency(view: Any, q: np.ndarray, batch: int, repeats: int) -> dict[str, Any]:
    """Median seconds of a search of ``batch`` queries, per filter and unfiltered,
    alternated query by query."""
    times: dict[str, list[float]] = {"none": [], **{s: [] for s in FILTERS}}
    counts: dict[str, int] = {}
    for r in range(repeats):
        for lo in range(0, len(q), batch):
            qq = q[lo : lo + batch]
            for name in times:
                f = None if name == "none" else FILTERS[name]
                t = time.perf_counter()
                res = view.search(qq, 10, filter=f)
                times[name].append(time.perf_counter() - t)
                if r == 0 and lo == 0:
                    counts[name] = int((res.ids >= 0).sum())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "median_ms": {k: round(v * 1000, 3) for k, v in med.items()},
        "ratio_to_unfiltered": {s: round(med[s] / med["none"], 3) for s in FILTERS},
        "results_first_batch": counts,
    }


def _ingest_rate(data: Path, idx: Path, with_payload: bool) -> float:
    shutil.rmtree(idx, ignore_errors=True)
    argv = [python(), "-m", "streams.app.cli", "ingest", str(data), "--index", str(idx),
            "--snapshot-every", "0", "--no-progress"]  # fmt: skip
    if with_payload:
        for name, kind in FIELDS.items():
            argv += ["--payload-index", f"{name}:{kind}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    m = re.search(r"\(([\d,]+) records/s\)", out)
    if m is None:
        raise RuntimeError(f"no rate in {out!r}")
    return float(m.group(1).replace(",", ""))


def _jsonl(path: Path, x: np.ndarray, metas: list[dict[str, Any]] | None) -> None:
    with open(path, "w") as f:
        for i in range(len(x)):
            rec: dict[str, Any] = {"id": i, "vector": x[i].round(6).tolist()}
            if metas is not None:
                rec["metadata"] = metas[i]
            f.write(json.dumps(rec) + "\n")


def run(rows: int, ingest_rows: int, repeats: int) -> dict[str, Any]:
    from sinks import open_snapshot

    out: dict[str, Any] = {"dim": DIM, "rows": rows, "fields": FIELDS, "filters": FILTERS}
    DATA.mkdir(parents=True, exist_ok=True)
    data = DATA / f"vectors-{rows}x{DIM}.npy"
    if not data.exists():
        np.save(data, np.random.default_rng(1).standard_normal((rows, DIM), dtype=np.float32))
    x = np.load(data, mmap_mode="r")
    metas = _payloads(rows)
    tmp = Path(tempfile.mkdtemp(prefix="bench-filter-"))
    try:
        idx = tmp / "idx"
        print(f"build {rows:,} x {DIM} with payloads ...", flush=True)
        _build(idx, np.ascontiguousarray(x), metas)
        view = open_snapshot(idx, mmap=False)
        raw = sum(len(json.dumps(m, separators=(",", ":"))) for m in metas)
        held = sum(seg.payloads.nbytes for s in view.shards for seg in s.segments)
        out["memory"] = {
            "raw_payload_bytes": raw,
            "store_bytes": held,
            "ratio": round(held / raw, 3),
            "segments": sum(len(s.segments) for s in view.shards),
        }
        print(out["memory"], flush=True)
        q = np.random.default_rng(7).standard_normal((200, DIM)).astype(np.float32)
        view.search(q[:5], 10)  # warm
        out["single_query"] = _latency(view, q[:60], 1, repeats)
        print("single", out["single_query"], flush=True)
        out["batch_100"] = _latency(view, q, 100, repeats)
        print("batch", out["batch_100"], flush=True)
        del view

        print(f"ingest {ingest_rows:,} JSON records with and without payloads ...", flush=True)
        plain, rich = tmp / "plain.jsonl", tmp / "rich.jsonl"
        xi = np.ascontiguousarray(x[:ingest_rows])
        _jsonl(plain, xi, None)
        _jsonl(rich, xi, metas[:ingest_rows])
        rates: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(repeats):
            rates["without"].append(_ingest_rate(plain, tmp / "ing", False))
            rates["with"].append(_ingest_rate(rich, tmp / "ing", True))
        med = {k: statistics.median(v) for k, v in rates.items()}
        out["ingest"] = {
            "rows": ingest_rows,
            "records_per_s": {k: round(v) for k, v in med.items()},
            "runs": rates,
            "ratio": round(med["with"] / med["without"], 3),
        }
        print(out["ingest"], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def report(res: dict[str, Any]) -> str:
    one, many = res["single_query"], res["batch_100"]
    rows = [["none", f"{one['median_ms']['none']:.2f} ms", "1.00x",
             f"{many['median_ms']['none']:.1f} ms", "1.00x"]]  # fmt: skip
    for s in FILTERS:
        rows.append(
            [s, f"{one['median_ms'][s]:.2f} ms", f"{one['ratio_to_unfiltered'][s]:.2f}x",
             f"{many['median_ms'][s]:.1f} ms", f"{many['ratio_to_unfiltered'][s]:.2f}x"]
        )  # fmt: skip
    return table(rows, ["selectivity", "1 query", "vs unfiltered", "100 queries", "vs unfiltered"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--ingest-rows", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("EMBEDSTREAM_LOG", "warning")
    res = run(a.rows, a.ingest_rows, a.repeats)
    save("filter", res)
    print(report(res))
    print(res["memory"], res["ingest"])


if __name__ == "__main__":
    main()
