"""Living with the aiokafka client: bounded waits and which errors are transient."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["create_topic", "transient", "within"]

T = TypeVar("T")


async def within(seconds: float, coro: Awaitable[T]) -> T:
    """Await ``coro`` for at most ``seconds``, then abandon it.

    Unlike a cancel scope, this returns even when the awaited aiokafka call swallows
    its cancellation (seen when a consumer is stuck after a broker restart).

    Raises:
        TimeoutError: it did not finish in time.
    """
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        raise TimeoutError(f"gave up after {seconds}s")
    return task.result()


def transient(exc: Exception) -> bool:
    """Errors a retry can outlive (lost connection, leader election...)."""
    from aiokafka.errors import KafkaConnectionError

    return bool(getattr(exc, "retriable", False)) or isinstance(exc, KafkaConnectionError)


async def create_topic(
    bootstrap_servers: str, topic: str, partitions: int = 4, replication: int = 1
) -> None:
    """Create ``topic`` with ``partitions`` partitions (used by the tests and the
    benchmarks; production topics usually come from the platform's own tooling).

    Raises:
        aiokafka.errors.TopicAlreadyExistsError: the topic exists.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication)])
    finally:
        await admin.close()
