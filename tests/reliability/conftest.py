"""The reliability suite uses the integration suite's real broker."""

from tests.integration.conftest import kafka, kafka_broker, kafka_client, topic_name

__all__ = ["kafka", "kafka_broker", "kafka_client", "topic_name"]
