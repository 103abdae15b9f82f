"""Raw Kafka records without aiokafka's per-message ``ConsumerRecord``.

aiokafka turns every message into a ``ConsumerRecord`` (a dataclass, the sizes of key
and value, a tuple of headers): most of its per-message cost, measured at about half
of a ``getmany`` loop's time. The source needs only offset, timestamp, key and value,
which aiokafka's own record objects already carry. :func:`raw_records_marker` returns
a key deserializer that marks a consumer as wanting those raw records: only a consumer
made with the marker gets them; every other consumer in the process is unaffected.

The hook wraps ``PartitionRecords._consumer_record`` of aiokafka's fetcher. When a
future aiokafka lacks it, :func:`raw_records_marker` returns ``None`` and the source
takes ``ConsumerRecord`` objects as usual (same attributes, slower).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["raw_records_marker"]

log = logging.getLogger("embedstream.kafka")


class _RawRecords:
    """The marker: a key deserializer that is never called."""

    def __call__(self, key: bytes | None) -> bytes | None:  # pragma: no cover
        return key

    def __repr__(self) -> str:
        return "<embedstream raw records>"


MARKER = _RawRecords()
_installed: bool | None = None


def raw_records_marker() -> Any:
    """The key deserializer that makes a consumer return raw records, or ``None``
    when this aiokafka version cannot do that."""
    global _installed
    if _installed is None:
        _installed = _install()
    return MARKER if _installed else None


def _install() -> bool:
    try:
        from aiokafka.consumer import fetcher
    except ImportError:  # pragma: no cover
        return False
    cls = getattr(fetcher, "PartitionRecords", None)
    original = getattr(cls, "_consumer_record", None)
    if cls is None or original is None:
        log.info("aiokafka has no PartitionRecords._consumer_record; using ConsumerRecords")
        return False
    if getattr(original, "_embedstream", False):
        return True

    def consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if self._key_deserializer is MARKER:
            return record
        return original(self, tp, record)

    consumer_record._embedstream = True  # type: ignore[attr-defined]
    cls._consumer_record = consumer_record
    return True
