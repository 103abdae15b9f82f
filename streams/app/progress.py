"""Live progress of a running pipeline: a rich display on a terminal, log lines otherwise.

The display polls :meth:`Pipeline.metrics` a few times a second; it never touches the
data path.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams.pipeline import Pipeline, PipelineMetrics

__all__ = ["channel_table", "summary_line", "watch"]

log = logging.getLogger("embedstream.progress")


def _bar(fill: float, width: int = 12) -> str:
    n = round(min(max(fill, 0.0), 1.0) * width)
    return "█" * n + "·" * (width - n)


def channel_table(m: PipelineMetrics, title: str = "") -> Table:
    """A table of every stage and channel: throughput, fill, blocked and waiting time."""
    t = Table(title=title or None, show_edge=False, pad_edge=False)
    for col in (
        "stage",
        "records",
        "rec/s",
        "busy s",
        "channel",
        "fill",
        "peak",
        "blocked s",
        "waited s",
    ):
        t.add_column(col, justify="left" if col in ("stage", "channel", "fill") else "right")
    chans = list(m.channels.values())
    elapsed = max(m.elapsed_seconds, 1e-9)
    for i, (name, s) in enumerate(m.stages.items()):
        row: list[str] = [
            name,
            f"{s.records:,}",
            f"{s.records / elapsed:,.0f}",
            f"{s.busy_seconds:.2f}",
        ]
        if i < len(chans):
            c = chans[i]
            row += [
                c.name,
                f"{_bar(c.fill)} {c.depth}/{c.capacity}",
                str(c.peak_depth),
                f"{c.send_blocked_seconds:.2f}",
                f"{c.receive_wait_seconds:.2f}",
            ]
        else:
            row += ["", "", "", "", ""]
        t.add_row(*row)
    return t


def summary_line(m: PipelineMetrics) -> str:
    """One line: records, rate, index size, lag, freshness, snapshot, bottleneck."""
    stages = list(m.stages.values())
    records = stages[-1].records if stages else 0
    sink = m.sink
    # The rate counts from the first record read to the last one written: startup,
    # a group join and an idle wait before exit are reported apart, not averaged in.
    active = m.active_seconds
    if active is None or records == 0:
        parts = [f"{records:,} records in {m.elapsed_seconds:.2f}s"]
    else:
        rate = records / active if active > 0 else float("inf")
        parts = [f"{records:,} records in {active:.2f}s ({rate:,.0f} records/s)"]
        assert m.first_record_seconds is not None and m.last_record_seconds is not None
        before = [f"{m.first_record_seconds:.2f}s until the first record"]
        joined = m.source.first_assignment_at
        if joined is not None:
            before.append(f"{joined - m.started_at:.2f}s until the group assigned partitions")
        after = m.elapsed_seconds - m.last_record_seconds
        parts.append(
            f"{', '.join(before)}, {after:.2f}s after the last"
            + (" (idle wait)" if m.source.until_idle else "")
        )
    if sink.ntotal is not None:
        parts.append(f"index holds {sink.ntotal:,} vectors")
    lag = m.source.lag
    if lag:
        parts.append(f"lag {sum(v.records for v in lag.values()):,} records")
    p50 = sink.freshness_p50_seconds
    p99 = sink.freshness_p99_seconds
    if p50 == p50:  # not NaN
        parts.append(f"freshness p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    if sink.last_snapshot_seq is not None:
        age = time.time() - (sink.last_snapshot_time or time.time())
        parts.append(f"snapshot {sink.last_snapshot_seq} ({age:.0f}s ago)")
    bottleneck = m.bottleneck()
    if bottleneck:
        parts.append(f"bottleneck {bottleneck}")
    return "; ".join(parts)


def _status(m: PipelineMetrics) -> Any:
    t = channel_table(m)
    line = summary_line(m)
    grid = Table.grid()
    grid.add_row(t)
    grid.add_row(line)
    return grid


async def watch(
    pipeline: Pipeline,
    *,
    interval: float = 0.25,
    console: Console | None = None,
    log_every: float = 10.0,
) -> None:
    """Show the pipeline's progress until cancelled.

    On a terminal: a live table redrawn every ``interval`` seconds. Otherwise one log
    line every ``log_every`` seconds.
    """
    console = console or Console(stderr=True)
    if console.is_terminal and sys.stderr.isatty():
        with Live(
            _status(pipeline.metrics()), console=console, refresh_per_second=4, transient=True
        ) as live:
            while True:
                await anyio.sleep(interval)
                live.update(_status(pipeline.metrics()))
    else:
        while True:
            await anyio.sleep(log_every)
            log.info("%s", summary_line(pipeline.metrics()))
