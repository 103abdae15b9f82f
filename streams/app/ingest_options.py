"""The options of ``embedstream ingest``: their names, help and checks, declared once
next to nothing else (their defaults are :class:`streams.app.ingest.IngestOptions`,
whose field names they match)."""

from __future__ import annotations

from typing import Any

import click

from sinks.expiry import parse_duration
from streams.app.ingest import IngestOptions
from streams.errors import ConfigError
from streams.files import FORMATS
from streams.kafka import KAFKA_FORMATS

__all__ = ["ingest_options"]

_D = IngestOptions()  # every default of `ingest` is written once, there


def _duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _retrain_threshold(value: float) -> float:
    if value and not value > 1:
        raise click.BadParameter(f"{value} is not above 1 (0 turns retraining off)")
    return value


_DECLARED = [
    click.argument("sources", nargs=-1, required=True, metavar="SOURCE..."),
    click.option(
        "--index",
        "index_dir",
        required=True,
        type=click.Path(file_okay=False),
        help="Snapshot directory of the index (created when missing).",
    ),
    click.option(
        "--factory",
        default=None,
        help="faiss.index_factory string [default: Flat, or what DIR holds].",
    ),
    click.option(
        "--metric",
        type=click.Choice(["ip", "l2"]),
        default=None,
        help="Inner product or L2 [default: ip, or what DIR holds].",
    ),
    click.option("--normalize", is_flag=True, help="L2-normalise vectors (and queries)."),
    click.option(
        "--dim",
        default=None,
        type=click.IntRange(min=1),
        help="Vector dimension of a new index (recommended for Kafka): records of another "
        "dimension are rejected. [default: what DIR holds, else the first record's]",
    ),
    click.option(
        "--batch-size",
        default=_D.batch_size,
        show_default=True,
        type=click.IntRange(min=1),
        help="Rows per batch (larger batches amortise per-batch costs).",
    ),
    click.option(
        "--batch-bytes",
        default=_D.batch_bytes,
        show_default=True,
        type=click.IntRange(min=1),
        help="Also close a batch at this many bytes (bounds memory for wide vectors).",
    ),
    click.option(
        "--max-latency",
        default=_D.max_latency,
        show_default=True,
        type=click.FloatRange(min=0, min_open=True),
        help="Seconds a record may wait for its batch to fill.",
    ),
    click.option(
        "--snapshot-every",
        default=_D.snapshot_every,
        show_default=True,
        type=click.FloatRange(min=0),
        help="Seconds between snapshots (0: only at the end).",
    ),
    click.option(
        "--keep",
        default=_D.keep,
        show_default=True,
        type=click.IntRange(min=1),
        help="Snapshots to keep.",
    ),
    click.option(
        "--train-size",
        default=_D.train_size,
        show_default=True,
        type=click.IntRange(min=1),
        help="Vectors to train on, for index types that need training.",
    ),
    click.option(
        "--format",
        "fmt",
        type=click.Choice([*FORMATS, *KAFKA_FORMATS]),
        default=None,
        help="Files: jsonl|npy|fvecs|bvecs [default: from the suffix]. "
        "Kafka values: f32|f16|json|msgpack [default: f32].",
    ),
    click.option("--group", default=None, help="Kafka consumer group id (required for Kafka)."),
    click.option(
        "--worker",
        default=None,
        metavar="NAME",
        help="Kafka: this process's name among the workers of one --group sharing DIR "
        "[default: HOST-PID].",
    ),
    click.option(
        "--gc-grace",
        default=_D.gc_grace,
        show_default=True,
        type=click.FloatRange(min=0),
        help="Kafka workers sharing DIR: seconds before an unreferenced object (or the "
        "chain of a worker that left) is deleted.",
    ),
    click.option(
        "--until-idle",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Kafka: stop cleanly, with a final snapshot, after this many seconds without "
        "new records.",
    ),
    click.option(
        "--kafka-client",
        "kafka_client",
        type=click.Choice(["auto", "aiokafka", "confluent"]),
        default=_D.kafka_client,
        show_default=True,
        help="The Kafka client: aiokafka, with embedstream's fetch thread over plaintext "
        "connections; confluent is librdkafka (pip install 'embedstream[fast]'), which "
        "parses records in C; auto: aiokafka over plaintext (the fastest here), confluent "
        "over SSL/SASL when it is installed. Same semantics.",
    ),
    click.option(
        "--kafka-fetch-thread/--no-kafka-fetch-thread",
        "kafka_fetch_thread",
        default=_D.kafka_fetch_thread,
        show_default=True,
        help="aiokafka over plaintext: send fetches and receive their responses in a "
        "thread per broker instead of on the event loop (faster; README, 'Two Kafka "
        "clients').",
    ),
    click.option(
        "--kafka-option",
        "kafka_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Passed to the Kafka consumer (aiokafka names; with --kafka-client confluent "
        "also librdkafka's dotted ones), e.g. security_protocol=SASL_SSL, "
        "sasl_mechanism=PLAIN, sasl_plain_username=..., sasl_plain_password=...",
    ),
    click.option("--ssl-cafile", default=None, help="Kafka: CA file for SSL."),
    click.option("--ssl-certfile", default=None, help="Kafka: client certificate for SSL."),
    click.option("--ssl-keyfile", default=None, help="Kafka: client key for SSL."),
    click.option(
        "--dead-letter",
        "dead_letter",
        default=None,
        metavar="PATH|kafka://HOST:PORT/TOPIC",
        help="Write bad records here (JSONL file or Kafka topic) and carry on.",
    ),
    click.option(
        "--on-error",
        type=click.Choice(["raise", "dead-letter"]),
        default=None,
        help="Bad records: stop at the first, or dead-letter them "
        "[default: dead-letter with --dead-letter, else raise].",
    ),
    click.option(
        "--max-payload-bytes",
        default=_D.max_payload_bytes,
        show_default=True,
        type=click.IntRange(min=1),
        help="Reject larger records before decoding them.",
    ),
    click.option(
        "--quantize",
        type=click.Choice(["sq8", "binary", "pq"]),
        default=None,
        help="Keep codes in the index: 8-bit scalar, sign bits, or product quantizer.",
    ),
    click.option(
        "--rerank",
        default=_D.rerank,
        show_default=True,
        type=click.IntRange(min=0),
        help="With --quantize: keep floats on disk and re-score this many candidates exactly.",
    ),
    click.option(
        "--pq-m",
        default=_D.pq_m,
        show_default=True,
        type=click.IntRange(min=1),
        help="Bytes per vector for --quantize pq (must divide the dimension).",
    ),
    click.option(
        "--id-offset",
        default=None,
        type=click.IntRange(min=0),
        help=".npy/.fvecs/.bvecs: id of row 0 of the first file (each further file "
        "continues after the one before; ids of two files never overlap). [default: 0, or "
        "what the index recorded for the file]",
    ),
    click.option(
        "--merge-factor",
        default=_D.merge_factor,
        show_default=True,
        type=click.IntRange(min=0),
        help="Sealed segments merge in tiers of this many, keeping their number "
        "logarithmic in the index size (0 or 1: never merge).",
    ),
    click.option(
        "--ttl",
        default=None,
        metavar="DURATION",
        callback=lambda _ctx, _param, value: _duration(value),
        help="Expire each vector DURATION (7d, 12h, 30m, 3600s) after its event time (the "
        "record's ts, else the Kafka timestamp, else when it is indexed); an upsert renews it. "
        "[default: what DIR holds, else never]",
    ),
    click.option(
        "--payload-index",
        "payload_index",
        multiple=True,
        metavar="FIELD[:TYPE]",
        help="Index this payload field for fast filters; TYPE is keyword (default), int, "
        "float or bool. Repeatable. Other fields are stored and returned too; filters on "
        "them scan.",
    ),
    click.option(
        "--retrain-threshold",
        default=_D.retrain_threshold,
        show_default=True,
        type=float,
        callback=lambda _ctx, _param, value: _retrain_threshold(value),
        help="IVF/PQ/SQ factories: retrain the index (in the background, then re-encode "
        "it) when recent vectors fit its codec this many times worse than the vectors "
        "right after training did; 0: never.",
    ),
    click.option(
        "--capacity",
        default=_D.capacity,
        show_default=True,
        type=click.IntRange(min=1),
        help="Items per channel.",
    ),
    click.option(
        "--channel-bytes",
        default=_D.channel_bytes,
        show_default=True,
        type=click.IntRange(min=1),
        help="Bytes of chunks or batches per channel (an empty channel takes one item of any "
        "size): with a fast source and a slow sink, the memory held between stages. The "
        "default holds one full batch of the default --batch-bytes.",
    ),
    click.option(
        "--serve",
        default=None,
        metavar="HOST:PORT",
        help="Serve /metrics, /healthz, /stats and POST /search while running "
        "(binds 127.0.0.1 unless a host is given).",
    ),
]


def ingest_options(f: Any) -> Any:
    """Decorate the ``ingest`` command with its argument and options, in the order
    ``--help`` lists them."""
    for declare in reversed(_DECLARED):
        f = declare(f)
    return f
