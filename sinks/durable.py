"""Durable writes: temp file, fsync, rename, directory fsync; and crash injection.

The building blocks of :mod:`sinks.store`'s protocol, and the hook the reliability
suite uses to kill the process between any two of its steps.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "CRASH_EXIT_CODE",
    "TEMP_NAME",
    "BytesLike",
    "Hook",
    "NotRegularFileError",
    "atomic_write",
    "crash_hook_from_env",
    "fsync_dir",
    "open_regular",
    "read_regular",
    "require_regular",
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


TEMP_NAME = re.compile(r"^\.[^/]+\.[0-9]+\.[0-9]+\.[0-9a-f]{8}\.tmp$")
"""The names :func:`atomic_write` and streamed objects give their temp files (and the
only temp files cleanup ever removes)."""


class NotRegularFileError(OSError):
    """A path that must be a regular file inside the directory is something else: a
    symlink, a FIFO, a device, a directory."""


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """Open ``path`` as a file descriptor only if it is a regular file and not a
    symlink, without ever blocking on a FIFO or device (``O_NONBLOCK`` at open,
    cleared after the check).

    Raises:
        NotRegularFileError: it is a symlink or not a regular file.
        FileNotFoundError: it does not exist (and ``flags`` do not create it).
    """
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | nofollow | nonblock | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if nofollow and exc.errno == errno.ELOOP:  # the last component is a symlink
            raise NotRegularFileError(f"{path} is a symlink; refusing to follow it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(f"{path} is not a regular file; refusing to read it")
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def require_regular(path: Path) -> None:
    """Raise :class:`NotRegularFileError` unless ``path`` is a regular file (not a
    symlink); for paths handed to a library that opens them itself (FAISS)."""
    os.close(open_regular(path))


def read_regular(path: Path) -> bytes:
    """The contents of ``path``, a regular file (see :func:`open_regular`)."""
    with os.fdopen(open_regular(path), "rb") as f:
        return f.read()


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of a regular file's contents."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()
