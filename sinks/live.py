"""A read-only view of a snapshot directory that follows new snapshots.

``embedstream serve DIR`` answers searches from the latest complete snapshot while
other processes ingest into DIR: it checks ``CURRENT`` every so often and, when it
changed, loads the new snapshot in a worker thread (verifying it, falling back as a
restart would) and swaps it in. Searches in flight finish on the view they started
with.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sinks.durable import read_regular
from sinks.freshness import After, SearchTimeout, check_after, position_value, reached, unreached
from sinks.search import SearchResults, SnapshotView, open_snapshot
from sinks.store import chain_names, chain_root
from streams.errors import SnapshotError
from streams.records import Position

__all__ = ["LiveView"]

log = logging.getLogger("embedstream.serve")


class LiveView:
    """The latest snapshot of ``root``, reloaded when a newer one is committed.

    Raises:
        SnapshotError: the directory holds no loadable snapshot at start.
    """

    def __init__(self, root: str | os.PathLike[str], *, mmap: bool = True) -> None:
        self.root = str(root)
        self.mmap = mmap
        self.view: SnapshotView = open_snapshot(root, mmap=mmap)
        self.loaded_at = time.time()
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._current = self._current_text()

    def __repr__(self) -> str:
        return f"<LiveView {self.root!r} seq={self.view.combined.seq}>"

    def _current_text(self) -> str:
        # Every chain's CURRENT: a new snapshot of any worker changes it.
        parts = []
        for chain in chain_names(self.root):
            try:
                # Bytes, compared as they are: a damaged CURRENT is a change too.
                data = read_regular(chain_root(Path(self.root), chain) / "CURRENT")[:64]
            except OSError:
                continue
            parts.append(f"{chain}:{data!r}")
        return "|".join(parts)

    async def follow(self, every: float = 1.0) -> None:
        """Reload whenever a ``CURRENT`` changes (runs until cancelled)."""
        while True:
            await anyio.sleep(every)
            text = self._current_text()
            if text == self._current:
                continue
            try:
                view = await anyio.to_thread.run_sync(
                    functools.partial(open_snapshot, self.root, mmap=self.mmap)
                )
            except Exception as exc:
                # Whatever is wrong on disk, keep answering from the last good state
                # (and say so in /healthz and the logs); try again next time.
                why = str(exc) if isinstance(exc, SnapshotError) else f"{type(exc).__name__}: {exc}"
                if why != self.last_error:
                    log.warning(
                        "%s: keeping snapshot %s: %s", self.root, self.view.combined.seq, why
                    )
                self.reload_failures += 1
                self.last_error = why
                continue
            self._current = text
            self.view = view
            self.loaded_at = time.time()
            self.reloads += 1
            self.last_error = None

    async def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        params: Mapping[str, Any] | str | None = None,
        *,
        filter: Mapping[str, Any] | str | None = None,
        with_payload: bool = False,
        after: After | None = None,
        timeout: float = 1.0,
    ) -> SearchResults:
        """Search the snapshot being served (see :meth:`SnapshotView.search`).

        ``after``: per shard, a record that must be in the snapshot searched (a
        Kafka offset, :mod:`sinks.freshness`); waits up to ``timeout`` seconds for
        a snapshot that holds it (snapshots come every ``--snapshot-every`` of the
        writer, and are picked up every ``--reload-every``).

        Raises:
            SearchTimeout: no such snapshot within ``timeout``.
        """
        if after:
            after = check_after(after)
            deadline = time.monotonic() + timeout
            while not reached(self._positions(), after):
                if time.monotonic() >= deadline:
                    positions = self._positions()
                    waiting = unreached(positions, after)
                    raise SearchTimeout(
                        f"no snapshot within {timeout:g}s holds the records of "
                        f"{', '.join(waiting)} named in after (snapshot {self.view.combined.seq})",
                        {name: position_value(p) for name, p in positions.items()},
                        waiting,
                    )
                await anyio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        view = self.view
        return await anyio.to_thread.run_sync(
            lambda: view.search(queries, k, params, filter=filter, with_payload=with_payload)
        )

    def _positions(self) -> dict[str, Position]:
        return {s.name: s.searchable_position() for s in self.view.shards}

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` adds: the snapshot being served and, when the newest one
        did not load, why (the last good one is served meanwhile)."""
        out: dict[str, Any] = {"seq": self.view.combined.seq, "loaded_at": self.loaded_at}
        skipped = [f"snapshot {fb['seq']}: {fb['reason']}" for fb in self.view.fallbacks]
        if self.last_error is not None:
            skipped.insert(0, self.last_error)
        if skipped:
            out["stale"] = True
            out["reload_error"] = "; ".join(skipped)
        return out

    def stats(self) -> dict[str, Any]:
        m = self.view.manifest
        return {
            "dir": self.root,
            "seq": m["seq"],
            "workers": m["workers"],
            "created": m.get("created"),
            "ntotal": m["ntotal"],
            "dim": m["dim"],
            "metric": m["metric"],
            "factory": m["factory"],
            "shards": [
                {"name": s["name"], "ntotal": s["ntotal"], "position": s["position"]}
                for s in m["shards"]
            ],
            "fallbacks": self.view.fallbacks,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "reload_error": self.last_error,
            "mapped_bytes": self.mapped_bytes,
        }

    @property
    def mapped_bytes(self) -> int:
        """Bytes of snapshot objects searched in place (page cache, shared with
        every process that maps them; not this process's own memory)."""
        return sum(s.mapped_bytes for s in self.view.shards)

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_ViewCollector(self))
        return registry


class _ViewCollector(Collector):
    def __init__(self, live: LiveView) -> None:
        self.live = live

    def collect(self) -> Any:
        m = self.live.view.manifest
        vectors = GaugeMetricFamily(
            "embedstream_index_vectors", "Vectors a shard holds", labels=["shard"]
        )
        segments = GaugeMetricFamily(
            "embedstream_segments", "Segments a shard searches", labels=["shard"]
        )
        for s in m["shards"]:
            vectors.add_metric([s["name"]], s["ntotal"])
            segments.add_metric([s["name"]], len(s.get("segments") or [0]))
        yield vectors
        yield segments
        seq = GaugeMetricFamily(
            "embedstream_snapshot_seq",
            "Seq of the snapshot being served (the highest over workers' chains)",
        )
        seq.add_metric([], max(w["seq"] for w in m["workers"].values()))
        yield seq
        reloads = CounterMetricFamily("embedstream_snapshot_reloads", "Snapshots loaded")
        reloads.add_metric([], self.live.reloads)
        yield reloads
        mapped = GaugeMetricFamily(
            "embedstream_index_mapped_bytes",
            "Bytes of snapshot objects searched in place (page cache, not process memory)",
        )
        mapped.add_metric([], self.live.mapped_bytes)
        yield mapped
