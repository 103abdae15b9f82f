"""Helpers shared by tests: collect what a source and operators produce."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anyio.abc import TaskGroup

from streams import Operator, Pipeline, Sink, Source
from streams.records import Positions


class Collect(Sink[Any]):
    """A sink that keeps every item."""

    name = "collect"

    def __init__(self, start: Positions | None = None) -> None:
        self.items: list[Any] = []
        self.start = start or {}

    async def open(self, task_group: TaskGroup) -> Positions:
        return self.start

    async def write(self, item: Any) -> None:
        self.items.append(item)

    async def close(self, *, ok: bool) -> None:
        pass


async def collect(
    source: Source, *ops: Operator[Any, Any], start: Positions | None = None
) -> list[Any]:
    """Run ``source | ops...`` and return what reached the end."""
    sink = Collect(start)
    flow: Any = source
    for op in ops:
        flow = flow | op
    pipeline = flow | sink
    assert isinstance(pipeline, Pipeline)
    await pipeline.run()
    return sink.items


def memory_capped(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` that caps a child's address space (``RLIMIT_AS``): a test that
    probes a resource limit then fails with the child's error instead of exhausting
    the machine when the limit regresses."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return cap


def run_cli(
    *args: str,
    limit_bytes: int | None = None,
    timeout: float = 240,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``embedstream ARGS`` in a child process (optionally memory-capped)."""
    return subprocess.run(
        [sys.executable, "-m", "streams.app.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        preexec_fn=memory_capped(limit_bytes) if limit_bytes else None,
    )
