"""The graph half of a pipeline: composing stages with ``|``.

``source | op | op`` is a :class:`Flow`; adding a sink makes a runnable
:class:`~streams.pipeline.Pipeline`. Stages say what they are through
``stage_kind`` (``"source"``, ``"operator"``, ``"sink"``), so this module needs none
of their classes at run time and the stage modules can build flows without an
import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

from streams.errors import ConfigError
from streams.pipeline import Pipeline

if TYPE_CHECKING:
    from streams.operator import Operator
    from streams.sink import Sink
    from streams.source import Source

__all__ = ["Flow"]


class Flow:
    """A partly composed pipeline: an optional source and some operators.

    Made by ``|``; a flow with a source becomes a :class:`Pipeline` once a sink is
    added.
    """

    def __init__(self, source: Source | None, operators: list[Operator[Any, Any]]) -> None:
        self.source = source
        self.operators = operators

    @overload
    def __or__(self, other: Operator[Any, Any] | Flow) -> Flow: ...
    @overload
    def __or__(self, other: Sink[Any]) -> Pipeline: ...
    def __or__(self, other: Operator[Any, Any] | Flow | Sink[Any]) -> Flow | Pipeline:
        kind = getattr(other, "stage_kind", None)
        if kind == "operator":
            return Flow(self.source, [*self.operators, other])  # type: ignore[list-item]
        if isinstance(other, Flow):
            if other.source is not None:
                raise ConfigError("cannot append a flow that has its own source")
            return Flow(self.source, [*self.operators, *other.operators])
        if kind == "sink":
            if self.source is None:
                raise ConfigError("a pipeline needs a source: write `source | operators... | sink`")
            return Pipeline(self.source, self.operators, other)  # type: ignore[arg-type]
        return NotImplemented

    def __repr__(self) -> str:
        names = ([self.source.name] if self.source else []) + [o.name for o in self.operators]
        return f"<Flow {' | '.join(names)}>"
