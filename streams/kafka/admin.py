"""Topic administration: used by the tests and the benchmarks (production topics
usually come from the platform's own tooling)."""

from __future__ import annotations

__all__ = ["create_topic"]


async def create_topic(
    bootstrap_servers: str, topic: str, partitions: int = 4, replication: int = 1
) -> None:
    """Create ``topic`` with ``partitions`` partitions.

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
