"""One registry of input formats, for files, Kafka and the command line.

Each :class:`Format` says how a source reads it (the file suffixes that select it,
or that it is a Kafka value encoding), which payload encoding ``decode`` parses
(:mod:`operators.codecs` holds one decoder per encoding), and whether decoding
runs in a worker thread (per-record parsing takes long enough to stall the event
loop; vectorised formats do not).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FORMATS", "Format", "file_formats", "format_for_suffix", "kafka_formats"]


@dataclass(frozen=True)
class Format:
    """One input format.

    Attributes:
        name: what ``--format`` / ``format=`` takes, and what chunks carry.
        payload: the encoding ``decode`` parses: ``"json"``, ``"msgpack"``, ``"f32"``,
            ``"f16"``, or ``"vectors"`` (already numeric rows, only checked).
        suffixes: file suffixes that select it (a file format when not empty).
        kafka: a Kafka message value encoding.
        threaded: ``decode`` runs it in a worker thread.
    """

    name: str
    payload: str
    suffixes: tuple[str, ...] = ()
    kafka: bool = False
    threaded: bool = False


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("jsonl", "json", (".jsonl", ".ndjson", ".json"), threaded=True),
        Format("npy", "vectors", (".npy",)),
        Format("fvecs", "vectors", (".fvecs",)),
        Format("bvecs", "vectors", (".bvecs",)),
        Format("f32", "f32", kafka=True),
        Format("f16", "f16", kafka=True),
        Format("json", "json", kafka=True, threaded=True),
        Format("msgpack", "msgpack", kafka=True, threaded=True),
    )
}


def file_formats() -> tuple[str, ...]:
    """Names of the formats files can have."""
    return tuple(f.name for f in FORMATS.values() if f.suffixes)


def kafka_formats() -> tuple[str, ...]:
    """Names of the Kafka value encodings."""
    return tuple(f.name for f in FORMATS.values() if f.kafka)


def format_for_suffix(suffix: str) -> Format | None:
    """The file format a suffix (``".jsonl"``) selects, if any."""
    suffix = suffix.lower()
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)
