"""The Source contract: where chunks come from and how they resume."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, overload

from streams.channel import Outbox
from streams.flow import Flow
from streams.records import Chunk, Positions
from streams.statistics import SourceStatistics

if TYPE_CHECKING:
    from streams.operator import Operator
    from streams.pipeline import Pipeline
    from streams.sink import Sink

__all__ = ["Source"]


class Source(ABC):
    """Produces :class:`~streams.records.Chunk` objects, resuming from positions.

    Subclasses implement :meth:`chunks` (pull: the runtime sends what it yields), or
    override :meth:`run` to send into the channel themselves (push: for sources that
    must keep doing something while the channel is full, like a Kafka consumer that
    must keep polling). Compose with ``|``:
    ``source | decode() | batch() | sink`` makes a :class:`~streams.pipeline.Pipeline`.
    """

    name: str = "source"
    stage_kind = "source"

    @abstractmethod
    def chunks(self, start: Positions) -> AsyncIterator[Chunk]:
        """Yield chunks, starting after the positions the sink restored.

        Args:
            start: the position of each partition that the index already holds;
                a partition missing from it starts at its beginning.

        Raises:
            SourceError: the source cannot be read at all.
        """

    async def run(self, start: Positions, outbox: Outbox[Chunk]) -> None:
        """Send every chunk into ``outbox`` (the default: what :meth:`chunks` yields)."""
        chunks = self.chunks(start)
        try:
            async for chunk in chunks:
                await outbox.send(chunk)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def hand_partitions_to(self, sink: Sink[Any]) -> None:  # noqa: B027
        """Called before :meth:`run` when the sink moves partitions between
        processes (:attr:`Sink.moves_partitions`): a source that learns which
        partitions it is given must then ``claim`` them from the sink and
        ``release`` them when they are taken away. The default does nothing."""

    async def on_snapshot(self, seq: int, positions: Positions) -> None:  # noqa: B027
        """Called after the sink made snapshot ``seq`` holding ``positions`` durable.

        Kafka commits offsets here; the default does nothing.
        """

    def statistics(self) -> SourceStatistics:
        """The source's figures for :meth:`Pipeline.metrics` (lag, ...)."""
        return SourceStatistics()

    @overload
    def __or__(self, other: Operator[Any, Any] | Flow) -> Flow: ...
    @overload
    def __or__(self, other: Sink[Any]) -> Pipeline: ...
    def __or__(self, other: Operator[Any, Any] | Flow | Sink[Any]) -> Flow | Pipeline:
        return Flow(self, []) | other
