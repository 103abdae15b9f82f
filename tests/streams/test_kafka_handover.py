"""The Kafka source's side of moving partitions between workers, with a fake
consumer (the real broker is in tests/integration/test_scaleout.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from aiokafka.structs import TopicPartition
from anyio.abc import TaskGroup

from streams import ConfigError, Pipeline, Positions, Sink, StageError
from streams.kafka import KafkaSource


class FakeConsumer:
    """Assigns one partition on the first poll, calling the rebalance listener the
    way aiokafka does (an exception from it is only logged), then returns nothing."""

    def __init__(self) -> None:
        self.listener: Any = None
        self.assigned: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        self.listener = listener

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def getmany(self, *partitions: Any, timeout_ms: int = 0, max_records: Any = None) -> Any:
        if not self.assigned:
            self.assigned = {TopicPartition("t", 0)}
            # What aiokafka does with an exception from the listener: log, go on.
            with contextlib.suppress(Exception):
                await self.listener.on_partitions_assigned(self.assigned)
        await anyio.sleep(0.01)
        return {}

    def seek(self, partition: Any, offset: int) -> None:
        self.seeks.append((partition, offset))

    async def seek_to_beginning(self, *partitions: Any) -> None: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...
    def highwater(self, partition: Any) -> int | None:
        return None

    async def commit(self, offsets: Any = None) -> None: ...
    async def end_offsets(self, partitions: Any) -> dict[Any, int]:
        return {}

    async def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0}

    async def committed(self, partition: Any) -> int | None:
        return None


class SharedSink(Sink[Any]):
    """A sink that moves partitions; claiming fails, or returns an offset."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.claimed: list[str] = []

    @property
    def moves_partitions(self) -> bool:
        return True

    async def open(self, task_group: TaskGroup) -> Positions:
        return {}

    async def write(self, item: Any) -> None: ...
    async def close(self, *, ok: bool) -> None: ...

    async def claim(self, partitions: Sequence[str]) -> Positions:
        if self.fail:
            raise ConfigError("shard t-0 holds codes of another trained codec")
        self.claimed.extend(partitions)
        return {p: {"offset": 42} for p in partitions}


@pytest.mark.asyncio
async def test_a_failed_claim_fails_the_source_instead_of_being_swallowed() -> None:
    consumer = FakeConsumer()
    source = KafkaSource("x:1", ["t"], group="g", consumer_factory=lambda: consumer)
    pipeline = source | SharedSink(fail=True)
    assert isinstance(pipeline, Pipeline)
    with anyio.fail_after(10), pytest.raises(StageError, match="another trained codec"):
        await pipeline.run()
    assert consumer.seeks == []


@pytest.mark.asyncio
async def test_a_claimed_partition_resumes_at_the_sinks_offset() -> None:
    consumer = FakeConsumer()
    sink = SharedSink(fail=False)
    source = KafkaSource("x:1", ["t"], group="g", consumer_factory=lambda: consumer, until_idle=0.3)
    pipeline = source | sink
    with anyio.fail_after(10):
        await pipeline.run()
    assert sink.claimed == ["t-0"]
    assert consumer.seeks == [(TopicPartition("t", 0), 42)]


def test_chunk_offsets_with_and_without_gaps() -> None:
    from types import SimpleNamespace

    from streams.kafka import KafkaSource

    source = KafkaSource("127.0.0.1:9", ["t"], group="g")
    tp = SimpleNamespace(topic="t", partition=0)

    def records(offsets: list[int]) -> list[Any]:
        return [
            SimpleNamespace(
                offset=o, timestamp=1000 * o, key=str(o).encode(), value=b"v", headers=()
            )
            for o in offsets
        ]

    def chunk(messages: list[Any]) -> Any:
        (one,) = source._chunks(tp, messages)
        return source._noted(tp, one)

    contiguous = chunk(records([5, 6, 7]))
    assert contiguous.locations.tolist() == [5, 6, 7] and contiguous.position == {"offset": 8}
    # A compacted topic: offsets 6 and 9 are gone.
    gapped = chunk(records([5, 7, 8, 10]))
    assert gapped.locations.tolist() == [5, 7, 8, 10] and gapped.position == {"offset": 11}
    assert gapped.keys == [b"5", b"7", b"8", b"10"]
