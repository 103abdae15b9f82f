"""Freshness a caller can rely on: the positions an answer covers, and waiting for
a record to become searchable (read-your-writes).

Every shard has a *searchable position* (:attr:`sinks.shard.Shard.position`): the
source position after the last record applied to its index. For a Kafka partition
that is the next offset to read, ``{"offset": 1235}``: every record at an offset
below it is searchable. A search answer reports, per shard, the position read
right before the search (so everything before it is in the answer) and the
snapshot seq the shard was last saved in or loaded from.

``after`` names, per shard, the position of a record a caller has written: the
Kafka offset of a produced record (``{"emb-0": 1234}``; see
:func:`streams.kafka.after_record`), or for file shards a mapping of file to the
byte or row it must reach. :func:`reached` says whether every named shard is there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.errors import EmbedstreamError
from streams.records import Position

__all__ = ["After", "SearchTimeout", "check_after", "position_value", "reached", "unreached"]

After = Mapping[str, int | Mapping[str, int]]
"""Per shard, a record that must be searchable: a Kafka offset, or file -> position."""


class SearchTimeout(EmbedstreamError):
    """A search with ``after`` gave up waiting (HTTP 504).

    Attributes:
        positions: the positions the shards had reached.
        waiting_for: the shards of ``after`` still short of it.
    """

    def __init__(self, message: str, positions: dict[str, Any], waiting_for: list[str]) -> None:
        super().__init__(message)
        self.positions = positions
        self.waiting_for = waiting_for


def position_value(position: Position) -> Any:
    """What answers report for a shard's position: the Kafka offset as an integer,
    or for files the mapping of file to next byte or row."""
    if set(position) == {"offset"}:
        return position["offset"]
    return {k: v for k, v in position.items() if not k.startswith("ids:")}


def _holds(position: Position | None, want: int | Mapping[str, int]) -> bool:
    if position is None:
        return False
    if isinstance(want, Mapping):
        return all(position.get(key, -1) >= value for key, value in want.items())
    # A Kafka offset is searchable once the position (the next offset) is past it.
    return position.get("offset", -1) > want


def unreached(positions: Mapping[str, Position], after: After) -> list[str]:
    """The shards named in ``after`` whose position does not cover it yet."""
    return [name for name, want in after.items() if not _holds(positions.get(name), want)]


def reached(positions: Mapping[str, Position], after: After) -> bool:
    """True when every shard named in ``after`` covers it."""
    return not unreached(positions, after)


def check_after(after: Any) -> dict[str, int | dict[str, int]]:
    """``after`` as given by a caller, checked.

    Raises:
        EmbedstreamError: not a mapping of shard name to a non-negative offset or
            to a mapping of file to a non-negative position.
    """
    usage = 'give {"<topic>-<partition>": offset, ...}'
    if not isinstance(after, Mapping):
        raise EmbedstreamError(f"after must map shard names to offsets; {usage}")
    out: dict[str, int | dict[str, int]] = {}
    for name, want in after.items():
        if isinstance(want, bool) or not (
            (isinstance(want, int) and want >= 0)
            or (
                isinstance(want, Mapping)
                and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in want.values()
                )
            )
        ):
            raise EmbedstreamError(
                f"after[{name!r}] is {want!r}: not an offset (an integer >= 0); {usage}"
            )
        out[str(name)] = want if isinstance(want, int) else dict(want)
    return out
