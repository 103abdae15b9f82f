"""The combined state of a snapshot directory that several workers share.

Each worker writes its own manifest chain (``DIR/workers/<name>/``; a single
process writes the directory's own chain), and all chains share the
content-addressed ``DIR/objects/``. So two workers never write the same file.

Every shard entry in a manifest carries an ``epoch``: a worker that takes a shard
over gives it the epoch of the state it loaded plus one. The combined view takes,
per shard, the entry with the highest epoch over the current manifest of every
chain. Each entry is a complete shard together with its partition position, so the
combined view is consistent shard by shard whatever the workers are doing: a
worker that hands a shard over keeps naming it (its last state) until the new owner
commits a newer epoch, so the shard never disappears from the view in between.

Chains that hold no winning entry and have not committed for a while belong to
workers that left (or were killed); :func:`retire_chains` removes them so that
their objects can be collected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from sinks.manifest import IndexManifest, ManifestBody, ShardManifest
from sinks.store import (
    DEFAULT_GRACE_SECONDS,
    WORKERS,
    Loaded,
    SnapshotStore,
    chain_names,
    chain_root,
)
from streams.errors import SnapshotError

__all__ = [
    "Combined",
    "ShardState",
    "combine",
    "current_manifests",
    "latest_epochs",
    "retire_chains",
    "stored_dim",
]

log = logging.getLogger("embedstream.snapshot")


@dataclass
class ShardState:
    """The winning entry of one shard and the chain it comes from."""

    entry: ShardManifest
    chain: str | None
    loaded: Loaded

    @property
    def epoch(self) -> int:
        return self.entry.epoch

    @property
    def owner(self) -> str:
        return self.chain or self.loaded.manifest.worker or "-"


@dataclass
class Combined:
    """What a directory resolves to over all its chains.

    Attributes:
        root: the directory.
        chains: each chain's loaded (verified) snapshot; chains without one are
            missing here and listed in ``failures`` when they failed to load.
        shards: per shard name, the winning state.
        failures: per chain, why no snapshot of it loads.
    """

    root: str
    chains: dict[str | None, Loaded]
    shards: dict[str, ShardState]
    failures: dict[str | None, str] = field(default_factory=dict)

    @property
    def config(self) -> IndexManifest:
        """The index configuration (dimension, metric, factory...), from the chain
        that holds the most shards."""
        best = max(
            self.chains.values(),
            key=lambda ld: sum(1 for s in self.shards.values() if s.loaded is ld),
        )
        fields = IndexManifest.__struct_fields__
        return IndexManifest(**{f: getattr(best.manifest, f) for f in fields})

    @property
    def seq(self) -> int | None:
        """The seq of the only chain, or ``None`` when several workers share it."""
        return next(iter(self.chains.values())).seq if len(self.chains) == 1 else None

    @property
    def newest_seq(self) -> int:
        """The highest seq over the chains."""
        return max(ld.seq for ld in self.chains.values())

    @property
    def fallbacks(self) -> list[dict[str, Any]]:
        """Snapshots skipped on the way, per chain (see :attr:`Loaded.fallbacks`)."""
        out: list[dict[str, Any]] = []
        for chain, ld in self.chains.items():
            out.extend({**fb, "worker": chain} for fb in ld.fallbacks)
        return out

    @property
    def ntotal(self) -> int:
        return sum(s.entry.ntotal for s in self.shards.values())

    def describe(self) -> dict[str, Any]:
        """One manifest-shaped JSON view of everything, for ``inspect --json`` and
        ``/stats``: the configuration, ``ntotal``, each chain's seq, and every
        winning shard entry with its ``owner`` and ``epoch``."""
        return {
            **msgspec.to_builtins(self.config),
            "seq": self.seq,
            "created": max((ld.manifest.created or "") for ld in self.chains.values()),
            "ntotal": self.ntotal,
            "workers": {
                (chain or "-"): {"seq": ld.seq, "created": ld.manifest.created}
                for chain, ld in self.chains.items()
            },
            "shards": [
                {**msgspec.to_builtins(s.entry), "owner": s.owner, "epoch": s.epoch}
                for _, s in sorted(self.shards.items())
            ],
        }


def _rank(state: ShardState) -> tuple[int, int, str]:
    # Highest epoch wins; the rest only orders equal epochs deterministically.
    return (state.epoch, state.entry.position.get("offset", -1), state.chain or "")


def combine(
    root: str | os.PathLike[str],
    shards: Collection[str] | None = None,
    *,
    verify_all: bool = False,
) -> Combined | None:
    """Load every chain of ``root`` (verifying, with fallbacks) and pick each shard's
    newest state. Blocking. ``verify_all``: hash every object, even those recorded
    as verified and unchanged (:mod:`sinks.verified`).

    With ``shards``, only their objects are verified (a worker taking them over);
    the other shards of the result are then unverified.

    Returns ``None`` when no chain holds a snapshot yet.

    Raises:
        SnapshotError: snapshots exist but none loads.
    """
    chains: dict[str | None, Loaded] = {}
    failures: dict[str | None, str] = {}
    for chain in chain_names(root):
        store = SnapshotStore(root, chain=chain, readonly=True, verify_all=verify_all)
        try:
            loaded = store.load(shards)
        except SnapshotError as exc:
            failures[chain] = str(exc)
            continue
        if loaded is not None:
            chains[chain] = loaded
    if not chains:
        if failures:
            raise SnapshotError("; ".join(failures.values()))
        return None
    states: dict[str, ShardState] = {}
    for chain, loaded in chains.items():
        for entry in loaded.manifest.shards:
            state = ShardState(entry, chain, loaded)
            held = states.get(entry.name)
            if held is None or _rank(state) > _rank(held):
                states[entry.name] = state
    for chain, why in failures.items():
        log.warning("%s: worker %s has no loadable snapshot: %s", root, chain or "-", why)
    return Combined(str(root), chains, states, failures)


def current_manifests(
    root: str | os.PathLike[str], exclude: Collection[str | None] = ()
) -> dict[str | None, ManifestBody]:
    """The current manifest of every chain but those in ``exclude`` (``None`` is the
    directory's own chain), read without verifying objects: cheap, for bookkeeping
    that a stale answer cannot harm."""
    out: dict[str | None, ManifestBody] = {}
    for chain in chain_names(root):
        if chain in exclude:
            continue
        store = SnapshotStore(root, chain=chain, readonly=True)
        seq = store.current_seq()
        if seq is None:
            continue
        with contextlib.suppress(SnapshotError):
            out[chain] = store.read_manifest(seq)
    return out


def stored_dim(root: str | os.PathLike[str]) -> int | None:
    """The vector dimension of the index in ``root`` (from any chain's current
    manifest), or ``None`` when it holds none yet. Cheap: verifies no object."""
    if not os.path.isdir(root):
        return None
    for manifest in current_manifests(root).values():
        return manifest.dim
    return None


def latest_epochs(
    root: str | os.PathLike[str],
    exclude: str | None,
    manifests: dict[str | None, ManifestBody] | None = None,
) -> dict[str, int]:
    """Per shard, the highest epoch the current manifests of the other chains name
    (``manifests`` when the caller has read them already).

    A worker uses it to stop naming shards it handed over once their new owner has
    committed them.
    """
    if manifests is None:
        manifests = current_manifests(root, (exclude,))
    out: dict[str, int] = {}
    for chain, manifest in manifests.items():
        if chain == exclude:
            continue
        for entry in manifest.shards:
            out[entry.name] = max(out.get(entry.name, -1), entry.epoch)
    return out


def retire_chains(
    root: str | os.PathLike[str],
    own: str | None,
    grace: float = DEFAULT_GRACE_SECONDS,
    manifests: dict[str | None, ManifestBody] | None = None,
) -> list[str]:
    """Remove the chains of workers that are gone: no shard they name is held at
    their epoch (a newer owner committed it), and they have not committed for
    ``grace`` seconds.

    ``manifests`` (every chain's current manifest) may come from the caller; a
    slightly stale read is safe because a chain that committed within ``grace`` is
    never removed. A worker that is merely idle and later commits again recreates
    its chain. Returns the names removed.
    """
    base = Path(root)
    if manifests is None:
        manifests = current_manifests(root)
    best: dict[str, tuple[int, str]] = {}
    for chain, manifest in manifests.items():
        for entry in manifest.shards:
            rank = (entry.epoch, chain or "")
            if rank > best.get(entry.name, (-1, "")):
                best[entry.name] = rank
    winners = {chain for _, chain in best.values()}
    cutoff = time.time() - grace
    removed = []
    for chain in chain_names(root):
        if chain is None or chain == own or chain in winners:
            continue
        home = chain_root(base, chain)
        try:
            if max(home.stat().st_mtime, (home / "CURRENT").stat().st_mtime) >= cutoff:
                continue
        except FileNotFoundError:
            if not home.exists() or home.stat().st_mtime >= cutoff:
                continue
        # Rename first: a half-deleted chain must never look like a chain.
        doomed = base / WORKERS / f".retired-{chain}-{uuid.uuid4().hex[:8]}"
        try:
            home.rename(doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(chain)
        log.info("%s: retired the chain of worker %s (no shard left)", root, chain)
    return removed
