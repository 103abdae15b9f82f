"""The librdkafka adapter's own thread (no broker needed)."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from streams.kafka.confluent import _ConsumerThread

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the Kafka clients run on asyncio


async def test_every_call_runs_on_one_thread_that_can_call_back_into_the_loop() -> None:
    thread = _ConsumerThread()
    seen: set[int] = set()
    loop_thread = threading.get_ident()

    async def in_loop() -> int:
        return threading.get_ident()

    def call() -> int:
        seen.add(threading.get_ident())
        # What a rebalance callback does from inside consume().
        return anyio.from_thread.run(in_loop, token=thread.token)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(thread.run, call)
        assert await thread.run(call) == loop_thread
    finally:
        thread.shutdown()
    assert len(seen) == 1 and loop_thread not in seen


async def test_a_cancelled_call_finishes_and_the_cancel_arrives_after_it() -> None:
    thread = _ConsumerThread()
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.1)
        finished.set()

    try:
        with anyio.move_on_after(0.01) as scope:
            await thread.run(slow)
            pytest.fail("the cancellation was lost")  # pragma: no cover
        assert scope.cancelled_caught and finished.is_set()
    finally:
        thread.shutdown()


def test_auto_picks_the_fetch_thread_over_plaintext_and_librdkafka_over_tls() -> None:
    from streams.app.ingest import IngestOptions
    from streams.kafka import KafkaSource
    from streams.kafka.confluent import confluent_available

    assert IngestOptions().kafka_client == "auto"  # what `embedstream ingest` runs
    source = KafkaSource("127.0.0.1:9", ["t"], group="g", client="auto")
    assert source.client == "aiokafka"  # over plaintext its fetch thread is faster
    secured = KafkaSource(
        "127.0.0.1:9",
        ["t"],
        group="g",
        client="auto",
        consumer_options={"security_protocol": "SASL_SSL"},
    )
    assert secured.client == ("confluent" if confluent_available() else "aiokafka")
    on_loop = KafkaSource("127.0.0.1:9", ["t"], group="g", client="auto", fetch_thread=False)
    assert on_loop.client == secured.client
    # librdkafka's own option names, as the README shows them for TLS.
    dotted = KafkaSource(
        "127.0.0.1:9",
        ["t"],
        group="g",
        client="auto",
        consumer_options={"security.protocol": "SSL", "ssl.ca.location": "ca.pem"},
    )
    assert dotted.client == secured.client


def test_messages_are_grouped_per_partition_in_order_with_errors_apart() -> None:
    from streams.kafka.confluent import _by_partition

    class Message:
        def __init__(self, topic: str, partition: int, offset: int, error: str | None = None):
            self._where = (topic, partition, offset)
            self._error = error

        def topic(self) -> str:
            return self._where[0]

        def partition(self) -> int:
            return self._where[1]

        def offset(self) -> int:
            return self._where[2]

        def error(self) -> str | None:
            return self._error

    got = [
        Message("a", 0, 1),
        Message("a", 0, 2),
        Message("a", 1, 1),
        Message("b", 1, 1),  # another topic, the same partition number
        Message("b", 1, 2),
        Message("a", 0, 3),  # a partition again after others
        Message("a", 0, -1, "broker down"),
    ]
    out, bad = _by_partition(got)
    assert {(tp.topic, tp.partition): [m.offset() for m in ms] for tp, ms in out.items()} == {
        ("a", 0): [1, 2, 3],
        ("a", 1): [1],
        ("b", 1): [1, 2],
    }
    assert [m.error() for m in bad] == ["broker down"]
    assert _by_partition([]) == ({}, [])


async def test_the_sources_digest_runs_in_the_consumer_thread_where_messages_die() -> None:
    """getmany hands each partition's messages to ``digest`` in the consumer's own
    thread, returns what it made, and the messages are freed in that thread."""
    from streams.kafka.confluent import ConfluentConsumer

    died: list[int] = []

    class Message:
        def __init__(self, partition: int, offset: int) -> None:
            self._where = (partition, offset)

        def __del__(self) -> None:
            died.append(threading.get_ident())

        def topic(self) -> str:
            return "t"

        def partition(self) -> int:
            return self._where[0]

        def offset(self) -> int:
            return self._where[1]

        def error(self) -> None:
            return None

        def __len__(self) -> int:
            return 12

    class Librdkafka:  # the part of confluent_kafka.Consumer getmany calls
        def consume(self, num_messages: int, timeout: float) -> list[Message]:
            return [Message(p, o) for p in (0, 1) for o in range(3)]

    consumer = ConfluentConsumer("127.0.0.1:9", "g")
    consumer._consumer = Librdkafka()
    digested: list[int] = []

    def digest(tp: object, messages: list[Message]) -> list[tuple[int, ...]]:
        digested.append(threading.get_ident())
        return [tuple(m.offset() for m in messages)]

    consumer.digest = digest
    try:
        got = await consumer.getmany(timeout_ms=0)
        assert {tp.partition: chunks for tp, chunks in got.items()} == {
            0: [(0, 1, 2)],
            1: [(0, 1, 2)],
        }
        (worker,) = set(digested)
        assert worker != threading.get_ident()
        assert len(died) == 6 and set(died) == {worker}
    finally:
        consumer._thread.shutdown()
