"""Operators: named async generators between two channels.

An operator function takes the :class:`~streams.channel.Inbox` it reads from and
yields what goes to the next channel::

    async def double(inbox: Inbox[Batch]) -> AsyncIterator[Batch]:
        async for batch in inbox:
            batch.vectors *= 2
            yield batch

    doubled = Operator("double", double)

Operators do not own concurrency: the pipeline runs each one as a task, creates the
channels and measures them. Because an operator reads an inbox (not an arbitrary
async iterator) it may wait with a timeout (``inbox.receive(timeout=...)``) without
losing an item, which is how time-based batching works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from streams.channel import Inbox
from streams.flow import Flow

if TYPE_CHECKING:
    from streams.pipeline import Pipeline
    from streams.sink import Sink

__all__ = ["Operator", "OperatorFn"]

X = TypeVar("X")
Y = TypeVar("Y")

OperatorFn = Callable[[Inbox[X]], AsyncIterator[Y]]


class Operator(Generic[X, Y]):
    """A named stage that turns items from its inbox into items for its outbox.

    Args:
        name: stable name: metric label, log field and error context.
        fn: the async generator function.
        capacity: capacity of this operator's output channel, or ``None`` for the
            pipeline's default.
    """

    stage_kind = "operator"

    def __init__(self, name: str, fn: OperatorFn[X, Y], *, capacity: int | None = None) -> None:
        self.name = name
        self.fn = fn
        self.capacity = capacity

    def __call__(self, inbox: Inbox[X]) -> AsyncIterator[Y]:
        return self.fn(inbox)

    @overload
    def __or__(self, other: Operator[Any, Any] | Flow) -> Flow: ...
    @overload
    def __or__(self, other: Sink[Any]) -> Pipeline: ...
    def __or__(self, other: Operator[Any, Any] | Flow | Sink[Any]) -> Flow | Pipeline:
        return Flow(None, [self]) | other

    def __repr__(self) -> str:
        return f"<Operator {self.name!r}>"
