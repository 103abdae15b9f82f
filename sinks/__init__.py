"""Sinks: the FAISS sink, its shards, snapshots and search."""

import streams.threads  # noqa: F401 - before FAISS loads OpenMP
from sinks.freshness import SearchTimeout
from sinks.index import FaissSink
from sinks.search import SearchResults, SnapshotView, open_snapshot
from sinks.store import SnapshotStore

__all__ = [
    "FaissSink",
    "SearchResults",
    "SearchTimeout",
    "SnapshotStore",
    "SnapshotView",
    "open_snapshot",
]
