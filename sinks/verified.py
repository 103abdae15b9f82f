"""Objects already hashed and found good, so that opening an index does not hash
every byte again.

Loading a snapshot verifies that each object it names matches its SHA-256 name
(:meth:`sinks.store.SnapshotStore.verify`): at 1 GB of segments that is most of a
second, spent again by every ``serve``, ``search`` and restart. Objects are
immutable and written atomically (temp file, fsync, rename), so a file that was
hashed once and has not been touched since still holds what was hashed. This
records, per object, the file's size, inode and modification time when it was last
written or hashed; a file whose three still match is taken as verified, anything
else is hashed again. A writer saves the record of its chain's current objects in
``VERIFIED`` beside its ``CURRENT`` at each commit; readers take every chain's.

Damage that changes none of the three (a flipped bit on the medium) is found by a
full check: ``embedstream inspect --verify`` hashes everything.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import msgspec

from sinks.durable import Hook, atomic_write

__all__ = ["VERIFIED_NAME", "VerifiedObjects", "verified_objects"]

VERIFIED_NAME = "VERIFIED"

Stamp = tuple[int, int, int]
_decoder = msgspec.json.Decoder(dict[str, tuple[int, int, int]])


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_size, st.st_ino, st.st_mtime_ns)


class VerifiedObjects:
    """Stamps (size, inode, mtime) of objects known to match their hash.

    Args:
        objects: the directory of objects.
    """

    def __init__(self, objects: Path) -> None:
        self.objects = objects
        self._stamps: dict[str, Stamp] = {}
        self._read: dict[Path, Stamp | None] = {}

    def read(self, homes: Iterable[Path]) -> None:
        """Take the records of chains ``homes`` written since last read."""
        for home in homes:
            path = home / VERIFIED_NAME
            stamp = _stamp(path)
            if stamp is None or self._read.get(path) == stamp:
                continue
            self._read[path] = stamp
            with contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError):
                # A damaged record is only a slower start: everything gets hashed.
                for digest, value in _decoder.decode(path.read_bytes()).items():
                    self._stamps.setdefault(digest, value)

    def __repr__(self) -> str:
        return f"<VerifiedObjects {len(self._stamps)}>"

    def known(self, digest: str) -> bool:
        """True when the object was hashed (or written) and is unchanged since."""
        want = self._stamps.get(digest)
        return want is not None and _stamp(self.objects / digest) == want

    def record(self, digest: str) -> None:
        """The object ``digest`` was just written or hashed: remember its stamp."""
        stamp = _stamp(self.objects / digest)
        if stamp is not None:
            self._stamps[digest] = stamp

    def forget(self, digest: str) -> None:
        self._stamps.pop(digest, None)

    def save(self, home: Path, digests: Iterable[str], hook: Hook | None = None) -> None:
        """Write the stamps of ``digests`` (those known) to ``home``'s record."""
        keep = {d: self._stamps[d] for d in digests if d in self._stamps}
        atomic_write(home / VERIFIED_NAME, msgspec.json.encode(keep), hook)


_registry: dict[Path, VerifiedObjects] = {}


def verified_objects(objects: Path) -> VerifiedObjects:
    """The one record of ``objects`` in this process, shared by every store of the
    directory (what a reader verified, its writer need not hash again)."""
    key = objects.resolve()
    found = _registry.get(key)
    if found is None:
        found = _registry[key] = VerifiedObjects(objects)
    return found
