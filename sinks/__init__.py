"""Sinks: the FAISS sink, its shards, snapshots and search."""

from sinks.index import FaissSink
from sinks.search import SearchResults, SnapshotView, open_snapshot
from sinks.store import SnapshotStore

__all__ = ["FaissSink", "SearchResults", "SnapshotStore", "SnapshotView", "open_snapshot"]
