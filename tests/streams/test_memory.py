"""Pinning glibc's mmap threshold (streams.app.memory)."""

from __future__ import annotations

import ctypes.util

import pytest

from streams.app.memory import pin_mmap_threshold


def test_pins_on_glibc_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("EMBEDSTREAM_MMAP_THRESHOLD", raising=False)
    glibc = ctypes.util.find_library("c") is not None
    assert pin_mmap_threshold() is glibc
    monkeypatch.setenv("EMBEDSTREAM_MMAP_THRESHOLD", "0")
    assert pin_mmap_threshold() is False
    monkeypatch.delenv("EMBEDSTREAM_MMAP_THRESHOLD")
    # Set for glibc itself: it already read it, and it wins.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert pin_mmap_threshold() is False


def test_tune_gc_freezes_and_collects_the_young_generation_less_often() -> None:
    import gc
    import weakref

    from streams.app.gc_tuning import tune_gc

    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    try:
        tune_gc(5000)
        assert gc.get_freeze_count() > frozen
        assert gc.get_threshold() == (5000, before[1], before[2])

        # Cycles made afterwards are still collected.
        class Node:
            pass

        a = Node()
        a.me = a  # type: ignore[attr-defined]
        ref = weakref.ref(a)
        del a
        gc.collect()
        assert ref() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="needs glibc")
def test_trimming_returns_free_pages_from_the_middle_of_the_heap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ctypes
    import time

    from streams.app.memory import start_trimming, stop_trimming

    monkeypatch.delenv("EMBEDSTREAM_TRIM_SECONDS", raising=False)
    stop_trimming()
    assert start_trimming() is False  # off unless asked for
    assert start_trimming(0) is False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 MiB of 16 KiB blocks (heap, not mmap), touched; free all but every 64th,
    # so the heap's top stays in use and only trimming can give the holes back.
    blocks = [libc.malloc(16 << 10) for _ in range(4096)]
    for b in blocks:
        ctypes.memset(b, 1, 16 << 10)
    for i, b in enumerate(blocks):
        if i % 64:
            libc.free(b)
    before = _rss_kib()
    try:
        assert start_trimming(0.02) is True
        assert start_trimming(5.0) is True  # one thread per process
        deadline = time.monotonic() + 10
        while _rss_kib() > before - (32 << 10) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _rss_kib() <= before - (32 << 10)
    finally:
        stop_trimming()
        for i, b in enumerate(blocks):
            if not i % 64:
                libc.free(b)
    monkeypatch.setenv("EMBEDSTREAM_TRIM_SECONDS", "0")
    assert start_trimming() is False
