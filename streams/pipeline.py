"""The runtime: a source, operators and a sink joined by bounded channels.

Each stage runs as one task in one anyio task group. A failing stage cancels the
others and the pipeline raises a single :class:`~streams.errors.StageError` naming
it. :meth:`Pipeline.stop` (or SIGINT/SIGTERM when the pipeline handles signals)
stops only the source: what is already in the channels drains through every stage,
the sink flushes and takes its final snapshot. A second signal cancels at once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from streams.channel import DEFAULT_CAPACITY, Channel, ChannelStatistics, Inbox, Outbox
from streams.errors import ConfigError, EmbedstreamError, StageError
from streams.records import Chunk, Positions
from streams.statistics import SinkStatistics, SourceStatistics

if TYPE_CHECKING:
    from streams.operator import Operator
    from streams.sink import Sink
    from streams.source import Source

__all__ = ["Pipeline", "PipelineMetrics", "StageStatistics"]


@dataclass(slots=True)
class StageStatistics:
    """What one stage did.

    ``busy_seconds`` is time spent working, excluding time waiting for input
    (counted by the input channel) and time blocked on output (counted by the
    output channel).
    """

    name: str
    items_in: int = 0
    items_out: int = 0
    records: int = 0
    busy_seconds: float = 0.0


@dataclass(slots=True)
class PipelineMetrics:
    """A snapshot of a pipeline's statistics, from :meth:`Pipeline.metrics`."""

    elapsed_seconds: float
    stages: dict[str, StageStatistics]
    channels: dict[str, ChannelStatistics]
    sink: SinkStatistics = field(default_factory=SinkStatistics)
    source: SourceStatistics = field(default_factory=SourceStatistics)
    first_record_seconds: float | None = None
    """Seconds from the start of the run until the source emitted its first record
    (startup, opening the index, a Kafka group join); ``None`` before one."""
    last_record_seconds: float | None = None
    """Seconds from the start until the sink had written the last record so far."""
    started_at: float = 0.0
    """``time.perf_counter()`` at the start of the run."""

    @property
    def active_seconds(self) -> float | None:
        """From the first record read to the last record written: the time the
        records took, without startup or an idle wait at the end."""
        if self.first_record_seconds is None or self.last_record_seconds is None:
            return None
        return max(self.last_record_seconds - self.first_record_seconds, 0.0)

    def bottleneck(self) -> str | None:
        """The stage holding the pipeline back, if any.

        That is the stage whose input channel is the fullest while its output is not
        full (the sink has no output). ``None`` before anything flowed.
        """
        names = list(self.stages)
        chans = list(self.channels.values())
        best: tuple[float, str] | None = None
        for i, name in enumerate(names[1 : len(chans) + 1], start=1):
            inbox = chans[i - 1]
            outbox_fill = chans[i].fill if i < len(chans) else 0.0
            if outbox_fill >= 1.0:
                continue
            score = inbox.fill + inbox.send_blocked_seconds / (1.0 + self.elapsed_seconds)
            if best is None or score > best[0]:
                best = (score, name)
        if best is None or best[0] <= 0.0:
            return None
        return best[1]


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _records(item: object) -> int:
    try:
        return len(item)  # type: ignore[arg-type]
    except TypeError:
        return 1


class Pipeline:
    """A runnable pipeline: ``source | op | ... | sink``.

    Args:
        source: where chunks come from.
        operators: the stages between source and sink, in order.
        sink: the last stage.
        capacity: default capacity of every channel (see
            :mod:`streams.channel` for how to choose it).
        channel_bytes: most bytes of items every channel holds (``None``: bounded
            by ``capacity`` alone).
    """

    def __init__(
        self,
        source: Source,
        operators: list[Operator[Any, Any]],
        sink: Sink[Any],
        *,
        capacity: int = DEFAULT_CAPACITY,
        channel_bytes: int | None = None,
    ) -> None:
        self.source = source
        self.operators = operators
        self.sink = sink
        self.capacity = capacity
        self.channel_bytes = channel_bytes
        names = _unique_names([source.name, *(o.name for o in operators), sink.name])
        self._stage_names = names
        self._stages = {n: StageStatistics(n) for n in names}
        # Channels are made when the pipeline runs (they hold open streams).
        self._channels: list[Channel[Any]] = []
        self._resources: list[Any] = []
        self._stop_requested = False
        self._source_scope: anyio.CancelScope | None = None
        self._started: float | None = None
        self._finished: float | None = None
        self._last_record: float | None = None
        self._ran = False

    # -- control -----------------------------------------------------------------

    @property
    def resources(self) -> list[Any]:
        """What :meth:`closing` registered (dead-letter policies, ...)."""
        return list(self._resources)

    def closing(self, resource: Any) -> Any:
        """Close ``resource`` (anything with ``async aclose()``, such as a dead-letter
        policy) when the run ends, after the sink; returns it."""
        self._resources.append(resource)
        return resource

    def stop(self) -> None:
        """Stop reading the source; everything already read drains to the sink.

        Safe to call from any task of the pipeline's event loop, more than once.
        """
        self._stop_requested = True
        if self._source_scope is not None:
            self._source_scope.cancel()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop_requested

    def metrics(self) -> PipelineMetrics:
        """The statistics of every stage and channel, and the source's and sink's."""
        now = time.perf_counter()
        start = self._started if self._started is not None else now
        end = self._finished if self._finished is not None else now
        stages = {n: StageStatistics(**_fields(s)) for n, s in self._stages.items()}
        if self._channels:
            # A source's output is what entered its channel.
            first = self._channels[0].stats
            src = stages[self._stage_names[0]]
            src.items_out, src.records = first.items_in, first.records_in
            src.busy_seconds = max(end - start - first.send_blocked_seconds, 0.0)
        first_at = self._channels[0].stats.first_record_at if self._channels else None
        return PipelineMetrics(
            elapsed_seconds=end - start,
            stages=stages,
            channels={c.name: c.statistics() for c in self._channels},
            sink=self.sink.statistics(),
            source=self.source.statistics(),
            first_record_seconds=None if first_at is None else first_at - start,
            last_record_seconds=None if self._last_record is None else self._last_record - start,
            started_at=start,
        )

    @property
    def channels(self) -> list[Channel[Any]]:
        """The channels in data-path order (empty until :meth:`run`)."""
        return list(self._channels)

    @property
    def stage_names(self) -> list[str]:
        """The stable stage names in data-path order."""
        return list(self._stage_names)

    def __repr__(self) -> str:
        parts = []
        for i, name in enumerate(self._stage_names):
            parts.append(name)
            if i < len(self._channels):
                c = self._channels[i].stats
                parts.append(f"[{c.depth}/{c.capacity}]")
        return f"<Pipeline {' '.join(parts)}>"

    # -- running -----------------------------------------------------------------

    async def run(self, *, handle_signals: bool = False) -> PipelineMetrics:
        """Run until the source is exhausted or :meth:`stop` is called.

        Args:
            handle_signals: stop gracefully on SIGINT/SIGTERM (a second signal
                cancels at once). Only from the main thread.

        Returns:
            The final metrics.

        Raises:
            StageError: a stage failed; ``stage`` names it, ``__cause__`` says why.
            ConfigError: the pipeline was already run.
        """
        if self._ran:
            raise ConfigError("a pipeline runs once; build a new one to run again")
        self._ran = True
        self._channels = self._make_channels()
        self._started = time.perf_counter()
        failure: BaseException | None = None
        try:
            async with anyio.create_task_group() as outer:
                if handle_signals:
                    outer.start_soon(self._watch_signals, outer)
                failure = await self._run_stages(outer)
                outer.cancel_scope.cancel()
        finally:
            self._finished = time.perf_counter()
            with anyio.CancelScope(shield=True):
                for c in self._channels:
                    await c.aclose()
                for r in self._resources:
                    try:
                        await r.aclose()
                    except Exception as exc:
                        if failure is None:
                            failure = exc
        if failure is not None:
            raise failure
        return self.metrics()

    def _make_channels(self) -> list[Channel[Any]]:
        names = self._stage_names
        # Channel 0 carries the source's chunks; channel i (i >= 1) carries the
        # output of operator i-1, whose own capacity setting wins.
        out: list[Channel[Any]] = []
        for i in range(len(self.operators) + 1):
            own = self.operators[i - 1].capacity if i > 0 else None
            out.append(
                Channel(f"{names[i]}->{names[i + 1]}", own or self.capacity, self.channel_bytes)
            )
        return out

    async def _run_stages(self, outer: TaskGroup) -> BaseException | None:
        sink_name = self._stage_names[-1]
        try:
            start = await self.sink.open(outer)
        except Exception as exc:
            return _stage_error(sink_name, exc)
        self.sink.add_snapshot_listener(self.source.on_snapshot)
        if self.sink.moves_partitions:
            self.source.hand_partitions_to(self.sink)
        errors: list[BaseException] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._run_source, start, self._channels[0].outbox)
                for i, op in enumerate(self.operators):
                    tg.start_soon(
                        self._run_operator,
                        op,
                        self._stage_names[i + 1],
                        self._channels[i].inbox,
                        self._channels[i + 1].outbox,
                    )
                tg.start_soon(self._run_sink, self._channels[-1].inbox)
        except BaseExceptionGroup as group:
            errors = _flatten(group)
        ok = not errors
        with anyio.CancelScope(shield=True):
            try:
                await self.sink.close(ok=ok)
            except Exception as exc:
                errors.append(_stage_error(sink_name, exc))
        if not errors:
            return None
        first = errors[0]
        for other in errors[1:]:
            first.add_note(f"also: {other}")
        return first

    async def _run_source(self, start: Positions, outbox: Outbox[Chunk]) -> None:
        name = self._stage_names[0]
        try:
            async with outbox:
                with anyio.CancelScope() as scope:
                    self._source_scope = scope
                    if self._stop_requested:
                        scope.cancel()
                    await self.source.run(start, outbox)
        except anyio.BrokenResourceError as exc:
            await _cancelled_first()
            raise _stage_error(name, exc) from exc
        except Exception as exc:
            raise _stage_error(name, exc) from exc

    async def _run_operator(
        self, op: Operator[Any, Any], name: str, inbox: Inbox[Any], outbox: Outbox[Any]
    ) -> None:
        stats = self._stages[name]
        try:
            async with inbox, outbox:
                items = op(inbox)
                try:
                    await self._pump(items, stats, inbox, outbox)
                finally:
                    await _aclose(items)
        except anyio.BrokenResourceError as exc:
            await _cancelled_first()
            raise _stage_error(name, exc) from exc
        except Exception as exc:
            raise _stage_error(name, exc) from exc

    @staticmethod
    async def _pump(
        items: AsyncIterator[Any],
        stats: StageStatistics,
        inbox: Inbox[Any] | None,
        outbox: Outbox[Any],
    ) -> None:
        clock = time.perf_counter
        while True:
            waited = inbox.wait_seconds if inbox is not None else 0.0
            t0 = clock()
            try:
                item = await items.__anext__()
            except StopAsyncIteration:
                break
            finally:
                waited = (inbox.wait_seconds if inbox is not None else 0.0) - waited
                stats.busy_seconds += max(clock() - t0 - waited, 0.0)
            stats.items_out += 1
            stats.records += _records(item)
            await outbox.send(item)
        if inbox is not None:
            stats.items_in = inbox._stats.items_out

    async def _run_sink(self, inbox: Inbox[Any]) -> None:
        name = self._stage_names[-1]
        stats = self._stages[name]
        try:
            async with inbox:
                await self._drain(inbox, stats)
        except Exception as exc:
            raise _stage_error(name, exc) from exc

    async def _drain(self, inbox: Inbox[Any], stats: StageStatistics) -> None:
        clock = time.perf_counter
        async for item in inbox:
            stats.items_in += 1
            t0 = clock()
            await self.sink.write(item)
            t1 = clock()
            stats.busy_seconds += t1 - t0
            n = _records(item)
            if n:
                stats.records += n
                self._last_record = t1

    async def _watch_signals(self, outer: TaskGroup) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if not self._stop_requested:
                    self.stop()
                else:
                    outer.cancel_scope.cancel()
                    return


async def _cancelled_first() -> None:
    """Raise the pending cancellation, if any. When the pipeline is cancelled from
    outside, a stage can find the next stage's inbox already closed (trio wakes a
    blocked send that way before it delivers the cancellation): that is the
    cancellation, not a broken stage."""
    await anyio.lowlevel.checkpoint()


async def _aclose(it: AsyncIterator[Any]) -> None:
    # Async generators are finalised now, not whenever the GC gets to them.
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}


def _stage_error(stage: str, exc: BaseException) -> BaseException:
    if isinstance(exc, StageError):
        return exc
    if isinstance(exc, (EmbedstreamError, Exception)):
        err = StageError(stage, exc)
        err.__cause__ = exc
        return err
    return exc


def _flatten(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_flatten(exc))
        else:
            out.append(exc)
    # A stage's own error first; errors that follow from it (closed channels) after.
    out.sort(key=lambda e: 0 if isinstance(e, StageError) else 1)
    return out
