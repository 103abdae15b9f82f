"""Pinning glibc's mmap threshold (streams.memory)."""

from __future__ import annotations

import ctypes.util

import pytest

from streams.memory import pin_mmap_threshold


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

    from streams.gc_tuning import tune_gc

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
