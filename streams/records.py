"""What flows through a pipeline: raw chunks from sources and decoded batches.

Channels carry these, never single records: one file read or one Kafka fetch becomes
one :class:`Chunk`; ``decode`` turns a chunk into a :class:`Batch`, and everything
after ``batch`` works on the batch's 2-D arrays.

Positions: every chunk and batch belongs to exactly one source *partition* (a Kafka
topic partition, or ``"files"`` for all file input of a pipeline) and carries that
partition's :data:`Position` *after* its last record. A position is a small mapping
of stream name to the next offset (for files: path to next byte or row; for Kafka:
``{"offset": n}``). Later positions of the same partition are merged over earlier
ones with ``dict.update``, so one partition can track several files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.slabs import join_rows

__all__ = ["ROW_FIELDS", "Batch", "Chunk", "Position", "Positions", "merge_positions"]

Position = dict[str, int]
"""Next offset per stream (file path, or ``"offset"`` for a Kafka partition)."""

Positions = dict[str, Position]
"""Position per partition."""


def merge_positions(into: Positions, partition: str, position: Position) -> None:
    """Advance ``into[partition]`` by ``position`` (later offsets win per stream)."""
    into.setdefault(partition, {}).update(position)


@dataclass(slots=True, eq=False)
class Chunk:
    """Raw items that a source read in one go, not decoded yet.

    Exactly one of ``payloads`` (encoded records: JSONL lines, Kafka values) and
    ``vectors`` (already numeric rows: ``.npy``, ``.fvecs``) is set.

    Attributes:
        partition: the source partition the items belong to.
        source: a human-readable origin for messages, e.g. a file path or topic.
        format: how ``payloads`` are encoded (``"json"``, ``"f32"``...) or the file
            format the ``vectors`` came from.
        position: the partition's position after the last item.
        locations: for every item, where it sits (line number, row or offset), so
            errors and dead letters can point at it.
        location_kind: ``"line"``, ``"row"`` or ``"offset"``.
        payloads: encoded items; ``None`` in a list means a tombstone (delete).
        keys: per item key bytes (Kafka), or ``None``.
        vectors: decoded rows for numeric formats.
        ids: ids of ``vectors`` rows.
        timestamps: event time per item, epoch seconds (float64), or ``None``.
        read_at: wall-clock time the source read the chunk (epoch seconds); the
            event time of items that carry none.
        size: payload bytes when the source knows them (else computed on demand).
        truncated: payloads the source cut short because they were over its limit:
            payload index -> the full size. ``decode`` rejects them as
            ``oversized``; the payload holds a prefix for the dead letter.
        headers: per item, its Kafka record headers (name, value bytes), when any
            item has some; for raw formats they become the vector's payload.
    """

    partition: str
    source: str
    format: str
    position: Position
    locations: npt.NDArray[np.int64]
    location_kind: str = "line"
    payloads: list[bytes | None] | None = None
    keys: list[bytes | None] | None = None
    vectors: npt.NDArray[Any] | None = None
    ids: npt.NDArray[np.int64] | None = None
    timestamps: npt.NDArray[np.float64] | None = None
    read_at: float = 0.0
    size: int = -1
    truncated: dict[int, int] | None = None
    headers: list[Sequence[tuple[str, bytes]]] | None = None

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def nbytes(self) -> int:
        """Payload bytes, for channel byte counters (computed once)."""
        if self.size < 0:
            if self.vectors is not None:
                self.size = int(self.vectors.nbytes)
            elif self.payloads is not None:
                self.size = sum(map(len, filter(None, self.payloads)))
            else:
                self.size = 0
        return self.size

    def where(self, i: int) -> str:
        """Where item ``i`` sits, e.g. ``data.jsonl line 12``."""
        return f"{self.source} {self.location_kind} {int(self.locations[i])}"


@dataclass(slots=True, eq=False)
class Batch:
    """Decoded records of one partition as 2-D arrays.

    Row ``i`` is an upsert of ``ids[i]`` with ``vectors[i]``, or a delete of
    ``ids[i]`` when ``deleted`` is set and ``deleted[i]`` is true (its vector row is
    then meaningless). After the ``batch`` operator every id occurs at most once
    (the last operation on an id wins).

    Attributes:
        ids: int64 ids, shape ``(n,)``.
        vectors: float32 rows ``(n, d)``, or uint8 codes after ``quantize``.
        timestamps: event time per row, epoch seconds; NaN when unknown.
        partition: the source partition.
        position: the partition's position after the last row.
        deleted: optional bool mask of delete rows.
        keys: original string keys of string ids (id -> key), when the source
            used string ids.
        metadata: optional per-row metadata objects.
        created: monotonic time the first record of the batch was decoded.
        floats: after ``quantize(keep_floats=True)``, the full-precision vectors
            that ``vectors`` encodes (for the sink's exact rerank; trained codecs
            carry them for drift checks too).
        codec_tag: after ``quantize``, the (generation, token) of the codec state
            that encoded ``vectors`` (:class:`operators.quantize.Codec`).
    """

    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[Any]
    timestamps: npt.NDArray[np.float64]
    partition: str
    position: Position
    deleted: npt.NDArray[np.bool_] | None = None
    keys: dict[int, str] | None = None
    metadata: list[Any] | None = None
    created: float = field(default=0.0)
    floats: npt.NDArray[np.float32] | None = None
    codec_tag: tuple[int, str | None] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Number of columns of ``vectors``."""
        return int(self.vectors.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays, for channel byte counters (the floats a
        quantized batch carries along included)."""
        floats = 0 if self.floats is None else self.floats.nbytes
        return int(self.ids.nbytes + self.vectors.nbytes + self.timestamps.nbytes + floats)

    def n_deletes(self) -> int:
        """How many rows are deletes."""
        return 0 if self.deleted is None else int(self.deleted.sum())

    def take(self, rows: slice | npt.NDArray[np.intp], position: Position | None = None) -> Batch:
        """The batch of ``rows`` (a slice or an index array), every per-row field
        (:data:`ROW_FIELDS`) cut alike; ``position`` defaults to this batch's."""
        cut: dict[str, Any] = {}
        for name in ROW_FIELDS:
            value = getattr(self, name)
            if value is None:
                cut[name] = None
            elif isinstance(value, list):
                cut[name] = value[rows] if isinstance(rows, slice) else [value[i] for i in rows]
            else:
                cut[name] = value[rows]
        return Batch(
            **cut,
            partition=self.partition,
            position=self.position if position is None else position,
            keys=self.keys,
            created=self.created,
            codec_tag=self.codec_tag,
        )

    @staticmethod
    def concat(parts: Sequence[Batch], position: Position) -> Batch:
        """One batch holding ``parts`` (of one partition) in order, with
        ``position``. An optional per-row field set in some parts only is filled
        for the others (not deleted, no metadata, NaN floats)."""
        if len(parts) == 1:
            # One part: the same arrays under the new position, nothing copied.
            one = parts[0]
            return one if one.position is position else dataclasses.replace(one, position=position)
        joined: dict[str, Any] = {}
        for name in ROW_FIELDS:
            values = [getattr(p, name) for p in parts]
            if all(v is None for v in values):
                joined[name] = None
                continue
            like = next(v for v in values if v is not None)
            filled = [
                v if v is not None else _missing(name, len(p), like)
                for p, v in zip(parts, values, strict=True)
            ]
            if isinstance(like, list):
                joined[name] = [x for v in filled for x in v]
            else:
                joined[name] = join_rows(filled)
        keys: dict[int, str] | None = None
        for p in parts:
            if p.keys:
                keys = {**(keys or {}), **p.keys}
        tags = {p.codec_tag for p in parts}
        if len(tags) > 1:
            raise ValueError("the parts hold codes of different codec generations")
        return Batch(
            **joined,
            partition=parts[0].partition,
            position=position,
            keys=keys,
            created=parts[0].created,
            codec_tag=tags.pop(),
        )


ROW_FIELDS = ("ids", "vectors", "timestamps", "deleted", "metadata", "floats")
"""The fields of :class:`Batch` that hold one entry per row; :meth:`Batch.take` and
:meth:`Batch.concat` carry every one of them."""


def _missing(name: str, n: int, like: Any) -> Any:
    if name == "deleted":
        return np.zeros(n, dtype=bool)
    if name == "metadata":
        return [None] * n
    if name == "floats":
        return np.full((n, like.shape[1]), np.nan, dtype=np.float32)
    raise ValueError(f"every part of a batch has {name}")
