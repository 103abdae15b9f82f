"""How ``embedstream ingest`` turns its options into a pipeline (composition root).

:class:`IngestOptions` owns every default of the command; the CLI builds its
options from it, so a default is written once. Kept apart from the command-line
parsing so it can be called from Python too:
``build_ingest_pipeline(["data.npy"], "idx", IngestOptions(normalize=True))``.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

import operators
from operators import batch, decode
from operators.decode import DEFAULT_MAX_PAYLOAD_BYTES
from operators.quantize import Codec
from sinks import FaissSink
from sinks.drift import DEFAULT_RETRAIN_THRESHOLD
from sinks.merge import DEFAULT_MERGE_FACTOR
from sinks.payloads import parse_payload_index
from sinks.shared import stored_dim
from sinks.store import DEFAULT_GRACE_SECONDS
from streams.deadletters import DeadLetterFile, DeadLetterSink, Rejects
from streams.errors import ConfigError
from streams.files import FORMATS, FileSource
from streams.kafka import KAFKA_FORMATS, KafkaDeadLetters, KafkaSource, parse_kafka_url
from streams.pipeline import Pipeline
from streams.source import Source

__all__ = ["IngestOptions", "build_ingest_pipeline", "dead_letter_sink", "default_worker_name"]


@dataclass(frozen=True)
class IngestOptions:
    """Every option of ``embedstream ingest`` and its default (the CLI's
    ``--option-name`` is the field name with dashes). See the README for what each
    one does; the knobs that trade memory for speed say so in their ``--help``."""

    factory: str | None = None
    metric: str | None = None
    normalize: bool = False
    dim: int | None = None
    batch_size: int = 16384
    batch_bytes: int | None = 8 << 20
    max_latency: float = 0.05
    snapshot_every: float = 60.0
    keep: int = 3
    train_size: int = 50_000
    fmt: str | None = None
    capacity: int = 4
    channel_bytes: int | None = 8 << 20
    group: str | None = None
    worker: str | None = None
    gc_grace: float = DEFAULT_GRACE_SECONDS
    until_idle: float | None = None
    kafka_options: tuple[str, ...] = ()
    kafka_client: str = "auto"
    kafka_fetch_thread: bool = True
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    dead_letter: str | None = None
    on_error: str | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    quantize: str | None = None
    rerank: int = 0
    pq_m: int = 48
    id_offset: int | None = None
    merge_factor: int = DEFAULT_MERGE_FACTOR
    retrain_threshold: float = DEFAULT_RETRAIN_THRESHOLD
    ttl: float | None = None
    payload_index: tuple[str, ...] = ()


def dead_letter_sink(target: str) -> DeadLetterSink:
    """A dead-letter sink from a CLI target: a file path or ``kafka://HOST:PORT/TOPIC``."""
    if target.startswith("kafka://"):
        return KafkaDeadLetters.from_url(target)
    return DeadLetterFile(target)


def _kafka_options(
    pairs: tuple[str, ...], cafile: str | None, certfile: str | None, keyfile: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--kafka-option {pair!r}: expected KEY=VALUE")
        out[key.strip()] = int(value) if value.isdigit() else value
    if cafile or certfile or keyfile:
        from aiokafka.helpers import create_ssl_context

        out["ssl_context"] = create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
        out.setdefault("security_protocol", "SSL")
    return out


def default_worker_name() -> str:
    """``HOST-PID``, with characters a directory name may hold."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname())
    return f"{host.strip('.') or 'host'}-{os.getpid()}"


def _source(sources: list[str], o: IngestOptions) -> Source:
    kafka = [s for s in sources if s.startswith("kafka://")]
    if kafka:
        if len(sources) != 1:
            raise ConfigError(
                "give one kafka:// source (list topics comma-separated), not a mix with files"
            )
        target = parse_kafka_url(kafka[0])
        if o.fmt is not None and o.fmt not in KAFKA_FORMATS:
            raise ConfigError(
                f"--format {o.fmt} is a file format; Kafka values are {', '.join(KAFKA_FORMATS)}"
            )
        if not o.group:
            raise ConfigError("a Kafka source needs --group (the consumer group id)")
        if o.id_offset is not None:
            raise ConfigError(
                "--id-offset is for .npy/.fvecs/.bvecs files; Kafka ids come from keys"
            )
        return KafkaSource(
            target.bootstrap_servers,
            target.topics,
            group=o.group,
            format=o.fmt or "f32",
            until_idle=o.until_idle,
            consumer_options=_kafka_options(
                o.kafka_options, o.ssl_cafile, o.ssl_certfile, o.ssl_keyfile
            ),
            client=o.kafka_client,
            fetch_thread=o.kafka_fetch_thread,
            slab_bytes=o.batch_bytes or 16 << 20,
        )
    if o.fmt is not None and o.fmt not in FORMATS:
        raise ConfigError(
            f"--format {o.fmt} is a Kafka value format; files are {', '.join(FORMATS)}"
        )
    if o.worker:
        raise ConfigError("--worker names a Kafka consumer; file sources have one writer")
    if o.id_offset is not None and all(
        s.lower().endswith((".jsonl", ".ndjson", ".json")) for s in sources
    ):
        raise ConfigError("--id-offset is for .npy/.fvecs/.bvecs files (JSONL records carry ids)")
    return FileSource(
        sources, format=o.fmt, max_line_bytes=o.max_payload_bytes, id_offset=o.id_offset
    )


def build_ingest_pipeline(
    sources: list[str],
    index_dir: str,
    options: IngestOptions | None = None,
    **overrides: Any,
) -> Pipeline:
    """The pipeline ``embedstream ingest SOURCES --index INDEX_DIR`` runs.

    ``overrides`` replace single fields of ``options`` (or of the defaults).

    Raises:
        ConfigError: options that do not fit together or do not fit the index.
    """
    o = dataclasses.replace(options or IngestOptions(), **overrides)
    source = _source(sources, o)
    # Every Kafka worker writes its own manifest chain, so any number of them (one or
    # several with the same --group) can share DIR.
    worker = (o.worker or default_worker_name()) if isinstance(source, KafkaSource) else None
    # The index fixes the dimension, not the first record of this run: a stray
    # record of another size is a dead letter, never the new shape of the stream.
    held = stored_dim(index_dir)
    if o.dim is not None and held is not None and o.dim != held:
        raise ConfigError(f"--dim {o.dim}: the index at {index_dir} holds {held}-d vectors")
    policy = o.on_error or ("dead-letter" if o.dead_letter else "raise")
    if policy == "dead-letter" and not o.dead_letter:
        raise ConfigError("--on-error dead-letter needs --dead-letter PATH|kafka://HOST:PORT/TOPIC")
    rejects = Rejects(policy, dead_letter_sink(o.dead_letter) if o.dead_letter else None)
    flow = source | decode(
        dim=o.dim or held,
        errors=rejects,
        max_payload_bytes=o.max_payload_bytes,
        reject_zero=o.normalize,
        slab_bytes=o.batch_bytes or 16 << 20,
    )
    flow = flow | batch(o.batch_size, max_latency=o.max_latency, max_bytes=o.batch_bytes)
    if o.normalize:
        flow = flow | operators.normalize()
    codec = None
    if o.quantize:
        if o.factory:
            raise ConfigError("--quantize chooses the index type; leave out --factory")
        codec = Codec(o.quantize, train_size=o.train_size, pq_m=o.pq_m, metric=o.metric or "ip")
        flow = flow | operators.quantize(codec, keep_floats=o.rerank > 0)
    elif o.rerank:
        raise ConfigError("--rerank needs --quantize")
    sink = FaissSink(
        index_dir,
        factory=o.factory,
        metric=o.metric,
        snapshot_every=o.snapshot_every,
        keep=o.keep,
        normalize_queries=o.normalize,
        train_size=o.train_size,
        codec=codec,
        rerank=o.rerank,
        worker=worker,
        gc_grace=o.gc_grace,
        merge_factor=o.merge_factor,
        retrain_threshold=o.retrain_threshold,
        ttl=o.ttl,
        payload_index=parse_payload_index(o.payload_index),
    )
    pipeline = flow | sink
    pipeline.capacity = o.capacity
    pipeline.channel_bytes = o.channel_bytes
    pipeline.closing(rejects)
    return pipeline
