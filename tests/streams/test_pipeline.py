from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from anyio.abc import TaskGroup

from operators import batch, decode
from streams import (
    Batch,
    Chunk,
    ConfigError,
    FileSource,
    Inbox,
    Operator,
    Pipeline,
    Sink,
    Source,
    StageError,
)
from streams.records import Positions
from tests.helpers import Collect

pytestmark = pytest.mark.anyio


class CountingSource(Source):
    """Emits ``n`` numeric chunks of ``rows`` rows, forever when ``n`` is None."""

    name = "count"

    def __init__(self, n: int | None, rows: int = 4) -> None:
        self.n = n
        self.rows = rows
        self.emitted = 0

    async def chunks(self, start: Positions) -> AsyncIterator[Chunk]:
        i = start.get("p", {}).get("offset", 0)
        while self.n is None or i < self.n:
            ids = np.arange(i * self.rows, (i + 1) * self.rows, dtype=np.int64)
            yield Chunk(
                "p",
                "mem",
                "npy",
                {"offset": i + 1},
                ids,
                "row",
                vectors=np.ones((self.rows, 2), np.float32),
                ids=ids,
            )
            self.emitted += 1
            i += 1
            await anyio.lowlevel.checkpoint()


class ListSink(Sink[Any]):
    name = "list"

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.items: list[Any] = []
        self.delay = delay
        self.fail_at = fail_at
        self.closed: bool | None = None

    async def open(self, task_group: TaskGroup) -> Positions:
        return {}

    async def write(self, item: Any) -> None:
        if self.fail_at is not None and len(self.items) == self.fail_at:
            raise ValueError("disk on fire")
        if self.delay:
            await anyio.sleep(self.delay)
        self.items.append(item)

    async def close(self, *, ok: bool) -> None:
        self.closed = ok


def to_batch() -> Operator[Chunk, Batch]:
    async def run(inbox: Inbox[Chunk]) -> AsyncIterator[Batch]:
        async for c in inbox:
            assert c.vectors is not None and c.ids is not None
            yield Batch(c.ids, c.vectors, np.zeros(len(c)), c.partition, c.position)

    return Operator("to-batch", run)


def failing(after: int) -> Operator[Any, Any]:
    async def run(inbox: Inbox[Any]) -> AsyncIterator[Any]:
        n = 0
        async for item in inbox:
            n += 1
            if n > after:
                raise RuntimeError("boom")
            yield item

    return Operator("explode", run)


async def test_compose_and_run_counts_everything() -> None:
    sink = ListSink()
    p = CountingSource(10) | to_batch() | sink
    assert isinstance(p, Pipeline)
    m = await p.run()
    assert len(sink.items) == 10 and sink.closed is True
    assert m.stages["to-batch"].records == 40
    assert m.stages["list"].records == 40
    for c in m.channels.values():
        assert c.items_in == c.items_out + c.depth
        assert c.items_in == 10
    assert list(m.channels) == ["count->to-batch", "to-batch->list"]


async def test_failure_cancels_pipeline_and_names_the_stage() -> None:
    sink = ListSink()
    src = CountingSource(None)  # endless: only cancellation ends it
    p = src | to_batch() | failing(3) | sink
    with pytest.raises(StageError) as err:
        await p.run()
    assert err.value.stage == "explode"
    assert isinstance(err.value.__cause__, RuntimeError)
    assert "explode" in str(err.value) and "boom" in str(err.value)
    assert sink.closed is False


async def test_sink_failure_names_the_sink() -> None:
    p = CountingSource(None) | to_batch() | ListSink(fail_at=2)
    with pytest.raises(StageError) as err:
        await p.run()
    assert err.value.stage == "list"
    assert "disk on fire" in str(err.value)


async def test_stop_drains_in_flight_items_and_closes_ok() -> None:
    sink = ListSink(delay=0.001)
    src = CountingSource(None)
    p = src | to_batch() | sink
    assert isinstance(p, Pipeline)

    async def stopper() -> None:
        while len(sink.items) < 5:
            await anyio.sleep(0.001)
        p.stop()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stopper)
        await p.run()
    assert sink.closed is True
    # Everything the source sent reached the sink: nothing dropped on stop. (Counted
    # by the first channel: on trio a stop can land between the send and the
    # source's own bookkeeping.)
    sent = next(iter(p.metrics().channels.values())).items_in
    assert sent >= src.emitted >= 5
    assert len(sink.items) == sent
    assert [b.position["offset"] for b in sink.items] == list(range(1, sent + 1))


async def test_cancellation_from_outside_propagates() -> None:
    p = CountingSource(None) | to_batch() | ListSink(delay=0.001)
    with anyio.move_on_after(0.05) as scope:
        await p.run()
    assert scope.cancelled_caught


async def test_pipeline_runs_once_and_needs_a_source() -> None:
    p = CountingSource(1) | ListSink()
    assert isinstance(p, Pipeline)
    await p.run()
    with pytest.raises(ConfigError):
        await p.run()
    with pytest.raises(ConfigError):
        _ = to_batch() | ListSink()


async def test_duplicate_stage_names_get_suffixes() -> None:
    p = CountingSource(2) | to_batch() | failing(100) | failing(100) | ListSink()
    assert isinstance(p, Pipeline)
    assert p.stage_names == ["count", "to-batch", "explode", "explode-2", "list"]
    assert "count" in repr(p)


async def test_slow_sink_is_the_bottleneck_and_blocks_upstream() -> None:
    p = CountingSource(60) | to_batch() | ListSink(delay=0.003)
    assert isinstance(p, Pipeline)
    m = await p.run()
    chans = list(m.channels.values())
    assert chans[-1].send_blocked_seconds > 0.05
    assert m.bottleneck() == "list"


def test_the_summary_rate_counts_from_the_first_to_the_last_record() -> None:
    from streams.app.progress import summary_line
    from streams.pipeline import PipelineMetrics, StageStatistics
    from streams.statistics import SourceStatistics

    m = PipelineMetrics(
        elapsed_seconds=3.07,
        stages={
            "kafka": StageStatistics("kafka"),
            "faiss": StageStatistics("faiss", records=200_000),
        },
        channels={},
        source=SourceStatistics(until_idle=2.0, first_assignment_at=100.4),
        first_record_seconds=0.5,
        last_record_seconds=1.0,
        started_at=100.0,
    )
    line = summary_line(m)
    assert line.startswith("200,000 records in 0.50s (400,000 records/s)"), line
    assert "0.50s until the first record, 0.40s until the group assigned partitions" in line
    assert "2.07s after the last (idle wait)" in line


async def test_metrics_time_the_first_and_last_record(make_npy) -> None:
    path, _ = make_npy(3000, 4)
    p = FileSource(path, chunk_bytes=4 * 4 * 1000) | decode() | batch(1000) | Collect()
    m = await p.run()
    assert m.first_record_seconds is not None and m.last_record_seconds is not None
    assert 0 <= m.first_record_seconds <= m.last_record_seconds <= m.elapsed_seconds
