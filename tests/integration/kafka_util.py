"""Producing and reading test data on the real broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.kafka.admin import create_topic

__all__ = ["create_topic", "produce", "read_all"]


async def produce(
    bootstrap: str,
    topic: str,
    ids: Sequence[int],
    vectors: np.ndarray | None,
    *,
    values: Sequence[bytes | None] | None = None,
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes]] | None] | None = None,
) -> None:
    """Key = decimal id (so an id always lands in the same partition)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20, acks="all"
    )
    await producer.start()
    try:
        futures = []
        for j, rid in enumerate(ids):
            key = keys[j] if keys is not None else str(rid).encode()
            if values is not None:
                value = values[j]
            else:
                assert vectors is not None
                value = vectors[j].astype("<f4").tobytes()
            extra = headers[j] if headers is not None else None
            futures.append(await producer.send(topic, key=key, value=value, headers=extra))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list[dict]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[dict] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < expect and loop.time() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            for msgs in got.values():
                out.extend(json.loads(m.value) for m in msgs)
    finally:
        await consumer.stop()
    return out
