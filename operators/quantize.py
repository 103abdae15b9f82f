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

Trained codecs (``sq8``, ``pq``) have generations: when the stream drifts away from
what the codec was trained on, the sink trains a new state and :meth:`Codec.adopt`
swaps it in (:mod:`sinks.retrain`). Every batch says which generation encoded it
(:attr:`streams.records.Batch.codec_tag`) and carries its float vectors along, so
the sink measures the drift on the floats and re-encodes a batch that was encoded
by the generation before a swap.
"""

from __future__ import annotations

import hashlib
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
        # (generation, token, trained empty FAISS index), replaced as one: the
        # operator encodes in a worker thread while the sink may adopt a new one.
        # The token names a retrained generation's state (None for the first).
        self._state: tuple[int, str | None, Any] = (0, None, None)
        self.retrains = True
        """Whether a sink may retrain it (a sink with ``retrain_threshold=0`` says
        no): only then do encoded batches carry their floats to the sink."""

    def __repr__(self) -> str:
        return f"<Codec {self.kind} dim={self.dim} trained={self.is_trained}>"

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    @property
    def is_trained(self) -> bool:
        return self.dim is not None and (self.binary or self._state[2] is not None)

    @property
    def trainable(self) -> bool:
        """True for codecs trained from data (``sq8``, ``pq``), which can drift."""
        return not self.binary

    @property
    def generation(self) -> int:
        """How many times the codec was retrained (0: its first training)."""
        return self._state[0]

    @property
    def token(self) -> str | None:
        """The current generation's name: the SHA-256 of its :meth:`state` for a
        retrained codec (segments of it record it), None for the first training."""
        return self._state[1]

    @property
    def tag(self) -> tuple[int, str | None]:
        """(generation, token) of the current state."""
        generation, token, _ = self._state
        return generation, token

    @property
    def code_size(self) -> int:
        """Bytes per encoded vector."""
        assert self.dim is not None
        if self.binary:
            return (self.dim + 7) // 8
        return int(self._state[2].sa_code_size())

    def trained_index(self, sample: npt.NDArray[np.float32]) -> Any:
        """A new trained empty FAISS index for ``sample`` (rows x dim), blocking;
        the codec itself is not changed (see :meth:`adopt`).

        Raises:
            ConfigError: ``pq`` sub-quantizers that do not divide the dimension.
        """
        assert not self.binary
        dim = int(sample.shape[1])
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        index: Any
        if self.kind == "sq8":
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, metric)
        else:
            if dim % self.pq_m:
                raise ConfigError(f"pq: {self.pq_m} sub-quantizers do not divide dimension {dim}")
            index = faiss.IndexPQ(dim, self.pq_m, 8, metric)
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        return index

    def train(self, sample: npt.NDArray[np.float32]) -> None:
        """Train on ``sample`` (rows x dim), blocking: the first generation."""
        dim = int(sample.shape[1])
        if self.binary:
            self.dim = dim
            return
        index = self.trained_index(sample)
        self.dim = dim
        self._state = (0, None, index)

    def adopt(self, index: Any) -> tuple[int, str | None]:
        """Make ``index`` (from :meth:`trained_index`) the next generation; batches
        encoded from now on say so. Returns its (generation, token)."""
        assert self.dim is not None and not self.binary
        generation = self._state[0] + 1
        token = hashlib.sha256(self._state_bytes(index)).hexdigest()
        self._state = (generation, token, index)
        return generation, token

    def encode(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """Codes of the rows of ``x``."""
        return self.encode_tagged(x)[0]

    def encode_tagged(
        self, x: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.uint8], tuple[int, str | None]]:
        """Codes of the rows of ``x`` and the (generation, token) that made them."""
        generation, token, index = self._state
        if self.binary:
            return np.packbits(x > 0, axis=1), (generation, token)
        codes: npt.NDArray[np.uint8] = index.sa_encode(np.ascontiguousarray(x, np.float32))
        return codes, (generation, token)

    def empty_index(self) -> Any:
        """A new empty index holding codes, with ids: ``IndexIDMap`` (or its binary
        twin) around a clone of the trained index (no reverse map: see
        :func:`sinks.segment.make_index`)."""
        return self.empty_tagged()[0]

    def empty_tagged(self) -> tuple[Any, str | None]:
        """:meth:`empty_index` and the token of the generation it holds codes of."""
        assert self.dim is not None
        _, token, index = self._state
        if self.binary:
            return faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.dim)), token
        return faiss.IndexIDMap(faiss.clone_index(index)), token

    def _state_bytes(self, index: Any) -> bytes:
        head = f"{self.kind}:{self.dim}:{self.pq_m}:{self.metric}\n".encode()
        body = b"" if self.binary else faiss.serialize_index(index).tobytes()
        return head + body

    def state(self) -> bytes:
        """The trained state, for snapshots."""
        assert self.dim is not None
        return self._state_bytes(self._state[2])

    def restore(self, data: bytes, generation: int = 0) -> None:
        """Take the trained state from a snapshot; ``generation``: the one the
        snapshot names (a retrained state's token is its SHA-256).

        Raises:
            ConfigError: the snapshot holds another kind of codec.
        """
        head, _, body = data.partition(b"\n")
        kind, dim, pq_m, metric = head.decode().split(":")
        if kind != self.kind:
            raise ConfigError(f"the index was built with --quantize {kind}, not {self.kind}")
        self.dim, self.pq_m, self.metric = int(dim), int(pq_m), metric
        index = None if self.binary else faiss.deserialize_index(np.frombuffer(body, np.uint8))
        token = hashlib.sha256(data).hexdigest() if generation else None
        self._state = (generation, token, index)


def quantize(
    codec: Codec, *, keep_floats: bool = False, name: str = "quantize"
) -> Operator[Batch, Batch]:
    """Encode batch vectors with ``codec`` (training it on the first vectors first).

    Args:
        codec: the codec, shared with the sink.
        keep_floats: keep the full-precision vectors on the batch (``floats``) for
            the sink's exact rerank. Trained codecs (``sq8``, ``pq``) keep them on
            the batch anyway while a sink may retrain them (:attr:`Codec.retrains`),
            for its drift check and re-encoding; the sink stores them only with
            ``rerank``.
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
    if len(b):
        b.vectors, b.codec_tag = codec.encode_tagged(floats)
    else:
        b.vectors, b.codec_tag = np.zeros((0, codec.code_size), np.uint8), codec.tag
    if keep_floats or (codec.trainable and codec.retrains):
        b.floats = floats
    return b
