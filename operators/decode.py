"""decode: raw chunks from sources into batches of 2-D arrays.

Numeric chunks (``.npy``, ``.fvecs``, ``.bvecs``) are already arrays and only get a
vectorised finiteness check. Encoded payloads (JSONL lines, Kafka values) go through
:mod:`operators.codecs`. Every record is checked: it must decode, carry a supported
schema version, have an id (an int64 integer or a string, or a message key), and a
vector of the stream's dimension with finite values, within ``max_payload_bytes``.

A bad record never reaches the index: it goes to the pipeline's
:class:`~streams.deadletters.Rejects` policy, which raises or dead-letters it with
the reason, the stage, the source and position, and the original bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import faiss
import numpy as np
import numpy.typing as npt

from operators.codecs import Columns, decode_payloads
from streams.channel import Inbox
from streams.deadletters import Rejected, Rejects
from streams.formats import FORMATS
from streams.operator import Operator
from streams.records import Batch, Chunk
from streams.slabs import SPARE_BYTES, SlabPool

__all__ = ["decode"]

DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20

IDLE_SECONDS = 1.0
"""With nothing arriving this long, ``decode`` lets go of its spare slabs but one."""

_ZERO = "the vector is all zeros and cannot be normalised"


class _Decoder:
    """Per-pipeline decoding state: the stream's dimension, given (``--dim``, or the
    dimension of the index being extended) or else fixed by the first vector."""

    def __init__(
        self,
        stage: str,
        dim: int | None,
        max_bytes: int,
        reject_zero: bool,
        slab_bytes: int = 32 << 20,
    ) -> None:
        self.stage = stage
        self.dim = dim
        self.max_bytes = max_bytes
        self.reject_zero = reject_zero
        # Spare slabs kept while the stream flows, so that a partition moving on to
        # its next slab finds one without page-faulting fresh memory (one is kept
        # once the stream is idle, see run() below).
        self.slabs = SlabPool(slab_bytes, keep_bytes=max(slab_bytes, SPARE_BYTES))

    def decode(self, chunk: Chunk) -> tuple[Batch, list[Rejected]]:
        # NaN and Inf in input are rejected record by record below; numpy must not
        # warn about them on the way.
        with np.errstate(all="ignore"):
            if chunk.vectors is not None:
                return self._numeric(chunk)
            cols, dim = decode_payloads(
                FORMATS[chunk.format].payload,
                chunk.payloads or [],
                chunk.keys,
                max_bytes=self.max_bytes,
                dim=self.dim,
                slabs=self.slabs,
                stream=chunk.partition,
                truncated=chunk.truncated,
            )
            if dim is not None and self.dim is None:
                self.dim = dim
            return self._assemble(chunk, cols)

    def _headers(
        self,
        chunk: Chunk,
        rows: npt.NDArray[np.int64],
        keep: npt.NDArray[np.bool_],
        bad: list[tuple[int, str, str]],
    ) -> list[dict[str, str] | None]:
        """The payloads of raw-format Kafka records: their headers, name -> UTF-8
        value. Header bytes count against ``max_payload_bytes`` with the value's."""
        assert chunk.headers is not None
        out: list[dict[str, str] | None] = []
        for j, item in enumerate(rows.tolist()):
            pairs = chunk.headers[item]
            if not pairs:
                out.append(None)
                continue
            payload = chunk.payloads[item] if chunk.payloads is not None else None
            size = len(payload or b"") + sum(len(k) + len(v or b"") for k, v in pairs)
            if size > self.max_bytes:
                bad.append(
                    (
                        item,
                        "oversized",
                        f"value and headers take {size:,} bytes, over the limit of "
                        f"{self.max_bytes:,} (max_payload_bytes / --max-payload-bytes)",
                    )
                )
                keep[j] = False
                out.append(None)
                continue
            try:
                out.append({k: (v or b"").decode("utf-8") for k, v in pairs})
            except UnicodeDecodeError:
                name = next(k for k, v in pairs if not _utf8(v or b""))
                bad.append(
                    (
                        item,
                        "bad-header",
                        f"header {name!r} is not UTF-8 text; payload headers must be UTF-8",
                    )
                )
                keep[j] = False
                out.append(None)
        return out

    def _reject(self, chunk: Chunk, bad: list[tuple[int, str, str]]) -> list[Rejected]:
        payloads = chunk.payloads
        vectors = chunk.vectors if FORMATS[chunk.format].kafka else None
        return [
            Rejected(
                reason=reason,
                stage=self.stage,
                source=chunk.source,
                partition=chunk.partition,
                location_kind=chunk.location_kind,
                location=int(chunk.locations[i]),
                detail=detail,
                raw=(
                    payloads[i]
                    if payloads is not None
                    # Kafka f32 values read straight into rows: a row is its value.
                    else (vectors[i].tobytes() if vectors is not None else None)
                ),
            )
            for i, reason, detail in sorted(bad)
        ]

    # -- numeric ------------------------------------------------------------------

    def _numeric(self, chunk: Chunk) -> tuple[Batch, list[Rejected]]:
        assert chunk.vectors is not None and chunk.ids is not None
        vectors, ids = chunk.vectors, chunk.ids
        bad: list[tuple[int, str, str]] = []
        row_bytes = vectors.shape[1] * vectors.itemsize
        # Kafka values read straight into rows have the per-record size limit.
        oversized = FORMATS[chunk.format].kafka and row_bytes > self.max_bytes
        if self.dim is None and vectors.shape[1] and not oversized:
            self.dim = int(vectors.shape[1])
        if vectors.shape[1] != self.dim or oversized:
            reason, detail = (
                (
                    "oversized",
                    f"{row_bytes:,} bytes is over the limit of "
                    f"{self.max_bytes:,} (max_payload_bytes / --max-payload-bytes)",
                )
                if oversized
                else (
                    "wrong-dimension",
                    f"the vector has {vectors.shape[1]} values, the stream {self.dim}",
                )
                if vectors.shape[1]
                else ("bad-vector", "the vector is empty")
            )
            bad = [(i, reason, detail) for i in range(len(ids))]
            keep = np.zeros(len(ids), dtype=bool)
            vectors = np.zeros((0, self.dim or 0), np.float32)
        else:
            nonfinite, zero = _bad_rows(vectors, self.reject_zero)
            keep = np.ones(len(ids), dtype=bool)
            bad = [(int(i), "not-finite", "the vector holds NaN or Inf") for i in nonfinite]
            bad += [(int(i), "zero-vector", _ZERO) for i in zero]
            if bad:
                keep[nonfinite] = False
                keep[zero] = False
                vectors = vectors[keep]
        ts = chunk.timestamps
        if ts is None:
            ts = np.full(len(chunk), chunk.read_at, dtype=np.float64)
        if bad:
            ids, ts = ids[keep], ts[keep]
        batch = Batch(
            ids=ids,
            vectors=vectors,
            timestamps=ts,
            partition=chunk.partition,
            position=chunk.position,
        )
        return batch, self._reject(chunk, bad)

    # -- encoded ------------------------------------------------------------------

    def _assemble(self, chunk: Chunk, cols: Columns) -> tuple[Batch, list[Rejected]]:
        n = len(cols.rows)
        rows = np.asarray(cols.rows, dtype=np.int64)
        deleted = np.asarray(cols.deletes, dtype=bool)
        if cols.dense is not None:
            assert cols.id_array is not None
            ids, vectors = cols.id_array, cols.dense
        else:
            ids = np.asarray(cols.ids, dtype=np.int64)
            if cols.buf is not None:
                vectors = cols.buf[:n]
            else:  # deletes only, or nothing
                vectors = np.zeros((n, self.dim or 0), dtype=np.float32)
        keep = np.ones(n, dtype=bool)
        if vectors.shape[1]:
            nonfinite, zero = _bad_rows(vectors, self.reject_zero)
            # A delete's vector row is meaningless.
            nonfinite = nonfinite[~deleted[nonfinite]]
            zero = zero[~deleted[zero]]
            cols.bad.extend(
                (int(rows[j]), "not-finite", "the vector holds NaN or Inf")
                for j in nonfinite.tolist()
            )
            cols.bad.extend((int(rows[j]), "zero-vector", _ZERO) for j in zero.tolist())
            keep[nonfinite] = False
            keep[zero] = False
        ts = (
            chunk.timestamps[rows]
            if chunk.timestamps is not None
            else np.full(n, chunk.read_at, dtype=np.float64)
        )
        if cols.ts:
            for j, t in enumerate(cols.ts):
                if t is not None:
                    ts[j] = t / 1000.0
        if chunk.headers is not None and FORMATS[chunk.format].payload in ("f32", "f16"):
            cols.metadata = self._headers(chunk, rows, keep, cols.bad)
        metadata: list[Any] | None = None
        if any(m is not None for m in cols.metadata):
            metadata = [m for m, k in zip(cols.metadata, keep.tolist(), strict=True) if k]
        if not keep.all():
            ids, vectors, ts, deleted = ids[keep], vectors[keep], ts[keep], deleted[keep]
        batch = Batch(
            ids=ids,
            vectors=vectors,
            timestamps=ts,
            partition=chunk.partition,
            position=chunk.position,
            deleted=deleted if deleted.any() else None,
            keys=cols.keys or None,
            metadata=metadata,
        )
        return batch, self._reject(chunk, cols.bad)


def _bad_rows(
    vectors: npt.NDArray[Any], zero_too: bool
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The rows holding NaN or Inf, and (when ``zero_too``) the all-zero rows.

    One pass for both: a row's squared norm is not finite when the row holds NaN or
    Inf, and 0 when it is all zeros. Huge finite values (the square overflows) and
    tiny ones (it underflows) are flagged too, so flagged rows are checked exactly."""
    if vectors.dtype == np.float32 and vectors.flags.c_contiguous and len(vectors):
        n, d = vectors.shape
        norms = np.empty(n, dtype=np.float32)
        faiss.fvec_norms_L2sqr(faiss.swig_ptr(norms), faiss.swig_ptr(vectors), d, n)  # type: ignore[attr-defined]
        flagged = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    else:
        flagged = np.arange(len(vectors))
    if not len(flagged):
        return flagged, flagged
    rows = vectors[flagged]
    finite = np.isfinite(rows).all(axis=1)
    zero = finite & ~rows.any(axis=1) if zero_too else np.zeros(len(rows), dtype=bool)
    return flagged[~finite], flagged[zero]


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode(
    *,
    dim: int | None = None,
    errors: Rejects | None = None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    reject_zero: bool = False,
    slab_bytes: int = 32 << 20,
    name: str = "decode",
) -> Operator[Chunk, Batch]:
    """Decode chunks into batches.

    Args:
        dim: the expected dimension: give it (the index's, for an existing index)
            so that a stray record of another dimension is rejected rather than
            fixing the stream's dimension; by default the first vector's.
        errors: what to do with bad records; by default raise
            :class:`~streams.errors.BadRecordError` at the first one.
        max_payload_bytes: a larger payload is rejected before it is decoded.
        reject_zero: reject all-zero vectors (they have no direction to normalise).
        slab_bytes: raw payloads (``f32``, ``f16``) are joined into reusable slabs
            of this size, a partition's chunks one after another
            (:mod:`streams.slabs`), so that a batch of consecutive chunks is a
            view of a slab instead of a copy. The ``max_bytes`` of the
            ``batch`` stage that follows makes every full batch one (as the CLI
            does).
        name: the stage name.
    """
    state = _Decoder(name, dim, max_payload_bytes, reject_zero, slab_bytes)
    policy = errors or Rejects("raise")

    async def run(inbox: Inbox[Chunk]) -> AsyncIterator[Batch]:
        while True:
            try:
                chunk = await inbox.receive(timeout=IDLE_SECONDS)
            except TimeoutError:
                # Nothing came for a while: the slabs in flight earlier are done
                # with. An idle stream keeps one.
                state.slabs.trim(state.slabs.slab_bytes)
                continue
            except anyio.EndOfStream:
                return
            if FORMATS[chunk.format].threaded:
                # Record-by-record decoding takes tens of milliseconds per chunk: a
                # worker thread keeps the event loop (searches, metrics, Kafka
                # heartbeats) responsive meanwhile.
                batch, bad = await anyio.to_thread.run_sync(state.decode, chunk)
            else:
                # Vectorised formats take about a millisecond; a thread hop would
                # cost more than it saves (measured on the Kafka f32 path).
                batch, bad = state.decode(chunk)
            await policy.reject(bad)
            if len(batch) or batch.position:
                yield batch

    return Operator(name, run)
