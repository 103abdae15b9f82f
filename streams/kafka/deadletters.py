"""Dead letters to a Kafka topic (``--dead-letter kafka://HOST:PORT/TOPIC``).

Each dead letter is one JSON message; the key is the dead letter's source partition,
so the letters of one partition stay in order.
"""

from __future__ import annotations

import json
from typing import Any

from streams.deadletters import Rejected
from streams.errors import ConfigError, SourceError
from streams.kafka.url import parse_kafka_url

__all__ = ["KafkaDeadLetters"]


class KafkaDeadLetters:
    """Produces dead letters to ``topic`` (the producer starts on first use)."""

    def __init__(self, bootstrap_servers: str, topic: str, **producer_options: Any) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.producer_options = producer_options
        self._producer: Any = None

    @classmethod
    def from_url(cls, url: str) -> KafkaDeadLetters:
        target = parse_kafka_url(url)
        if len(target.topics) != 1:
            raise ConfigError(f"{url!r}: a dead-letter target names exactly one topic")
        return cls(target.bootstrap_servers, target.topics[0])

    def __repr__(self) -> str:
        return f"<KafkaDeadLetters kafka://{self.bootstrap_servers}/{self.topic}>"

    async def _start(self) -> Any:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers, acks="all", **self.producer_options
        )
        try:
            await producer.start()
        except KafkaError as exc:
            raise SourceError(
                f"kafka://{self.bootstrap_servers}/{self.topic}",
                f"cannot connect the dead-letter producer: {exc}",
            ) from exc
        self._producer = producer
        return producer

    async def write(self, letters: list[Rejected]) -> None:
        producer = self._producer or await self._start()
        futures = [
            await producer.send(
                self.topic, key=r.partition.encode(), value=json.dumps(r.to_json()).encode()
            )
            for r in letters
        ]
        # Wait for the acknowledgements: a dead letter counts once the broker has it.
        for fut in futures:
            await fut

    async def aclose(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
