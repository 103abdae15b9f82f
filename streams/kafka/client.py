"""Living with the aiokafka client: waits that return even when aiokafka swallows a
cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

T = TypeVar("T")


async def within(seconds: float, coro: Awaitable[T]) -> T:
    """Await ``coro`` for at most ``seconds``, then abandon it.

    Unlike a cancel scope, this returns even when the awaited aiokafka call swallows
    its cancellation (seen when a consumer is stuck after a broker restart).

    Raises:
        TimeoutError: it did not finish in time.
    """
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        raise TimeoutError(f"gave up after {seconds}s")
    return task.result()
