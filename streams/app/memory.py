"""Keeping a long ingestion's memory flat: glibc's mmap threshold and heap trimming.

Batches and fetch buffers are megabytes each. By default glibc raises its mmap
threshold each time such a block is freed, after which blocks of that size come from
the heap, where freed ones interleave with long-lived ones and are not returned:
peak RSS minus the index then creeps up with the stream (142 MB at 1M records,
162 MB at 5M in ``benchmarks/bench_memory.py``). Pinning the threshold at 4 MiB
sends every big block to its own mapping, returned to the system when freed (129 MB
and 132 MB). Higher pins fragment again: 12 MiB gave 138 and 175 MB, 32 MiB 142 and
176 MB. The pin costs rate, as every big block is faulted in afresh: 5M records took
31 s pinned against 25 s with glibc's own threshold.

Below the threshold, blocks still come from glibc's heaps, and glibc gives a heap's
memory back only from its top. Long-lived small blocks (a segment's id arrays) can
land between short-lived ones (aiokafka's 2 MiB partition buffers), and the freed
holes between them stay resident. :func:`start_trimming` runs a thread that calls
``malloc_trim`` periodically, which returns whole free pages from the middle of the
heaps too. It is off unless asked for: on the Kafka benchmark, trimming once a
second took 7% of the ingest rate (the pages are faulted in again at once; every
0.05 s it took a quarter) for 7 MB less peak RSS, and over 1M and 5M records peak
RSS minus index stays flat without it. A long-running service whose RSS creeps can
turn it on (``EMBEDSTREAM_TRIM_SECONDS=30``, say) and compare.

``embedstream`` pins the threshold at start, and before it runs a pipeline tunes
the garbage collector (:mod:`streams.app.gc_tuning`) and starts trimming if
``EMBEDSTREAM_TRIM_SECONDS`` asks for it; :func:`tune_process` does the same for
Python users.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

from streams.app.gc_tuning import tune_gc

__all__ = [
    "DEFAULT_MMAP_THRESHOLD",
    "DEFAULT_TRIM_SECONDS",
    "pin_mmap_threshold",
    "start_trimming",
    "stop_trimming",
    "tune_process",
]

log = logging.getLogger("embedstream")

DEFAULT_MMAP_THRESHOLD = 4 << 20
DEFAULT_TRIM_SECONDS = 0.0  # off: see the module docstring for why
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt  # noqa: B018  (glibc has it; musl and macOS do not)
    except (OSError, AttributeError):
        return None
    return libc


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
    libc = _glibc()
    if libc is None:
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    if not ok:  # pragma: no cover - glibc refuses values above its maximum
        log.debug("mallopt(M_MMAP_THRESHOLD, %s) was refused", nbytes)
    return ok


class _Trimmer:
    """The one thread per process that calls ``malloc_trim(0)`` periodically."""

    def __init__(self, libc: ctypes.CDLL, seconds: float) -> None:
        self.trim = libc.malloc_trim
        self.trim.argtypes = [ctypes.c_size_t]
        self.trim.restype = ctypes.c_int
        self.seconds = seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="embedstream-trim", daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(self.seconds):
            self.trim(0)


_trimmer: _Trimmer | None = None
_trimmer_lock = threading.Lock()


def start_trimming(seconds: float | None = None) -> bool:
    """Return free heap pages to the system every ``seconds`` (default: the
    environment variable ``EMBEDSTREAM_TRIM_SECONDS``, else off; 0 means off),
    from a daemon thread calling glibc's ``malloc_trim(0)``. Trimming trades
    ingest rate for resident memory: measure before turning it on.

    One thread per process: a second call changes nothing while one runs. Does
    nothing when the C library is not glibc. Returns True when trimming runs.
    """
    global _trimmer
    if seconds is None:
        env = os.environ.get("EMBEDSTREAM_TRIM_SECONDS")
        try:
            seconds = float(env) if env else DEFAULT_TRIM_SECONDS
        except ValueError:
            log.warning("EMBEDSTREAM_TRIM_SECONDS=%r is not a number; not trimming", env)
            seconds = DEFAULT_TRIM_SECONDS
    if seconds <= 0:
        return False
    with _trimmer_lock:
        if _trimmer is not None:
            return True
        libc = _glibc()
        if libc is None or not hasattr(libc, "malloc_trim"):
            return False
        _trimmer = _Trimmer(libc, seconds)
        _trimmer.thread.start()
        return True


def stop_trimming() -> None:
    """Stop the thread :func:`start_trimming` started, if any (waits for it)."""
    global _trimmer
    with _trimmer_lock:
        trimmer, _trimmer = _trimmer, None
    if trimmer is not None:
        trimmer.stopped.set()
        trimmer.thread.join()


def tune_process() -> None:
    """What ``embedstream`` does before it runs a pipeline, for Python users who
    want the same: pin glibc's mmap threshold (:func:`pin_mmap_threshold`), freeze
    the objects imports made (:func:`streams.app.gc_tuning.tune_gc`) and, when
    ``EMBEDSTREAM_TRIM_SECONDS`` asks for it, trim the heap (:func:`start_trimming`).
    Call it once, after imports and before the pipeline runs; all of it is
    process-wide.
    """
    pin_mmap_threshold()
    tune_gc()
    start_trimming()
