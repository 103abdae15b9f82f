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


class _Blob:
    """An item that weighs ``nbytes`` (and can change its mind later)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


async def test_max_bytes_bounds_what_waits_but_an_empty_channel_takes_anything() -> None:
    ch: Channel[_Blob] = Channel("a->b", capacity=10, max_bytes=100)
    assert ch.outbox.try_send(_Blob(500))  # bigger than the bound, but the channel is empty
    assert not ch.outbox.try_send(_Blob(1))  # nothing more while it waits
    assert (await ch.inbox.receive()).nbytes == 500
    assert ch.outbox.try_send(_Blob(60)) and not ch.outbox.try_send(_Blob(41))
    assert ch.outbox.try_send(_Blob(40))
    assert ch.stats.queued_bytes == 100 and ch.stats.depth == 2

    sent = anyio.Event()

    async def send_big() -> None:
        await ch.outbox.send(_Blob(90))
        sent.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(send_big)
        await anyio.sleep(0.01)
        assert not sent.is_set()  # 100 bytes wait: 90 more do not fit
        first = await ch.inbox.receive()
        first.nbytes = 0  # what an item frees is what it weighed when sent
        await anyio.sleep(0.01)
        assert not sent.is_set()  # 40 + 90 > 100
        await ch.inbox.receive()
        await sent.wait()
    s = ch.statistics()
    assert s.queued_bytes == 90 and s.depth == 1
    assert s.bytes_in == 500 + 60 + 40 + 90 and s.bytes_out == 500 + 60 + 40
    assert s.send_blocked_seconds > 0.015
    await ch.aclose()


async def test_a_sender_waiting_for_bytes_learns_that_the_receiver_is_gone() -> None:
    ch: Channel[_Blob] = Channel("a->b", capacity=10, max_bytes=10)
    await ch.outbox.send(_Blob(10))
    broken: list[BaseException] = []

    async def send() -> None:
        try:
            await ch.outbox.send(_Blob(5))
        except anyio.BrokenResourceError as exc:
            broken.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        await anyio.sleep(0.01)
        await ch.inbox.aclose()
    assert len(broken) == 1
    await ch.outbox.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await ch.outbox.send(_Blob(5))
    with pytest.raises(ValueError, match="max_bytes"):
        Channel("x", 1, max_bytes=0)
