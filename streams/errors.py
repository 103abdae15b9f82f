"""The exceptions embedstream raises.

Everything derives from :class:`EmbedstreamError`, so ``except EmbedstreamError``
catches every failure the library reports on purpose. Messages say what was wrong,
where (stage, file and line or row, partition and offset) and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BadRecordError",
    "ConfigError",
    "EmbedstreamError",
    "SnapshotError",
    "SourceError",
    "StageError",
]


class EmbedstreamError(Exception):
    """Base class of every error embedstream raises on purpose."""


class ConfigError(EmbedstreamError):
    """A pipeline, operator or sink was configured in a way that cannot work."""


class SourceError(EmbedstreamError):
    """A source cannot be read at all (missing file, wrong format, truncated data).

    ``where`` names the file (and row or line) or the topic partition.
    """

    def __init__(self, where: str, problem: str, hint: str = "") -> None:
        self.where = where
        self.problem = problem
        self.hint = hint
        text = f"{where}: {problem}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class BadRecordError(EmbedstreamError):
    """One record is malformed: not decodable, wrong dimension, NaN, missing id...

    Raised only when the pipeline is told to stop at the first bad record; otherwise
    the record goes to the dead-letter sink with the same ``reason``.
    """

    def __init__(self, reason: str, where: str, detail: str) -> None:
        self.reason = reason
        self.where = where
        self.detail = detail
        super().__init__(f"{where}: {reason}: {detail}")


class SnapshotError(EmbedstreamError):
    """A snapshot directory cannot be written or holds no loadable snapshot."""


class StageError(EmbedstreamError):
    """A pipeline stage failed; the pipeline was cancelled.

    ``stage`` is the stage's stable name; ``__cause__`` is the original exception.
    """

    def __init__(self, stage: str, cause: BaseException) -> None:
        self.stage = stage
        self.cause = cause
        super().__init__(f"stage {stage!r} failed: {type(cause).__name__}: {cause}")
