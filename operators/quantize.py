"""quantize: compress batch vectors to uint8 codes before they reach the index.

Kinds:

- ``sq8``: 8-bit scalar quantisation with per-dimension ranges trained on a sample
  (FAISS ``ScalarQuantizer``, ``QT_8bit``): 1 byte per dimension.
- ``binary``: the sign bit of every dimension, packed (no training): 1 bit per
  dimension; searched by Hamming distance, best with ``rerank``.
- ``pq``: a FAISS product quantiser trained on a sample: ``m`` bytes per vector.

A :class:`Codec` holds the trained state. The same codec object is given to
:func:`quantize` and to the sink (``FaissSink(codec=...)``): the operator encodes,
the sink builds indexes that hold the codes, answers float queries (asymmetric
distances for ``sq8`` and ``pq``, the queries' sign bits for ``binary``), and
persists the trained codec in its snapshots, so a restart encodes exactly as before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import faiss
import numpy as np
import numpy.typing as npt

from streams.channel import Inbox
from streams.errors import ConfigError
from streams.operator import Operator
from streams.records import Batch

__all__ = ["KINDS", "Codec", "quantize"]

KINDS = ("sq8", "binary", "pq")


class Codec:
    """A quantiser's configuration and trained state.

    Args:
        kind: ``"sq8"``, ``"binary"`` or ``"pq"``.
        train_size: vectors to collect before training (``sq8``, ``pq``).
        pq_m: bytes per vector for ``pq`` (must divide the dimension).
        metric: ``"ip"`` or ``"l2"``, the metric the codes are searched with.
    """

    def __init__(
        self, kind: str, *, train_size: int = 20_000, pq_m: int = 48, metric: str = "ip"
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown quantizer {kind!r}; use one of {', '.join(KINDS)}")
        self.kind = kind
        self.train_size = max(1, train_size)
        self.pq_m = pq_m
        self.metric = metric
        self.dim: int | None = None
        self._index: Any = None  # the trained, empty FAISS index (not binary)

    def __repr__(self) -> str:
        return f"<Codec {self.kind} dim={self.dim} trained={self.is_trained}>"

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    @property
    def is_trained(self) -> bool:
        return self.dim is not None and (self.binary or self._index is not None)

    @property
    def code_size(self) -> int:
        """Bytes per encoded vector."""
        assert self.dim is not None
        if self.binary:
            return (self.dim + 7) // 8
        return int(self._index.sa_code_size())

    def train(self, sample: npt.NDArray[np.float32]) -> None:
        """Train on ``sample`` (rows x dim), blocking."""
        dim = int(sample.shape[1])
        self.dim = dim
        if self.binary:
            return
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        index: Any
        if self.kind == "sq8":
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, metric)
        else:
            if dim % self.pq_m:
                raise ConfigError(f"pq: {self.pq_m} sub-quantizers do not divide dimension {dim}")
            index = faiss.IndexPQ(dim, self.pq_m, 8, metric)
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        self._index = index

    def encode(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """Codes of the rows of ``x``."""
        if self.binary:
            return np.packbits(x > 0, axis=1)
        codes: npt.NDArray[np.uint8] = self._index.sa_encode(np.ascontiguousarray(x, np.float32))
        return codes

    def empty_index(self) -> Any:
        """A new empty index holding codes, with ids: ``IndexIDMap`` (or its binary
        twin) around a clone of the trained index (no reverse map: see
        :func:`sinks.segment.make_index`)."""
        assert self.dim is not None
        if self.binary:
            return faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.dim))
        return faiss.IndexIDMap(faiss.clone_index(self._index))

    def state(self) -> bytes:
        """The trained state, for snapshots."""
        assert self.dim is not None
        head = f"{self.kind}:{self.dim}:{self.pq_m}:{self.metric}\n".encode()
        body = b"" if self.binary else faiss.serialize_index(self._index).tobytes()
        return head + body

    def restore(self, data: bytes) -> None:
        """Take the trained state from a snapshot.

        Raises:
            ConfigError: the snapshot holds another kind of codec.
        """
        head, _, body = data.partition(b"\n")
        kind, dim, pq_m, metric = head.decode().split(":")
        if kind != self.kind:
            raise ConfigError(f"the index was built with --quantize {kind}, not {self.kind}")
        self.dim, self.pq_m, self.metric = int(dim), int(pq_m), metric
        if not self.binary:
            self._index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))


def quantize(
    codec: Codec, *, keep_floats: bool = False, name: str = "quantize"
) -> Operator[Batch, Batch]:
    """Encode batch vectors with ``codec`` (training it on the first vectors first).

    Args:
        codec: the codec, shared with the sink.
        keep_floats: keep the full-precision vectors on the batch (``floats``) for
            the sink's exact rerank.
        name: the stage name.
    """

    async def run(inbox: Inbox[Batch]) -> AsyncIterator[Batch]:
        pending: list[Batch] = []
        rows = 0
        async for b in inbox:
            if not codec.is_trained:
                pending.append(b)
                rows += len(b)
                if rows < codec.train_size:
                    continue
                sample = np.concatenate([p.vectors for p in pending])[: codec.train_size]
                await anyio.to_thread.run_sync(codec.train, sample)
                for p in pending:
                    yield await anyio.to_thread.run_sync(_encode, codec, p, keep_floats)
                pending = []
                continue
            yield await anyio.to_thread.run_sync(_encode, codec, b, keep_floats)
        if pending:
            sample = np.concatenate([p.vectors for p in pending])
            await anyio.to_thread.run_sync(codec.train, sample)
            for p in pending:
                yield await anyio.to_thread.run_sync(_encode, codec, p, keep_floats)

    return Operator(name, run)


def _encode(codec: Codec, b: Batch, keep_floats: bool) -> Batch:
    floats = b.vectors
    b.vectors = codec.encode(floats) if len(b) else np.zeros((0, codec.code_size), np.uint8)
    if keep_floats:
        b.floats = floats
    return b
