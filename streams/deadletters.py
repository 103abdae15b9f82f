"""Rejected records and where they go: raise, or dead-letter and carry on.

A bad record is never dropped silently and never fatal unless asked: the operator
that finds it builds a :class:`Rejected` (what was wrong, which stage, which source
and position, and the original bytes) and hands it to the pipeline's
:class:`Rejects` policy, which either raises :class:`~streams.errors.BadRecordError`
(``on_error="raise"``) or writes a dead letter and counts it per reason. Positions
advance past dead-lettered records like past good ones.

A dead letter is one JSON object per record::

    {"reason": "wrong-dimension", "stage": "decode", "source": "data.jsonl",
     "position": {"line": 12}, "detail": "...", "raw": "<original text>"}

``raw`` is the original text, or ``{"base64": "..."}`` for bytes that are not UTF-8.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio

from streams.errors import BadRecordError, ConfigError

__all__ = ["DeadLetterFile", "DeadLetterSink", "Rejected", "Rejects"]

log = logging.getLogger("embedstream.deadletters")


@dataclass(slots=True)
class Rejected:
    """One record that failed a check."""

    reason: str
    stage: str
    source: str
    partition: str
    location_kind: str
    location: int
    detail: str
    raw: bytes | None

    def where(self) -> str:
        return f"{self.stage}: {self.source} {self.location_kind} {self.location}"

    def to_json(self) -> dict[str, Any]:
        raw: Any = None
        if self.raw is not None:
            try:
                raw = self.raw.decode("utf-8")
            except UnicodeDecodeError:
                raw = {"base64": base64.b64encode(self.raw).decode("ascii")}
        return {
            "reason": self.reason,
            "stage": self.stage,
            "source": self.source,
            "partition": self.partition,
            "position": {self.location_kind: self.location},
            "detail": self.detail,
            "raw": raw,
        }


class DeadLetterSink(Protocol):
    """Where dead letters are written."""

    async def write(self, letters: list[Rejected]) -> None: ...
    async def aclose(self) -> None: ...


class DeadLetterFile:
    """Appends dead letters to a JSONL file (flushed per batch, fsynced on close)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "ab")  # noqa: SIM115 - lives as long as the sink
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot open the dead-letter file: {exc}") from exc

    def __repr__(self) -> str:
        return f"<DeadLetterFile {str(self.path)!r}>"

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._f.flush()

    async def write(self, letters: list[Rejected]) -> None:
        data = b"".join(json.dumps(r.to_json()).encode() + b"\n" for r in letters)
        await anyio.to_thread.run_sync(self._write, data)

    async def aclose(self) -> None:
        if self._f.closed:
            return
        f = self._f

        def close() -> None:
            f.flush()
            os.fsync(f.fileno())
            f.close()

        await anyio.to_thread.run_sync(close)


class Rejects:
    """The pipeline's policy for bad records.

    Args:
        on_error: ``"raise"`` stops at the first bad record with
            :class:`~streams.errors.BadRecordError`; ``"dead-letter"`` writes it to
            ``sink`` and carries on.
        sink: where dead letters go (required for ``"dead-letter"``).
        log_every: log at most one line per reason per this many seconds, so a
            flood of the same bad record does not flood the log (all are counted).
    """

    def __init__(
        self,
        on_error: str = "raise",
        sink: DeadLetterSink | None = None,
        *,
        log_every: float = 10.0,
    ) -> None:
        if on_error not in ("raise", "dead-letter"):
            raise ConfigError(f"on_error must be 'raise' or 'dead-letter', not {on_error!r}")
        if on_error == "dead-letter" and sink is None:
            raise ConfigError("on_error='dead-letter' needs a dead-letter sink")
        self.on_error = on_error
        self.sink = sink
        self.counts: Counter[str] = Counter()
        self._logged: dict[str, float] = {}
        self.log_every = log_every

    def __repr__(self) -> str:
        return f"<Rejects {self.on_error} {dict(self.counts)}>"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def reject(self, letters: list[Rejected]) -> None:
        """Raise for the first letter, or write them all as dead letters."""
        if not letters:
            return
        if self.on_error == "raise":
            first = letters[0]
            raise BadRecordError(first.reason, first.where(), first.detail)
        assert self.sink is not None
        await self.sink.write(letters)
        now = time.monotonic()
        for r in letters:
            self.counts[r.reason] += 1
            if now - self._logged.get(r.reason, -1e9) >= self.log_every:
                self._logged[r.reason] = now
                log.warning(
                    "dead letter (%s so far for %s): %s: %s",
                    self.counts[r.reason],
                    r.reason,
                    r.where(),
                    r.detail,
                )

    async def aclose(self) -> None:
        if self.sink is not None:
            await self.sink.aclose()
