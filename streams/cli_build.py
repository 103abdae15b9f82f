"""How ``embedstream ingest`` turns its options into a pipeline (composition root).

Kept apart from the command-line parsing so it can be called from Python too:
``build_ingest_pipeline(["data.npy"], "idx", normalize=True)``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import operators
from operators import batch, decode
from operators.quantize import Codec
from sinks import FaissSink
from sinks.shared import stored_dim
from streams.deadletters import Rejects, dead_letter_sink
from streams.errors import ConfigError
from streams.files import FORMATS, FileSource
from streams.kafka import KAFKA_FORMATS, KafkaSource, parse_kafka_url
from streams.pipeline import Pipeline
from streams.source import Source

__all__ = ["build_ingest_pipeline"]


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


def build_ingest_pipeline(
    sources: list[str],
    index_dir: str,
    *,
    factory: str | None = None,
    metric: str | None = None,
    normalize: bool = False,
    dim: int | None = None,
    batch_size: int = 16384,
    batch_bytes: int | None = 16 << 20,
    max_latency: float = 0.05,
    snapshot_every: float = 60.0,
    keep: int = 3,
    train_size: int = 50_000,
    fmt: str | None = None,
    capacity: int = 4,
    group: str | None = None,
    worker: str | None = None,
    gc_grace: float = 600.0,
    until_idle: float | None = None,
    kafka_options: tuple[str, ...] = (),
    ssl_cafile: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    dead_letter: str | None = None,
    on_error: str | None = None,
    max_payload_bytes: int = 1 << 20,
    quantize: str | None = None,
    rerank: int = 0,
    pq_m: int = 48,
    id_offset: int | None = None,
) -> Pipeline:
    """The pipeline ``embedstream ingest`` runs."""
    source: Source
    kafka = [s for s in sources if s.startswith("kafka://")]
    if kafka:
        if len(sources) != 1:
            raise ConfigError(
                "give one kafka:// source (list topics comma-separated), not a mix with files"
            )
        target = parse_kafka_url(kafka[0])
        if fmt is not None and fmt not in KAFKA_FORMATS:
            raise ConfigError(
                f"--format {fmt} is a file format; Kafka values are {', '.join(KAFKA_FORMATS)}"
            )
        if not group:
            raise ConfigError("a Kafka source needs --group (the consumer group id)")
        if id_offset is not None:
            raise ConfigError(
                "--id-offset is for .npy/.fvecs/.bvecs files; Kafka ids come from keys"
            )
        source = KafkaSource(
            target.bootstrap_servers,
            target.topics,
            group=group,
            format=fmt or "f32",
            until_idle=until_idle,
            consumer_options=_kafka_options(kafka_options, ssl_cafile, ssl_certfile, ssl_keyfile),
        )
        # Every Kafka worker writes its own manifest chain, so any number of them
        # (one or several with the same --group) can share DIR.
        worker = worker or default_worker_name()
    else:
        if fmt is not None and fmt not in FORMATS:
            raise ConfigError(
                f"--format {fmt} is a Kafka value format; files are {', '.join(FORMATS)}"
            )
        if worker:
            raise ConfigError("--worker names a Kafka consumer; file sources have one writer")
        if id_offset is not None and all(
            s.lower().endswith((".jsonl", ".ndjson", ".json")) for s in sources
        ):
            raise ConfigError(
                "--id-offset is for .npy/.fvecs/.bvecs files (JSONL records carry ids)"
            )
        source = FileSource(
            sources, format=fmt, max_line_bytes=max_payload_bytes, id_offset=id_offset
        )
    # The index fixes the dimension, not the first record of this run: a stray
    # record of another size is a dead letter, never the new shape of the stream.
    held = stored_dim(index_dir)
    if dim is not None and held is not None and dim != held:
        raise ConfigError(f"--dim {dim}: the index at {index_dir} holds {held}-d vectors")
    dim = dim or held
    policy = on_error or ("dead-letter" if dead_letter else "raise")
    if policy == "dead-letter" and not dead_letter:
        raise ConfigError("--on-error dead-letter needs --dead-letter PATH|kafka://HOST:PORT/TOPIC")
    rejects = Rejects(policy, dead_letter_sink(dead_letter) if dead_letter else None)
    flow = source | decode(
        dim=dim, errors=rejects, max_payload_bytes=max_payload_bytes, reject_zero=normalize
    )
    flow = flow | batch(batch_size, max_latency=max_latency, max_bytes=batch_bytes)
    if normalize:
        flow = flow | operators.normalize()
    codec = None
    if quantize:
        if factory:
            raise ConfigError("--quantize chooses the index type; leave out --factory")
        codec = Codec(quantize, train_size=train_size, pq_m=pq_m, metric=metric or "ip")
        flow = flow | operators.quantize(codec, keep_floats=rerank > 0)
    elif rerank:
        raise ConfigError("--rerank needs --quantize")
    sink = FaissSink(
        index_dir,
        factory=factory,
        metric=metric,
        snapshot_every=snapshot_every,
        keep=keep,
        normalize_queries=normalize,
        train_size=train_size,
        codec=codec,
        rerank=rerank,
        worker=worker,
        gc_grace=gc_grace,
    )
    pipeline = flow | sink
    pipeline.capacity = capacity
    pipeline.closing(rejects)
    return pipeline
