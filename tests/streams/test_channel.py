from __future__ import annotations

import anyio
import pytest

from streams.channel import Channel

pytestmark = pytest.mark.anyio


async def test_slow_consumer_blocks_producer_and_depth_stays_within_capacity() -> None:
    ch: Channel[int] = Channel("p->c", capacity=3)
    depths: list[int] = []

    async def produce() -> None:
        async with ch.outbox:
            for i in range(40):
                await ch.outbox.send(i)
                depths.append(ch.stats.depth)

    got = []

    async def consume() -> None:
        async with ch.inbox:
            async for item in ch.inbox:
                got.append(item)
                await anyio.sleep(0.002)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        tg.start_soon(consume)

    assert got == list(range(40))
    assert max(depths) <= 3
    s = ch.statistics()
    assert s.peak_depth == 3
    assert s.send_blocked_seconds > 0.02  # the producer waited on the slow consumer
    assert s.items_in == s.items_out == 40 and s.depth == 0


async def test_statistics_add_up_while_items_wait() -> None:
    ch: Channel[bytes] = Channel("a->b", capacity=5)
    for _ in range(4):
        await ch.outbox.send(b"xy")
    await ch.inbox.receive()
    await ch.aclose()
    s = ch.statistics()
    assert s.items_in == s.items_out + s.depth == 4
    assert (s.items_in, s.items_out, s.depth, s.peak_depth) == (4, 1, 3, 4)


async def test_receive_timeout_loses_nothing_and_counts_wait() -> None:
    ch: Channel[int] = Channel("a->b", capacity=1)
    with pytest.raises(TimeoutError):
        await ch.inbox.receive(timeout=0.01)
    await ch.outbox.send(7)
    assert await ch.inbox.receive(timeout=0.01) == 7
    assert ch.stats.receive_wait_seconds >= 0.01
    await ch.aclose()


async def test_end_of_stream_after_drain() -> None:
    ch: Channel[int] = Channel("a->b", capacity=2)
    await ch.outbox.send(1)
    await ch.outbox.aclose()
    await ch.outbox.aclose()  # idempotent
    async with ch.inbox:
        assert [i async for i in ch.inbox] == [1]
    assert "a->b" in repr(ch)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Channel("x", 0)
