"""Content-addressed, crash-safe snapshot storage (in the spirit of git and LevelDB).

Layout of a snapshot directory::

    DIR/objects/<sha256>        index and key-map files, named by their content hash
    DIR/manifests/<seq>.json    one immutable manifest per snapshot
    DIR/CURRENT                 the seq of the latest committed manifest
    DIR/workers/<name>/...      the manifest chain (manifests/, CURRENT) of one worker
                                when several processes share DIR (sinks.shared)

Write order: every object to a temp file, fsync, rename; the manifest the same way;
then ``CURRENT`` the same way, then fsync the directory. The rename of ``CURRENT`` is
the commit point: a crash at any earlier step leaves the previous snapshot in force.
Objects are immutable, so an unchanged shard is referenced again, never rewritten.

Loading takes the manifest ``CURRENT`` names and verifies every object's hash. When
that fails (torn or corrupt file, missing object, damaged ``CURRENT``) it falls back
to the next older manifest that verifies and says why in :attr:`Loaded.fallbacks`;
it never silently returns an empty index when snapshots exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from sinks.dirlock import WriterLock, claim_directory
from sinks.durable import (
    CRASH_EXIT_CODE,
    TEMP_NAME,
    BytesLike,
    Hook,
    atomic_write,
    crash_hook_from_env,
    fsync_dir,
    read_regular,
    sha256_file,
    unique,
)
from sinks.manifest import (
    SCHEMA_VERSION,
    Manifest,
    ManifestBody,
    decode_manifest,
    encode_manifest,
)
from sinks.verified import verified_objects
from streams.errors import SnapshotError

__all__ = [
    "CRASH_EXIT_CODE",
    "SCHEMA_VERSION",
    "WORKERS",
    "Loaded",
    "SnapshotStore",
    "atomic_write",
    "chain_names",
    "chain_root",
]

log = logging.getLogger("embedstream.snapshot")


@dataclass
class Loaded:
    """The snapshot a directory resolves to, and how it got there.

    Attributes:
        seq: the manifest's sequence number.
        manifest: the manifest.
        fallbacks: for every newer manifest that was skipped, ``{"seq", "reason"}``.
    """

    seq: int
    manifest: Manifest
    fallbacks: list[dict[str, Any]] = field(default_factory=list)

    def object_path(self, store: SnapshotStore, digest: str) -> Path:
        return store.objects / digest


WORKERS = "workers"

OBJECT_NAME = re.compile(r"^[0-9a-f]{64}$")
"""Object file names: SHA-256 hex digests (garbage collection removes nothing else)."""

DEFAULT_GRACE_SECONDS = 600.0
"""How old an unreferenced object must be before garbage collection removes it in a
directory shared by several workers: another worker may have just written it for a
snapshot it has not committed yet."""


def chain_root(root: Path, chain: str | None) -> Path:
    """Where the manifests and ``CURRENT`` of ``chain`` live (``None``: the root's)."""
    return root if chain is None else root / WORKERS / chain


def chain_names(root: str | os.PathLike[str]) -> list[str | None]:
    """Every manifest chain in ``root``: the root's own (``None``), then each worker's."""
    base = Path(root)
    out: list[str | None] = [None]
    with contextlib.suppress(FileNotFoundError):
        out.extend(
            sorted(
                p.name
                for p in (base / WORKERS).iterdir()
                if p.is_dir() and not p.name.startswith(".")
            )
        )
    return out


def valid_chain_name(name: str) -> bool:
    """A worker name usable as a directory name on any filesystem."""
    return (
        bool(name)
        and len(name) <= 100
        and all(c.isalnum() or c in "-_." for c in name)
        and (not name.startswith("."))
    )


class SnapshotStore:
    """A snapshot directory, or one worker's manifest chain in a shared one.

    Args:
        root: the directory; created when missing (unless ``readonly``).
        chain: the worker whose manifest chain this is (``DIR/workers/<chain>``);
            ``None`` for the directory's own chain. Objects are shared by all chains.
        readonly: never create or write anything (``inspect``, ``search``).
        hook: called with a step name before and after every durable step; tests use
            it to inject crashes at each step of the protocol.
        verify_all: hash every object when loading, even those recorded as hashed
            and unchanged since (:mod:`sinks.verified`).

    A writable store owns its directory: it refuses a non-empty directory that is
    not an index and takes the chain's exclusive writer lock
    (:mod:`sinks.dirlock`) until :meth:`close`.

    Raises:
        SnapshotError: the directory cannot be used (see above), or another process
            writes this chain.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        chain: str | None = None,
        readonly: bool = False,
        hook: Hook | None = None,
        verify_all: bool = False,
    ) -> None:
        if chain is not None and not valid_chain_name(chain):
            raise SnapshotError(
                f"worker name {chain!r}: use letters, digits, '-', '_' and '.' (at most 100)"
            )
        self.root = Path(root)
        self.chain = chain
        self.objects = self.root / "objects"
        home = chain_root(self.root, chain)
        self.manifests = home / "manifests"
        self.current = home / "CURRENT"
        self.readonly = readonly
        self.hook = hook or crash_hook_from_env()
        self.verify_all = verify_all
        self.verified = verified_objects(self.objects)
        self._lock: WriterLock | None = None
        if not readonly:
            claim_directory(self.root)
            try:
                self.objects.mkdir(parents=True, exist_ok=True)
                self.manifests.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SnapshotError(
                    f"{self.root}: cannot create the snapshot directory: {exc}"
                ) from exc
            # Before touching any file: a second writer of this chain stops here.
            self._lock = WriterLock(home)
            self._remove_temp_files()

    def close(self) -> None:
        """Release the writer lock (idempotent; the store cannot write after it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.readonly = True

    def __repr__(self) -> str:
        return f"<SnapshotStore {str(self.root)!r} manifests={len(self.seqs())}>"

    def _step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name)

    @property
    def shared(self) -> bool:
        """True when several workers' chains share this directory."""
        return self.chain is not None or (self.root / WORKERS).is_dir()

    def _remove_temp_files(self) -> None:
        # Left by a crash between write and rename; never referenced by anything.
        # In a shared directory another worker may be writing one right now: only
        # old ones are leftovers.
        # Only names this project gives temp files, only regular files (never through
        # a symlink).
        cutoff = time.time() - DEFAULT_GRACE_SECONDS if self.shared else float("inf")
        for d in (self.current.parent, self.objects, self.manifests):
            for name in os.listdir(d):
                if not TEMP_NAME.match(name):
                    continue
                with contextlib.suppress(OSError):
                    info = os.lstat(d / name)
                    if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                        (d / name).unlink()

    # -- writing -------------------------------------------------------------------

    def put_object(self, data: BytesLike) -> str:
        """Store ``data`` under its SHA-256 (a no-op when it is already there).

        Returns the hex digest. The object directory is fsynced by :meth:`commit`.
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self.objects / digest
        if path.exists() and path.stat().st_size == memoryview(data).nbytes:
            self._touch(path, digest)
            return digest
        atomic_write(path, data, self.hook)
        self.verified.record(digest)
        return digest

    def _touch(self, path: Path, digest: str) -> None:
        # Reusing an object another worker may be about to collect: a fresh mtime
        # keeps it out of garbage collection for the grace period (see prune).
        if self.shared:
            known = self.verified.known(digest)
            with contextlib.suppress(OSError):
                os.utime(path)
            if known:
                self.verified.record(digest)

    def put_stream(self, produce: Callable[[Callable[[bytes], None]], None]) -> tuple[str, int]:
        """Store what ``produce(write)`` writes, hashing it on the way to disk.

        One pass and no in-memory copy of the whole object, which matters for
        indexes of hundreds of megabytes. Returns (hex digest, bytes written).
        """
        h = hashlib.sha256()
        tmp = self.objects / f".stream.{unique()}.tmp"
        size = 0
        try:
            with open(tmp, "wb") as f:

                def write(block: bytes) -> None:
                    nonlocal size
                    h.update(block)
                    f.write(block)
                    size += len(block)

                produce(write)
                digest = h.hexdigest()
                self._step(f"objects/{digest}:written")
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError):
            # RuntimeError: FAISS reports the failing write of its writer callback.
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._step(f"objects/{digest}:synced")
        path = self.objects / digest
        if path.exists() and path.stat().st_size == size:
            tmp.unlink()
            self._touch(path, digest)
        else:
            os.replace(tmp, path)
            self.verified.record(digest)
        self._step(f"objects/{digest}:renamed")
        return digest, size

    def commit(self, body: ManifestBody) -> int:
        """Write ``body`` as the next snapshot and make it current.

        The manifest gets ``schema``, ``seq``, ``parent`` and ``created`` filled in.
        Every object it names must have been stored with :meth:`put_object`.

        Returns the new seq.
        """
        if self.readonly:
            raise SnapshotError(f"{self.root}: opened read-only (or closed)")
        # A retired chain (see sinks.shared) comes back with its next commit.
        self.manifests.mkdir(parents=True, exist_ok=True)
        seqs = self.seqs()
        seq = (seqs[-1] if seqs else 0) + 1
        parent = self.current_seq()
        manifest = Manifest(
            **msgspec.structs.asdict(body),
            schema=SCHEMA_VERSION,
            seq=seq,
            parent=parent,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        # Objects first: they must be durable before a manifest names them.
        fsync_dir(self.objects)
        self._step("objects:dir-synced")
        data = encode_manifest(manifest)
        atomic_write(self.manifests / f"{seq:08d}.json", data, self.hook)
        fsync_dir(self.manifests)
        self._step("manifests:dir-synced")
        atomic_write(self.current, f"{seq}\n".encode(), self.hook)
        fsync_dir(self.current.parent)
        self._step("CURRENT:dir-synced")
        with contextlib.suppress(OSError):
            # Only a faster next start: not part of the commit.
            self.verified.save(self.current.parent, manifest.objects())
        return seq

    def prune(self, keep: int, grace: float = DEFAULT_GRACE_SECONDS) -> tuple[int, int]:
        """Keep the newest ``keep`` manifests up to the current one; collect objects.

        In a shared directory, objects referenced by any chain stay, and so do
        unreferenced ones younger than ``grace`` seconds (another worker may be
        writing the snapshot that will name them).

        Returns (manifests removed, objects removed).
        """
        if keep < 1:
            raise SnapshotError("keep must be at least 1")
        current = self.current_seq()
        seqs = [s for s in self.seqs() if current is None or s <= current]
        doomed = seqs[:-keep]
        for seq in doomed:
            self._step(f"prune:manifest {seq}")
            with contextlib.suppress(FileNotFoundError):
                (self.manifests / f"{seq:08d}.json").unlink()
        shared = self.shared
        live: set[str] = set()
        chains = chain_names(self.root) if shared else [self.chain]
        for chain in chains:
            store = (
                self
                if chain == self.chain
                else SnapshotStore(self.root, chain=chain, readonly=True)
            )
            for seq in store.seqs():
                try:
                    live.update(store.read_manifest(seq).objects())
                except SnapshotError:
                    continue
        cutoff = time.time() - grace if shared else float("inf")
        removed = 0
        for p in self.objects.iterdir():
            if OBJECT_NAME.match(p.name) and p.name not in live:
                with contextlib.suppress(FileNotFoundError):
                    info = os.lstat(p)
                    if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
                        continue
                    self._step(f"prune:object {p.name}")
                    p.unlink()
                    removed += 1
        if doomed or removed:
            fsync_dir(self.objects)
            fsync_dir(self.manifests)
        return len(doomed), removed

    # -- reading -------------------------------------------------------------------

    def seqs(self) -> list[int]:
        """Sequence numbers of all manifests on disk, ascending."""
        out = []
        try:
            names = os.listdir(self.manifests)
        except FileNotFoundError:
            return []
        for name in names:
            stem, _, ext = name.partition(".")
            if ext == "json" and stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def current_seq(self) -> int | None:
        """The seq in ``CURRENT``, or ``None`` when it is missing or unreadable."""
        try:
            text = read_regular(self.current)[:64].decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isascii() and text.isdigit() else None

    def read_manifest(self, seq: int) -> Manifest:
        """Parse one manifest. Raises SnapshotError when unreadable or not of the
        schema (:mod:`sinks.manifest`)."""
        path = self.manifests / f"{seq:08d}.json"
        try:
            data = read_regular(path)
        except FileNotFoundError:
            raise SnapshotError(f"manifest {seq} is missing") from None
        except OSError as exc:
            raise SnapshotError(f"manifest {seq} cannot be read ({exc})") from None
        return decode_manifest(data, seq)

    def verify(self, manifest: Manifest, shards: Collection[str] | None = None) -> None:
        """Check that every object of ``manifest`` (of the named ``shards`` only, when
        given) exists and matches its hash; objects hashed before and unchanged
        since are not hashed again unless the store was opened with ``verify_all``
        (:mod:`sinks.verified`)."""
        verified = self.verified
        if not self.verify_all:
            verified.read(chain_root(self.root, c) for c in chain_names(self.root))
        for digest in manifest.objects(None if shards is None else set(shards)):
            path = self.objects / digest
            if not self.verify_all and verified.known(digest):
                continue
            try:
                actual = sha256_file(path)
            except FileNotFoundError:
                raise SnapshotError(f"object {digest[:12]} is missing") from None
            except OSError as exc:
                raise SnapshotError(f"object {digest[:12]} cannot be read ({exc})") from None
            if actual != digest:
                verified.forget(digest)
                raise SnapshotError(f"object {digest[:12]} is corrupt (its hash does not match)")
            verified.record(digest)

    def load(self, shards: Collection[str] | None = None) -> Loaded | None:
        """The newest committed snapshot whose objects verify (only the objects of
        the named ``shards``, when given: a worker taking some shards over need not
        hash every other one).

        Returns ``None`` when the directory holds no manifest at all.

        Raises:
            SnapshotError: manifests exist but none of them loads.
        """
        seqs = self.seqs()
        if not seqs:
            return None
        fallbacks: list[dict[str, Any]] = []
        current = self.current_seq()
        if current is None:
            reason = "CURRENT is missing or unreadable" if self.current.exists() or seqs else ""
            fallbacks.append({"seq": None, "reason": reason or "CURRENT is missing"})
            candidates = list(reversed(seqs))
        else:
            # Manifests newer than CURRENT were never committed: ignore them.
            candidates = [s for s in reversed(seqs) if s <= current]
            if current not in seqs:
                fallbacks.append({"seq": current, "reason": f"manifest {current} is missing"})
        for seq in candidates:
            try:
                manifest = self.read_manifest(seq)
                self.verify(manifest, shards)
            except SnapshotError as exc:
                fallbacks.append({"seq": seq, "reason": str(exc)})
                continue
            for fb in fallbacks:
                log.warning("%s: skipped snapshot %s: %s", self.root, fb["seq"], fb["reason"])
            return Loaded(seq=seq, manifest=manifest, fallbacks=fallbacks)
        reasons = "; ".join(f"{fb['seq']}: {fb['reason']}" for fb in fallbacks)
        raise SnapshotError(
            f"{self.root}: no snapshot loads ({reasons}); restore the directory from a "
            "backup, or ingest into a new directory"
        )

    def history(self) -> list[dict[str, Any]]:
        """Every manifest on disk, newest first, with ``ok`` and ``error`` per entry."""
        out = []
        current = self.current_seq()
        for seq in reversed(self.seqs()):
            entry: dict[str, Any] = {"seq": seq, "current": seq == current}
            try:
                m = self.read_manifest(seq)
                self.verify(m)
                entry.update(
                    ok=True,
                    parent=m.parent,
                    created=m.created,
                    ntotal=m.ntotal,
                    shards=len(m.shards),
                )
            except SnapshotError as exc:
                entry.update(ok=False, error=str(exc))
            out.append(entry)
        return out
