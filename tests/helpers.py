"""Helpers shared by tests: collect what a source and operators produce."""

from __future__ import annotations

from typing import Any

from anyio.abc import TaskGroup

from streams import Operator, Pipeline, Sink, Source
from streams.records import Positions


class Collect(Sink[Any]):
    """A sink that keeps every item."""

    name = "collect"

    def __init__(self, start: Positions | None = None) -> None:
        self.items: list[Any] = []
        self.start = start or {}

    async def open(self, task_group: TaskGroup) -> Positions:
        return self.start

    async def write(self, item: Any) -> None:
        self.items.append(item)

    async def close(self, *, ok: bool) -> None:
        pass


async def collect(
    source: Source, *ops: Operator[Any, Any], start: Positions | None = None
) -> list[Any]:
    """Run ``source | ops...`` and return what reached the end."""
    sink = Collect(start)
    flow: Any = source
    for op in ops:
        flow = flow | op
    pipeline = flow | sink
    assert isinstance(pipeline, Pipeline)
    await pipeline.run()
    return sink.items
