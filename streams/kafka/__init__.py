"""Everything that talks to Kafka (and the only part of ``streams`` that imports
aiokafka): the consumer-group source, raw records, ``kafka://`` URLs, topic
administration, the dead-letter producer, and one mapping of client errors.

``from streams.kafka import KafkaSource`` is the usual entry point.
"""

from streams.kafka.admin import create_topic
from streams.kafka.deadletters import KafkaDeadLetters
from streams.kafka.source import KAFKA_FORMATS, KafkaSource
from streams.kafka.url import (
    KafkaTarget,
    PartitionLag,
    after_record,
    parse_kafka_url,
    partition_name,
)

__all__ = [
    "KAFKA_FORMATS",
    "KafkaDeadLetters",
    "KafkaSource",
    "KafkaTarget",
    "PartitionLag",
    "after_record",
    "create_topic",
    "parse_kafka_url",
    "partition_name",
]
