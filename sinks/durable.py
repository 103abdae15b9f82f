"""Durable writes: temp file, fsync, rename, directory fsync; and crash injection.

The building blocks of :mod:`sinks.store`'s protocol, and the hook the reliability
suite uses to kill the process between any two of its steps.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "CRASH_EXIT_CODE",
    "BytesLike",
    "Hook",
    "atomic_write",
    "crash_hook_from_env",
    "fsync_dir",
    "sha256_file",
    "unique",
]

Hook = Callable[[str], None]

BytesLike = Any
"""Anything with the buffer protocol: bytes, memoryview, a uint8 numpy array
(``collections.abc.Buffer`` needs Python 3.12)."""

_SUBDIRS = ("objects", "manifests")


CRASH_EXIT_CODE = 97


def crash_hook_from_env() -> Hook | None:
    """Fault injection for the reliability suite: with ``EMBEDSTREAM_CRASH_AT`` set to
    a step pattern (``fnmatch``, e.g. ``CURRENT:renamed`` or ``objects/*:synced``),
    the process dies with exit code 97 at that step, after skipping
    ``EMBEDSTREAM_CRASH_SKIP`` earlier matches. Unset in normal use."""
    pattern = os.environ.get("EMBEDSTREAM_CRASH_AT")
    if not pattern:
        return None
    skip = int(os.environ.get("EMBEDSTREAM_CRASH_SKIP", "0"))
    seen = 0

    def hook(step: str) -> None:
        nonlocal seen
        if fnmatch.fnmatchcase(step, pattern):
            seen += 1
            if seen > skip:
                os._exit(CRASH_EXIT_CODE)

    return hook


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: BytesLike, hook: Hook | None = None) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename.

    The caller fsyncs the directory (once for many files). ``hook`` is called with
    the step names ``"<name>:written"``, ``":synced"`` and ``":renamed"`` (fault
    injection in tests).
    """
    tmp = path.with_name(f".{path.name}.{unique()}.tmp")
    step = hook or (lambda _s: None)
    label = f"{path.parent.name}/{path.name}" if path.parent.name in _SUBDIRS else path.name
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            step(f"{label}:written")
            f.flush()
            os.fsync(f.fileno())
        step(f"{label}:synced")
        os.replace(tmp, path)
    except OSError:
        # A full disk must not also leak the half-written temp file.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    step(f"{label}:renamed")


def unique() -> str:
    # Unique across the processes and hosts that may share a directory.
    return f"{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}"


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
