"""Naming Kafka things: ``kafka://`` URLs, pipeline partition names, and the lag
of a partition as the source reports it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from streams.errors import ConfigError

__all__ = ["KafkaTarget", "PartitionLag", "after_record", "parse_kafka_url", "partition_name"]


def partition_name(topic: str, partition: int) -> str:
    """The pipeline partition (and shard) name of a topic partition."""
    return f"{topic}-{partition}"


def after_record(*records: Any) -> dict[str, int]:
    """The ``after`` of a search that must see ``records``: aiokafka
    ``RecordMetadata`` (what ``send_and_wait`` returns), or anything with
    ``topic``, ``partition`` and ``offset``. Per partition, the highest offset.

        meta = await producer.send_and_wait("emb", value, key=key)
        hits = await sink.search(q, 10, after=after_record(meta))
    """
    out: dict[str, int] = {}
    for record in records:
        name = partition_name(record.topic, record.partition)
        out[name] = max(out.get(name, -1), int(record.offset))
    return out


@dataclass(frozen=True)
class KafkaTarget:
    """What a ``kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]`` URL names."""

    bootstrap_servers: str
    topics: tuple[str, ...]
    options: dict[str, str]


def parse_kafka_url(url: str) -> KafkaTarget:
    """Parse ``kafka://HOST:PORT/TOPIC[,TOPIC...][?option=value]``.

    Raises:
        ConfigError: the URL has no host, a port that is not a number from 1 to
            65535, or no topic.
    """
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ConfigError(f"{url!r}: expected kafka://HOST:PORT/TOPIC[,TOPIC...]")
    for server in parts.netloc.split(","):
        host, sep, port = server.rpartition(":")
        if not sep or not host.strip("[]") or not port.isascii() or not port.isdigit():
            raise ConfigError(f"{url!r}: {server!r} is not HOST:PORT")
        if not 0 < int(port) < 65536:
            raise ConfigError(f"{url!r}: port {port} is not from 1 to 65535")
    topics = tuple(t for t in parts.path.strip("/").split(",") if t)
    if not topics:
        raise ConfigError(f"{url!r}: names no topic; expected kafka://HOST:PORT/TOPIC")
    return KafkaTarget(parts.netloc, topics, dict(parse_qsl(parts.query)))


@dataclass
class PartitionLag:
    """Consumer lag of one partition."""

    topic: str
    partition: int
    position: int = 0
    highwater: int = 0
    last_timestamp: float = 0.0
    # Its end is known since it was assigned (a fetch response said where it is).
    end_known: bool = False

    @property
    def records(self) -> int:
        return max(self.highwater - self.position, 0)

    def seconds(self, now: float) -> float:
        """How far behind the newest consumed record is, when records are waiting."""
        if self.records == 0 or not self.last_timestamp:
            return 0.0
        return max(now - self.last_timestamp, 0.0)
