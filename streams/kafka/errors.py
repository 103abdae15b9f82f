"""One mapping of Kafka client errors to embedstream's, in the manner of httpcore's
``map_exceptions``: which errors a retry outlives, and how the others reach the user
(a :class:`~streams.errors.SourceError` naming the broker and what to do).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from streams.errors import SourceError

__all__ = ["map_kafka_errors", "transient"]


def transient(exc: Exception) -> bool:
    """Errors a retry can outlive (lost connection, leader election...)."""
    from aiokafka.errors import KafkaConnectionError

    return bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaConnectionError)


@contextlib.contextmanager
def map_kafka_errors(where: str, what: str = "", hint: str = "") -> Iterator[None]:
    """Turn an aiokafka error raised inside the block into a
    :class:`~streams.errors.SourceError` about ``where``: ``what`` followed by the
    client's message, and ``hint`` (what to do)."""
    from aiokafka.errors import KafkaError

    try:
        yield
    except KafkaError as exc:
        raise SourceError(where, f"{what}{exc or type(exc).__name__}", hint) from exc
