"""decode: raw chunks from sources into batches of 2-D arrays.

JSON records (one per JSONL line) are decoded with msgspec into a typed Struct, all
lines of a chunk in one call (much faster than one call per line); only when that
fails is the chunk decoded line by line to pin down the bad record. Numeric chunks
(``.npy``, ``.fvecs``, ``.bvecs``) are already arrays and pass through a vectorised
check.

Every record is checked: it must decode, have an id (an int64 integer or a string),
and a vector of the stream's dimension with finite values. A bad record raises
:class:`~streams.errors.BadRecordError` naming the source, line or row and reason.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import numpy as np
import numpy.typing as npt

from streams.channel import Inbox
from streams.errors import BadRecordError
from streams.keys import INT64_MAX, INT64_MIN, key_id
from streams.operator import Operator
from streams.records import Batch, Chunk

__all__ = ["JsonRecord", "decode"]


class JsonRecord(msgspec.Struct, forbid_unknown_fields=False):
    """One JSONL record: ``{"id": ..., "vector": [...], "ts": ms, "metadata": {...}}``.

    ``{"id": ..., "delete": true}`` deletes the id instead (no vector needed).
    """

    id: int | str
    vector: list[float] | None = None
    ts: float | None = None
    metadata: dict[str, Any] | None = None
    delete: bool = False


_many = msgspec.json.Decoder(list[JsonRecord])
_one = msgspec.json.Decoder(JsonRecord)


class _Decoder:
    """Per-pipeline decoding state: the stream's dimension, fixed by the first record."""

    def __init__(self, stage: str, dim: int | None) -> None:
        self.stage = stage
        self.dim = dim

    def bad(self, chunk: Chunk, i: int, reason: str, detail: str) -> BadRecordError:
        return BadRecordError(reason, f"{self.stage}: {chunk.where(i)}", detail)

    def decode(self, chunk: Chunk) -> Batch:
        if chunk.vectors is not None:
            return self._numeric(chunk)
        if chunk.format == "json":
            return self._json(chunk)
        raise BadRecordError(
            "unknown-format",
            f"{self.stage}: {chunk.source}",
            f"cannot decode format {chunk.format!r}",
        )

    # -- numeric ------------------------------------------------------------------

    def _numeric(self, chunk: Chunk) -> Batch:
        assert chunk.vectors is not None and chunk.ids is not None
        vectors = chunk.vectors
        self._check_dim(chunk, vectors.shape[1], 0)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise self.bad(chunk, i, "not-finite", "the vector holds NaN or Inf")
        ts = chunk.timestamps
        if ts is None:
            ts = np.full(len(vectors), chunk.read_at, dtype=np.float64)
        return Batch(
            ids=chunk.ids,
            vectors=vectors,
            timestamps=ts,
            partition=chunk.partition,
            position=chunk.position,
        )

    def _check_dim(self, chunk: Chunk, dim: int, i: int) -> None:
        if self.dim is None:
            self.dim = dim
        elif dim != self.dim:
            raise self.bad(
                chunk,
                i,
                "wrong-dimension",
                f"the vector has {dim} values, the stream has {self.dim}",
            )

    # -- JSON ---------------------------------------------------------------------

    def _json(self, chunk: Chunk) -> Batch:
        payloads = chunk.payloads or []
        lines = [p for p in payloads if p is not None]
        records: list[JsonRecord] | None = None
        if len(lines) == len(payloads):
            try:
                records = _many.decode(b"[" + b",".join(lines) + b"]")
            except msgspec.DecodeError:
                records = None
            if records is not None and len(records) != len(lines):
                records = None  # a line held two values; find it line by line
        if records is None:
            records = [self._json_line(chunk, i, p) for i, p in enumerate(payloads)]
        n = len(records)
        ids = np.empty(n, dtype=np.int64)
        keys: dict[int, str] | None = None
        ts = np.full(n, chunk.read_at, dtype=np.float64)
        metadata: list[Any] | None = None
        for i, r in enumerate(records):
            rid = r.id
            if isinstance(rid, str):
                if not rid:
                    raise self.bad(chunk, i, "missing-id", "the id is an empty string")
                k = key_id(rid)
                ids[i] = k
                if keys is None:
                    keys = {}
                keys[k] = rid
            elif INT64_MIN <= rid <= INT64_MAX:
                ids[i] = rid
            else:
                raise self.bad(chunk, i, "id-out-of-range", f"integer id {rid} is outside int64")
            if r.ts is not None:
                if not math.isfinite(r.ts):
                    raise self.bad(chunk, i, "bad-timestamp", f"ts {r.ts} is not a number")
                ts[i] = r.ts / 1000.0
            if r.metadata is not None:
                if metadata is None:
                    metadata = [None] * n
                metadata[i] = r.metadata
        deleted: npt.NDArray[np.bool_] | None = None
        if any(r.delete for r in records):
            deleted = np.fromiter((r.delete for r in records), dtype=bool, count=n)
        vectors = self._vectors(chunk, records, deleted)
        return Batch(
            ids=ids,
            vectors=vectors,
            timestamps=ts,
            partition=chunk.partition,
            position=chunk.position,
            keys=keys,
            metadata=metadata,
            deleted=deleted,
        )

    def _json_line(self, chunk: Chunk, i: int, payload: bytes | None) -> JsonRecord:
        if payload is None:
            raise self.bad(chunk, i, "tombstone", "a JSON stream cannot carry deletes as null")
        try:
            return _one.decode(payload)
        except msgspec.ValidationError as exc:
            raise self.bad(chunk, i, _validation_reason(str(exc)), str(exc)) from None
        except msgspec.DecodeError as exc:
            raise self.bad(chunk, i, "not-json", str(exc)) from None

    def _vectors(
        self,
        chunk: Chunk,
        records: list[JsonRecord],
        deleted: npt.NDArray[np.bool_] | None,
    ) -> npt.NDArray[np.float32]:
        if not records:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        rows = records if deleted is None else [r for r in records if not r.delete]
        where = np.arange(len(records)) if deleted is None else np.flatnonzero(~deleted)
        for j, r in enumerate(rows):
            if r.vector is None:
                raise self.bad(chunk, int(where[j]), "missing-vector", "the record has no vector")
        lengths = np.fromiter((len(r.vector or ()) for r in rows), dtype=np.int64, count=len(rows))
        if len(rows):
            self._check_dim(chunk, int(lengths[0]), int(where[0]))
        wrong = np.flatnonzero(lengths != self.dim)
        if wrong.size:
            j = int(wrong[0])
            self._check_dim(chunk, int(lengths[j]), int(where[j]))
        if self.dim is None:
            # Only deletes so far: no dimension to give them; the sink ignores the rows.
            return np.zeros((len(records), 0), dtype=np.float32)
        dense = np.array([r.vector for r in rows], dtype=np.float32).reshape(len(rows), self.dim)
        finite = np.isfinite(dense).all(axis=1)
        if not finite.all():
            j = int(np.flatnonzero(~finite)[0])
            raise self.bad(chunk, int(where[j]), "not-finite", "the vector holds NaN or Inf")
        if deleted is None:
            return dense
        vectors = np.zeros((len(records), self.dim), dtype=np.float32)
        vectors[~deleted] = dense
        return vectors


def _validation_reason(message: str) -> str:
    """A stable dead-letter reason for a msgspec validation message."""
    if "missing required field `id`" in message:
        return "missing-id"
    if "missing required field `vector`" in message:
        return "missing-vector"
    if "out of range" in message:
        return "id-out-of-range" if "$.id" in message else "not-finite"
    return "invalid"


def decode(*, dim: int | None = None, name: str = "decode") -> Operator[Chunk, Batch]:
    """Decode chunks into batches.

    Args:
        dim: the expected dimension; by default the first record's.
        name: the stage name.

    Raises (in the pipeline, as the stage's error):
        BadRecordError: a record cannot be decoded or fails a check.
    """
    state = _Decoder(name, dim)

    async def run(inbox: Inbox[Chunk]) -> AsyncIterator[Batch]:
        async for chunk in inbox:
            # In a worker thread so a large chunk never stalls the event loop (and
            # with it searches and metrics) while it decodes.
            yield await anyio.to_thread.run_sync(state.decode, chunk)

    return Operator(name, run)
