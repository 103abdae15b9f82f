"""The reliability suite uses the integration suite's real broker, and runs on every
consumption path: aiokafka with its fetch thread (plaintext), aiokafka fetching on
the event loop (what it does over TLS and SASL), and librdkafka."""

import pytest

from tests.integration.conftest import kafka, kafka_broker, topic_name

__all__ = ["kafka", "kafka_broker", "kafka_client", "topic_name"]


@pytest.fixture(params=["aiokafka", "aiokafka-loop", "confluent"])
def kafka_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on each consumption path: ``ingest_argv`` turns it into
    ``--kafka-client`` (and ``--no-kafka-fetch-thread``) flags."""
    monkeypatch.setenv("EMBEDSTREAM_TEST_KAFKA_CLIENT", request.param)
    return str(request.param)
