"""Keeping a long ingestion's memory flat: glibc's mmap threshold.

Batches, fetch buffers and FAISS's growing vectors are megabytes each. By default
glibc raises its mmap threshold each time such a block is freed, after which blocks
of that size come from the heap, where freed ones interleave with the growing index
and are not returned: peak RSS minus the index then creeps up with the stream
(242 MB at 1M records, 308 MB at 5M in ``benchmarks/bench_memory.py``). Pinning the
threshold at 4 MiB sends every big block to its own mapping, returned to the system
when freed (193 MB and 184 MB).

``embedstream`` pins the threshold at start and tunes the garbage collector
(:mod:`streams.gc_tuning`) before it runs a pipeline; :func:`tune_process` does both
for Python users.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from streams.gc_tuning import tune_gc

__all__ = ["DEFAULT_MMAP_THRESHOLD", "pin_mmap_threshold", "tune_process"]

log = logging.getLogger("embedstream")

DEFAULT_MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def pin_mmap_threshold(nbytes: int | None = None) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` (default: the environment variable
    ``EMBEDSTREAM_MMAP_THRESHOLD``, else 4 MiB; 0 leaves glibc alone).

    Does nothing when ``MALLOC_MMAP_THRESHOLD_`` is already set (glibc read it) or
    the C library is not glibc. Returns True when the threshold was set.
    """
    if nbytes is None:
        env = os.environ.get("EMBEDSTREAM_MMAP_THRESHOLD")
        nbytes = int(env) if env and env.isdigit() else DEFAULT_MMAP_THRESHOLD
    if nbytes <= 0 or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    if not ok:  # pragma: no cover - glibc refuses values above its maximum
        log.debug("mallopt(M_MMAP_THRESHOLD, %s) was refused", nbytes)
    return ok


def tune_process() -> None:
    """What ``embedstream`` does at start, for Python users who want the same: pin
    glibc's mmap threshold (:func:`pin_mmap_threshold`) and freeze the objects
    imports made (:func:`streams.gc_tuning.tune_gc`). Call it once, after imports
    and before the pipeline runs; both are process-wide.
    """
    pin_mmap_threshold()
    tune_gc()
