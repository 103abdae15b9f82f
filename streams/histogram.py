"""A fixed-bucket histogram fed with whole arrays at a time.

Freshness is measured for every record; observing records one by one in Python would
put per-record work on the hot path, so a batch's values go in with one
``np.searchsorted`` and a ``np.bincount``. Buckets follow Prometheus conventions
(upper bounds, cumulative on export) so the metrics exporter can publish them as is.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_SECONDS_BUCKETS", "Histogram"]

DEFAULT_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    3600.0,
)


class Histogram:
    """Counts of values per bucket (upper bounds; the last bucket is +Inf)."""

    def __init__(self, buckets: tuple[float, ...] = DEFAULT_SECONDS_BUCKETS) -> None:
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)
        self.sum = 0.0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def observe(self, values: npt.ArrayLike) -> None:
        """Add every value of ``values`` (NaNs are ignored)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if not v.size:
            return
        idx = np.searchsorted(self.bounds, v, side="left")
        counts = np.bincount(idx, minlength=len(self.counts))
        with self._lock:
            self.counts += counts
            self.sum += float(v.sum())

    def quantile(self, q: float) -> float:
        """Estimate of the ``q`` quantile (linear within a bucket); NaN when empty."""
        with self._lock:
            counts = self.counts.copy()
        total = counts.sum()
        if not total:
            return float("nan")
        target = q * total
        cum = np.cumsum(counts)
        i = int(np.searchsorted(cum, target, side="left"))
        if i >= len(self.bounds):
            return float(self.bounds[-1])
        lo = 0.0 if i == 0 else float(self.bounds[i - 1])
        hi = float(self.bounds[i])
        before = 0 if i == 0 else int(cum[i - 1])
        inside = int(counts[i])
        frac = (target - before) / inside if inside else 1.0
        return lo + (hi - lo) * min(max(frac, 0.0), 1.0)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs including +Inf, Prometheus-style."""
        with self._lock:
            cum = np.cumsum(self.counts)
        bounds = [*self.bounds.tolist(), float("inf")]
        return list(zip(bounds, cum.tolist(), strict=True))
