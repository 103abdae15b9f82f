"""Which shards a sink holds when several workers share one snapshot directory.

A worker owns the shards of the partitions its consumer group gives it. Taking a
shard over raises its epoch by one (the combined view of the directory prefers the
highest epoch, see :mod:`sinks.shared`); handing it over leaves its last state named
in this worker's manifests until the new owner commits a newer epoch, so the shard
is never missing from the directory's view.
"""

from __future__ import annotations

import anyio

from sinks.manifest import ShardManifest
from sinks.shard import Shard
from sinks.shared import ShardState
from streams.records import Position

__all__ = ["Ownership", "reached"]


def reached(position: Position | None, target: Position | None) -> bool:
    """True when ``position`` is at or past ``target`` in every field of it."""
    if not target:
        return True
    if position is None:
        return False
    for key, want in target.items():
        have = position.get(key)
        if have is None:
            return False
        if isinstance(want, int | float) and isinstance(have, int | float):
            if have < want:
                return False
        elif have != want:
            return False
    return True


class Ownership:
    """The shards one sink may write, their epochs, and the ones it handed over.

    Args:
        worker: the worker's name; ``None`` for the only writer, which owns every
            partition.
    """

    def __init__(self, worker: str | None) -> None:
        self.worker = worker
        self.owned: set[str] | None = None if worker is None else set()
        self.epochs: dict[str, int] = {}
        # Position of the newest item that reached the sink, per partition: a
        # release waits until everything the source emitted has arrived.
        self.arrived: dict[str, Position] = {}
        # Last durable entries of shards handed over, named in our manifests until
        # their new owner commits a newer epoch.
        self.handed_off: dict[str, ShardManifest] = {}
        # Shards handed over in a rebalance, kept until the new assignment is known:
        # a partition that comes straight back is not read from disk again.
        self.released: dict[str, Shard] = {}
        self._arrival: anyio.Event | None = None

    def __repr__(self) -> str:
        owned = "all" if self.owned is None else sorted(self.owned)
        return f"<Ownership {self.worker or '-'} owns {owned}>"

    def owns(self, name: str) -> bool:
        return self.owned is None or name in self.owned

    def epoch(self, name: str) -> int:
        return self.epochs.get(name, 1)

    def claimed(self, name: str, state: ShardState | None) -> None:
        """Record taking ``name`` over from ``state`` (``None``: a new shard)."""
        self.epochs[name] = (state.epoch if state is not None else 0) + 1
        if self.owned is not None:
            self.owned.add(name)
        self.handed_off.pop(name, None)

    def reusable(self, name: str, state: ShardState) -> Shard | None:
        """The in-memory shard this worker handed over, when the directory's newest
        state of it is still exactly what this worker wrote."""
        shard = self.released.pop(name, None)
        if shard is None or state.chain != self.worker or shard.floats is not None:
            return None
        saved = shard.saved_entry
        if shard.dirty or saved is None:
            return None
        same = all(
            getattr(saved, k) == getattr(state.entry, k) for k in ("segments", "position", "epoch")
        )
        return shard if same else None

    def arrive(self, name: str, position: Position) -> None:
        if position:
            self.arrived[name] = dict(position)
        if self._arrival is not None:
            self._arrival.set()
            self._arrival = None

    async def wait_arrived(self, upto: dict[str, Position]) -> None:
        """Wait until every partition of ``upto`` has arrived at its position."""
        while not all(reached(self.arrived.get(n), p) for n, p in upto.items()):
            if self._arrival is None:
                self._arrival = anyio.Event()
            await self._arrival.wait()

    def release(self, name: str, shard: Shard | None) -> None:
        """Stop owning ``name``; ``shard`` is what this sink held of it."""
        if self.owned is not None:
            self.owned.discard(name)
        self.arrived.pop(name, None)
        if shard is None:
            return
        if shard.saved_entry is not None:
            self.handed_off[name] = shard.saved_entry
        self.released[name] = shard

    def superseded(self, newer: dict[str, int]) -> None:
        """Forget handed-over shards that another worker holds at a newer epoch."""
        for name, entry in list(self.handed_off.items()):
            if newer.get(name, -1) > entry.epoch:
                del self.handed_off[name]
                self.released.pop(name, None)
