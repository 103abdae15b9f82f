"""What kind of index a sink writes: dimension, factory, metric, query
normalisation, rerank, and the trained template or codec every shard clones.

A new sink takes it from its arguments; a sink opening a directory adopts what the
directory holds (:meth:`IndexConfig.adopt`) and refuses arguments that disagree with
it. A snapshot writes it into the manifest (:meth:`IndexConfig.manifest`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import faiss

from sinks.durable import read_regular
from sinks.manifest import IndexManifest, RetrainRecord
from sinks.payloads import PayloadSchema
from sinks.segment import make_index
from sinks.store import SnapshotStore
from streams.errors import ConfigError

__all__ = ["DEFAULT_FACTORY", "DEFAULT_METRIC", "IndexConfig"]

DEFAULT_FACTORY = "Flat"
DEFAULT_METRIC = "ip"


class IndexConfig:
    """The index configuration of one sink (and of its directory, once adopted).

    Args:
        path: the directory, for messages.
        factory: the asked-for ``faiss.index_factory`` string (``None``: the default,
            or what the directory holds).
        metric: the asked-for metric (``None``: likewise).
        normalize_queries: vectors are L2-normalised, so queries are too.
        codec: a trained-or-not quantize codec (its codes replace the factory).
        rerank: with a codec, candidates per shard re-scored from stored floats.

    Raises:
        ConfigError: an unknown metric.
    """

    def __init__(
        self,
        path: str,
        *,
        factory: str | None,
        metric: str | None,
        normalize_queries: bool,
        codec: Any,
        rerank: int,
    ) -> None:
        if metric is not None and metric not in ("ip", "l2"):
            raise ConfigError(f"unknown metric {metric!r}: use 'ip' or 'l2'")
        self.path = path
        self.factory_arg = factory
        self.metric_arg = metric
        self.factory = factory or DEFAULT_FACTORY
        self.metric = metric or DEFAULT_METRIC
        self.normalize_queries = normalize_queries
        self.codec = codec
        self.rerank = rerank if codec is not None else 0
        if codec is not None:
            self.factory = {"sq8": "SQ8", "binary": "BFlat"}.get(codec.kind, f"PQ{codec.pq_m}x8")
        self.dim: int | None = None
        # The trained empty index every segment clones, and the objects that hold
        # it (or the codec) in the directory once a snapshot wrote them.
        self.template: Any = None
        self.template_object: str | None = None
        self.codec_object: str | None = None
        # The trained template's SHA-256 (its object name once saved): segments
        # cloned from it carry it, so only segments of one codec generation merge
        # and the older ones are known for re-encoding. None for indexes that are
        # not trained (Flat, HNSW) and for a quantize codec's first generation
        # (a retrained one's is the SHA-256 of its state).
        self.token: str | None = None
        self._template_bytes: bytes | None = None
        # Template and token, replaced together (a writer thread reads both).
        self._current: tuple[Any, str | None] = (None, None)
        # Default search-time parameters (from `embedstream tune`, kept with the index).
        self.search_params: dict[str, int] = {}
        # Expiry (--ttl): given, else what the directory holds.
        self.ttl_arg: float | None = None
        self.ttl: float | None = None
        # Codec generations (retraining on drift, :mod:`sinks.retrain`).
        self.generation = 0
        self.codec_fit: float | None = None
        self.last_retrain: RetrainRecord | None = None
        # True once this sink trained a template of its own: never adopt another.
        self.trained_here = False
        # Declared payload fields: given, plus what the directory declares.
        self.payload_index: PayloadSchema = {}

    def __repr__(self) -> str:
        return f"<IndexConfig {self.factory} {self.metric} dim={self.dim}>"

    def declare(self, fields: PayloadSchema) -> None:
        """Add declared payload fields (:mod:`sinks.payloads`).

        Raises:
            ConfigError: a field is already declared with another type.
        """
        for name, kind in fields.items():
            held = self.payload_index.get(name)
            if held is not None and held != kind:
                raise ConfigError(
                    f"{self.path} declares payload field {name!r} as {held}; you asked for "
                    f"{kind}. Keep {held}, or use a new directory."
                )
        self.payload_index = {**self.payload_index, **fields}

    @property
    def saved(self) -> bool:
        """True once a snapshot holds the template (or codec)."""
        return bool(self.template_object or self.codec_object)

    def check_dim(self, dim: int, partition: str) -> None:
        """Fix the dimension at the first batch; refuse another one later.

        Raises:
            ConfigError: ``dim`` differs from the index's.
        """
        if self.dim is None:
            self.dim = dim
        elif dim != self.dim:
            raise ConfigError(
                f"a batch of partition {partition!r} has dimension {dim}; the "
                f"index at {self.path} has {self.dim}"
            )

    def ensure_template(self) -> Any:
        """The template index, made on first use (untrained for IVF/PQ)."""
        if self.template is None:
            assert self.dim is not None
            if self.codec is not None:
                self.template = self.codec.empty_index()
            else:
                self.set_template(make_index(self.dim, self.factory, self.metric))
        return self.template

    @property
    def retrainable(self) -> bool:
        """True for an index whose codec was trained from data: IVF, PQ, SQ
        factories, and the ``sq8``/``pq`` codecs of a ``quantize`` stage."""
        assert self.dim is not None
        if self.codec is not None:
            return bool(self.codec.trainable)
        return not make_index(self.dim, self.factory, "l2").is_trained

    def set_template(self, index: Any, digest: str | None = None) -> None:
        """Make ``index`` the template new segments clone; a trained one gets its
        token (``digest``: its object name, when read from the directory)."""
        token = None
        self._template_bytes = None
        if index.is_trained and self.codec is None and self.dim and self.retrainable:
            if digest is None:
                self._template_bytes = faiss.serialize_index(index).tobytes()
                digest = hashlib.sha256(self._template_bytes).hexdigest()
            token = digest
        self.template = index
        self.token = token
        self._current = (index, token)

    def retrained(self, index: Any, record: RetrainRecord) -> None:
        """Swap in a retrained template (or quantize codec state): the next codec
        generation."""
        if self.codec is not None:
            self.codec.adopt(index)
            self.template, self.token = self.codec.empty_tagged()
            self.codec_object = None
        else:
            self.set_template(index)
            self.template_object = None
        self.generation = record.generation
        self.codec_fit = None
        self.last_retrain = record
        self.trained_here = True

    def new_index(self) -> Any:
        """A new empty segment index: a clone of the (trained) template."""
        return self.fresh()[0]

    def fresh(self) -> tuple[Any, str | None]:
        """A new empty segment index and the token of the template it clones."""
        if self.codec is not None:
            made: tuple[Any, str | None] = self.codec.empty_tagged()
            return made
        template, token = self._current
        assert template is not None
        return faiss.clone_index(template), token

    def adopt(self, held: IndexManifest, store: SnapshotStore) -> None:
        """Take the configuration (and trained template or codec) the directory
        holds; once this sink wrote its own, only check that they still agree.

        Raises:
            ConfigError: the directory holds another dimension, factory, metric or
                codec than this sink was given.
        """
        if self.dim is not None and held.dim != self.dim:
            raise ConfigError(
                f"{self.path} holds {held.dim}-d vectors; this pipeline has {self.dim}-d ones"
            )
        if self.saved or self.trained_here:
            return  # this worker already trained (and maybe wrote) its own
        if self.codec is not None and self.codec.is_trained and held.codec:
            raise ConfigError(
                f"{self.path} holds codes of a codec trained by another worker, and this "
                "worker trained its own (workers started together on an empty directory); "
                "start one worker until its first snapshot, then the others"
            )
        for arg, key in ((self.factory_arg, "factory"), (self.metric_arg, "metric")):
            if arg is not None and arg != getattr(held, key):
                raise ConfigError(
                    f"{self.path} holds a {held.factory!r} index with metric "
                    f"{held.metric!r}; you asked for {key} {arg!r}. Drop the option to "
                    "keep the existing index, or use a new directory."
                )
        self.factory = held.factory
        self.metric = held.metric
        self.dim = held.dim
        self.normalize_queries = self.normalize_queries or held.normalize_queries
        self.search_params = dict(held.search_params)
        self.ttl = self.ttl_arg if self.ttl_arg is not None else held.ttl
        given, self.payload_index = self.payload_index, dict(held.payload_index)
        self.declare(given)
        self.generation = held.generation
        self.codec_fit = held.codec_fit
        self.last_retrain = held.last_retrain
        self._adopt_codec(held, store)
        if held.template:
            index = faiss.read_index(str(store.objects / held.template))
            self.set_template(index, held.template)
            self.template_object = held.template

    def _adopt_codec(self, held: IndexManifest, store: SnapshotStore) -> None:
        kind = held.quantize
        mine = self.codec.kind if self.codec is not None else None
        if kind != mine:
            raise ConfigError(
                f"{self.path} holds {'codes of --quantize ' + kind if kind else 'float vectors'}"
                f"; this pipeline {'quantizes with ' + mine if mine else 'does not quantize'}. "
                "Use the same setting, or a new directory."
            )
        if self.codec is not None:
            assert held.codec is not None
            self.codec.restore(read_regular(store.objects / held.codec), held.generation)
            self.codec_object = held.codec
            self.template, self.token = self.codec.empty_tagged()
            self.rerank = self.rerank or held.rerank

    def save(self, store: SnapshotStore) -> int:
        """Store the codec or the trained template once (blocking). Returns bytes
        written."""
        if self.codec is not None and self.codec_object is None:
            state = self.codec.state()
            self.codec_object = store.put_object(state)
            assert self.codec.token in (None, self.codec_object), "codec changed after training"
            return len(state)
        if self.template_object is None and self.template is not None and self.codec is None:
            data = self._template_bytes or faiss.serialize_index(self.template).tobytes()
            self.template_object = store.put_object(data)
            assert self.token in (None, self.template_object), "template changed after training"
            return len(data)
        return 0

    def manifest(self) -> IndexManifest:
        """The configuration part of a manifest."""
        assert self.dim is not None
        return IndexManifest(
            dim=self.dim,
            metric=self.metric,
            factory=self.factory,
            normalize_queries=self.normalize_queries,
            template=self.template_object,
            quantize=self.codec.kind if self.codec is not None else None,
            codec=self.codec_object,
            binary=bool(self.codec is not None and self.codec.binary),
            rerank=self.rerank,
            search_params=dict(self.search_params),
            generation=self.generation,
            codec_fit=self.codec_fit,
            last_retrain=self.last_retrain,
            ttl=self.ttl,
            payload_index=dict(self.payload_index),
        )
