"""Logging set-up for the CLI: one line per record, and no floods.

When a broker goes away, aiokafka logs the same connection error many times a
second. :class:`RateLimit` lets each distinct message template through at most once
per ``every`` seconds and counts what it held back, so an outage stays readable (and a
slow reader of the log can never block the pipeline).
"""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimit", "configure"]


class RateLimit(logging.Filter):
    """Pass each (logger, template) at most once per ``every`` seconds."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple[str, object], float] = {}
        self._held: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this held back)"
        return True


def configure(verbose: int = 0) -> None:
    """Log to stderr at WARNING (INFO with -v, DEBUG with -vv), rate-limited."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("embedstream.progress").setLevel(logging.INFO)
