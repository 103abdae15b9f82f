"""Shared benchmark machinery: timed child processes, alternation, medians, results.

Every contender runs as a whole process (import time included), contenders alternate
within one run so machine noise hits them alike, and ratios are computed inside the
run from medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DATA = ROOT / ".data"


@dataclass
class Sample:
    seconds: float
    peak_rss_mb: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_child(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 900
) -> Sample:
    """Run a process to completion; its wall time and peak RSS (its own, via wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    deadline = started + timeout
    # Peak RSS from the child's own VmHWM: wait4's ru_maxrss would include the
    # parent's memory that the child had between fork and exec.
    hwm_kb = 0
    status_file = f"/proc/{proc.pid}/status"
    while True:
        try:
            with open(status_file) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        hwm_kb = max(hwm_kb, int(line.split()[1]))
                        break
        except OSError:
            pass
        pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise TimeoutError(f"{argv[:3]} ran over {timeout}s")
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} exited {code}:\n{out}\n{err}")
    extra: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            extra.update(json.loads(line[len("RESULT ") :]))
    return Sample(seconds, hwm_kb / 1024, extra)


def summarise(samples: list[Sample], work: float) -> dict[str, Any]:
    secs = [s.seconds for s in samples]
    rss = [s.peak_rss_mb for s in samples]
    med = statistics.median(secs)
    return {
        "runs": len(samples),
        "seconds_median": round(med, 4),
        "seconds_min": round(min(secs), 4),
        "seconds_max": round(max(secs), 4),
        "rate_median": round(work / med, 1),
        "peak_rss_mb_median": round(statistics.median(rss), 1),
        "samples": [asdict(s) for s in samples],
    }


def machine() -> dict[str, Any]:
    try:
        import faiss

        fv = faiss.__version__
    except ImportError:  # pragma: no cover
        fv = "?"
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "faiss": fv,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    return path


def python() -> str:
    return sys.executable


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
