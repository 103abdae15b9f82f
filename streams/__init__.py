"""embedstream runtime: channels, pipelines, records, sources and errors.

Build a pipeline by composing a source, the ``operators`` package's stages and a
sink from ``sinks`` with ``|``, e.g. ``FileSource("vectors.npy") | decode() |
batch(4096) | normalize() | FaissSink("idx")``, then ``anyio.run(pipeline.run)``.
The core imports nothing from ``operators``, ``sinks``, ``streams.kafka`` or
``streams.app``: Kafka lives in :mod:`streams.kafka`, the command line, HTTP, metrics
exposition and process tuning in :mod:`streams.app`.
"""

from streams.channel import Channel, ChannelStatistics, Inbox, Outbox
from streams.errors import (
    BadRecordError,
    ConfigError,
    EmbedstreamError,
    SnapshotError,
    SourceError,
    StageError,
)
from streams.files import FileSource
from streams.flow import Flow
from streams.histogram import Histogram
from streams.keys import key_id
from streams.operator import Operator
from streams.pipeline import Pipeline, PipelineMetrics, StageStatistics
from streams.records import Batch, Chunk, Position, Positions
from streams.sink import Sink
from streams.source import Source

__version__ = "0.1.0"

__all__ = [
    "BadRecordError",
    "Batch",
    "Channel",
    "ChannelStatistics",
    "Chunk",
    "ConfigError",
    "EmbedstreamError",
    "FileSource",
    "Flow",
    "Histogram",
    "Inbox",
    "Operator",
    "Outbox",
    "Pipeline",
    "PipelineMetrics",
    "Position",
    "Positions",
    "Sink",
    "SnapshotError",
    "Source",
    "SourceError",
    "StageError",
    "StageStatistics",
    "__version__",
    "key_id",
]
