"""The Sink contract: the last stage, owning durable state and positions."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from anyio.abc import TaskGroup

from streams.histogram import Histogram
from streams.records import Positions
from streams.statistics import SinkStatistics

__all__ = ["Sink"]

T = TypeVar("T")


class Sink(ABC, Generic[T]):
    """Consumes the pipeline's last channel.

    The pipeline calls :meth:`open` once (the sink restores its state and says where
    each partition resumes), :meth:`write` for every item, and :meth:`close` once.
    A sink advances a partition's position only after the item is applied, and
    persists positions together with its state, which is what makes a restart lose
    nothing and duplicate nothing.
    """

    name: str = "sink"
    stage_kind = "sink"

    @abstractmethod
    async def open(self, task_group: TaskGroup) -> Positions:
        """Restore state; return the position of every partition already held.

        ``task_group`` lives as long as the pipeline; the sink may start background
        work (periodic snapshots) in it and must stop that work in :meth:`close`.
        """

    @abstractmethod
    async def write(self, item: T) -> None:
        """Apply one item."""

    @abstractmethod
    async def close(self, *, ok: bool) -> None:
        """Stop background work; when ``ok``, flush and persist the final state.

        Called once, also after a failure (``ok=False``).
        """

    @property
    def moves_partitions(self) -> bool:
        """True when this sink shares its state with other processes and holds only
        the partitions it is given (:meth:`claim`, :meth:`release`); a source that
        learns of assignments (Kafka consumer groups) then reports them."""
        return False

    async def claim(self, partitions: Sequence[str]) -> Positions:
        """Take ``partitions`` over; return where each resumes (missing: from its
        beginning). Only called when :attr:`moves_partitions`."""
        raise NotImplementedError(f"{type(self).__name__} does not move partitions")

    async def release(self, partitions: Sequence[str], upto: Positions) -> None:
        """Hand ``partitions`` over once the items up to ``upto`` (what the source
        emitted) are in; only called when :attr:`moves_partitions`."""
        raise NotImplementedError(f"{type(self).__name__} does not move partitions")

    def add_snapshot_listener(self, fn: Callable[[int, Positions], Awaitable[None]]) -> None:
        """Have ``fn(seq, positions)`` awaited after every durable snapshot.

        Sinks without snapshots never call it (the default keeps nothing).
        """

    def histograms(self) -> dict[str, Histogram]:
        """Histograms for the metrics exporter (``freshness_seconds``, ...)."""
        return {}

    def statistics(self) -> SinkStatistics:
        """The sink's figures for :meth:`Pipeline.metrics` (the defaults: nothing)."""
        return SinkStatistics()
