"""Owning an index directory: the marker that says "this is an embedstream index",
and the lock that keeps a second writer out.

- ``DIR/EMBEDSTREAM`` marks a directory as an index. A writer refuses an existing
  directory without it that holds anything but this project's names (so ``--index
  ~/Documents`` never has its files taken for leftovers); one that holds only them
  (written before the marker existed, or being set up by another worker that
  started at the same moment) it marks and uses.
- ``LOCK`` in a manifest chain's home (``DIR/LOCK``, or ``DIR/workers/<name>/LOCK``)
  is held with ``fcntl.flock`` by the one process writing that chain. A second
  writer fails at once with the holder's pid and host instead of interleaving
  snapshots with it. The kernel drops the lock when the holder exits, however it
  exits (``kill -9`` included), so there is never a stale lock to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path

from sinks.durable import TEMP_NAME, atomic_write, fsync_dir, open_regular
from streams.errors import SnapshotError

__all__ = ["MARKER", "WriterLock", "claim_directory"]

log = logging.getLogger("embedstream.snapshot")

MARKER = "EMBEDSTREAM"
_MARKER_TEXT = b"embedstream index directory (writers refuse a directory without this file)\n"
_LAYOUT = ("CURRENT", "manifests", "workers")
_OURS = frozenset({MARKER, "LOCK", "VERIFIED", "objects", "floats", *_LAYOUT})


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def claim_directory(root: Path) -> None:
    """Make sure ``root`` is an embedstream index directory a writer may use:
    create it (with the marker) when missing or empty, adopt one written before the
    marker existed, and refuse anything else.

    Raises:
        SnapshotError: ``root`` is not a directory, or is a non-empty directory that
            is not an index, or ``objects``/``manifests`` in it are not plain
            directories (a symlink there could point cleanup at other files).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SnapshotError(f"{root}: exists and is not a directory") from None
    except OSError as exc:
        raise SnapshotError(f"{root}: cannot create the index directory: {exc}") from exc
    if not root.is_dir():
        raise SnapshotError(f"{root}: exists and is not a directory")
    marker = root / MARKER
    for sub in ("objects", "manifests", "workers", "floats"):
        p = root / sub
        if os.path.lexists(p) and not _is_real_dir(p):
            raise SnapshotError(
                f"{root}: {sub}/ is a symlink or not a directory; an index keeps its files "
                "in plain directories (move the real directory there)"
            )
    if os.path.lexists(marker):
        if not stat.S_ISREG(os.lstat(marker).st_mode):
            raise SnapshotError(f"{marker}: is not a regular file")
        return
    # Only this project's names: a new directory another writer is setting up right
    # now (workers starting together), or one written before markers existed.
    foreign = [e for e in os.listdir(root) if e not in _OURS and not TEMP_NAME.match(e)]
    if foreign:
        shown = ", ".join(sorted(foreign)[:3]) + (" ..." if len(foreign) > 3 else "")
        raise SnapshotError(
            f"{root}: is not empty and is not an embedstream index (no {MARKER} file; it "
            f"holds {shown}); give a new or empty directory for --index"
        )
    if any(os.path.lexists(root / n) for n in _LAYOUT):
        log.info("%s: an index written before %s markers; marking it", root, MARKER)
    atomic_write(marker, _MARKER_TEXT)
    fsync_dir(root)


class WriterLock:
    """The exclusive writer lock of one manifest chain (``home/LOCK``).

    Raises:
        SnapshotError: another process holds it; the message names its pid and host.
    """

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.path = home / "LOCK"
        try:
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise SnapshotError(f"{self.path}: cannot open the writer lock: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise SnapshotError(
                f"{home}: another writer holds this index ({holder}); stop it first, or "
                "give another --index (several Kafka workers share one directory with "
                "different --worker names)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise SnapshotError(f"{self.path}: cannot lock: {exc}") from exc
        self._fd: int | None = fd
        info = json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        ).encode()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, info + b"\n", 0)

    def __repr__(self) -> str:
        return f"<WriterLock {str(self.path)!r} {'held' if self._fd is not None else 'released'}>"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {int(info['pid'])} on host {info['host']!s}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"
