"""Drift: how well a trained index still fits the vectors that arrive, and the
sample to retrain it on.

Trained indexes (IVF, PQ, SQ) learn their centroids or codebooks once, on the first
``train_size`` vectors. When the stream moves (new topics, a new embedding model
version, seasonal content), new vectors land far from every centroid, a few inverted
lists grow lopsided, and searches either miss neighbours or scan far more than they
should. :class:`DriftMonitor` measures it the way the codec itself sees the data:

- the **fit** of a batch of vectors is the median squared distance between each
  one and what the index keeps of it: the nearest coarse centroid for IVF indexes,
  the decoded code for flat PQ/SQ codes (:func:`codec_fit`). The median, because a
  few outliers (a value beyond an SQ range) would swing a mean by 4x between
  batches of the same data;
- the **baseline** is the fit of the first vectors that arrive after the codec was
  trained (not of the training sample, which fits its own centroids or ranges
  better than any new data: by 3-4% for IVF k-means, by far more for SQ ranges);
- the **drift** is the fit of the most recent vectors over the baseline: about 1
  while the stream looks like what the codec was trained on, well above once its
  distribution moved.

The monitor also keeps what a retrain needs without re-reading the stream: a
uniform reservoir sample of every vector seen (Vitter's algorithm R, vectorised per
batch) and a ring of the most recent ones. A retrain trains on half of each, so the
new codec fits both the old vectors (re-encoded into it) and the new ones.

Memory: ``capacity x dim x 4`` bytes for the reservoir and half that for the ring
(the default capacity is the training size, 50,000: 77 MB + 38 MB at 384-d).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_RETRAIN_THRESHOLD", "DriftMonitor", "codec_fit"]

DEFAULT_RETRAIN_THRESHOLD = 1.25
"""Drift (recent fit / training fit) at which a sink retrains its index."""

# Vectors of the newest ones over which the drift is measured.
_WINDOW = 2048


def codec_fit(index: Any, x: npt.NDArray[np.float32]) -> float:
    """Median squared distance between the rows of ``x`` and what ``index`` keeps
    of them: the nearest coarse centroid (IVF), or the decoded code (flat codes)."""
    if len(x) == 0:
        return 0.0
    x = np.ascontiguousarray(x, dtype=np.float32)
    if isinstance(index, faiss.IndexIVF):
        quantizer: Any = index.quantizer
        if quantizer.ntotal == 0:
            raise ValueError("the index is not trained: there is no fit to measure")
        _, assign = quantizer.search(x, 1)
        near = quantizer.reconstruct_batch(assign.ravel())
    else:
        inner: Any = faiss.downcast_index(getattr(index, "index", index))
        near = inner.sa_decode(inner.sa_encode(x))
    return float(np.median(((x - near) ** 2).sum(axis=1)))


class DriftMonitor:
    """A reservoir of every vector seen, a ring of the newest, and the codec's fit
    at training time (see the module docstring).

    Only the event loop calls :meth:`observe`; the methods that hand arrays to a
    worker thread return copies.

    Args:
        dim: vector dimension.
        capacity: reservoir size (the ring holds half as many).
        seed: for the reservoir's random choices.
    """

    def __init__(self, dim: int, capacity: int, *, seed: int = 0) -> None:
        self.capacity = max(2, capacity)
        self._reservoir = np.empty((self.capacity, dim), np.float32)
        self._ring = np.empty((self.capacity // 2, dim), np.float32)
        self._rng = np.random.default_rng(seed)
        self.filled = 0
        self.seen = 0
        self._ring_at = 0
        self._ring_filled = 0
        # Vectors observed since the index was (re)trained or the monitor started.
        self.since_training = 0
        self._since_check = 0
        # The codec's fit on the first vectors after training (None: not known yet).
        self.baseline: float | None = None
        self.last_drift: float | None = None
        # ``seen`` when the drift was first found above the threshold: a retrain
        # waits until the ring holds only vectors from after that.
        self.drifted_at: int | None = None
        # True once the codec is trained: there is no fit to measure before.
        self.ready = False
        # Without a baseline: the first vectors after training, to measure it on.
        self._first: list[npt.NDArray[np.float32]] = []
        self._first_rows = 0

    def __repr__(self) -> str:
        return (
            f"<DriftMonitor seen={self.seen} reservoir={self.filled}/{self.capacity} "
            f"drift={self.last_drift}>"
        )

    def observe(self, x: npt.NDArray[np.float32]) -> None:
        """Take a batch of (float) vectors into the reservoir and the ring."""
        n = len(x)
        if n == 0:
            return
        self._ring_put(x)
        if self.baseline is None and self._first_rows < len(self._ring):
            part = x[: len(self._ring) - self._first_rows].copy()
            self._first.append(part)
            self._first_rows += len(part)
        take = min(self.capacity - self.filled, n)
        if take:
            self._reservoir[self.filled : self.filled + take] = x[:take]
            self.filled += take
        rest = x[take:]
        if len(rest):
            # Row i of the rest is the (seen + take + i)-th vector overall: it
            # replaces a random slot with probability capacity / (its number + 1).
            numbers = self.seen + take + np.arange(1, len(rest) + 1)
            slot = (self._rng.random(len(rest)) * numbers).astype(np.int64)
            kept = slot < self.capacity
            self._reservoir[slot[kept]] = rest[kept]
        self.seen += n
        self.since_training += n
        self._since_check += n

    def _ring_put(self, x: npt.NDArray[np.float32]) -> None:
        size = len(self._ring)
        if len(x) >= size:
            self._ring[:] = x[-size:]
            self._ring_at, self._ring_filled = 0, size
            return
        end = self._ring_at + len(x)
        if end <= size:
            self._ring[self._ring_at : end] = x
        else:
            cut = size - self._ring_at
            self._ring[self._ring_at :] = x[:cut]
            self._ring[: end - size] = x[cut:]
        self._ring_at = end % size
        self._ring_filled = min(size, self._ring_filled + len(x))

    @property
    def ring_size(self) -> int:
        """How many of the newest vectors the ring holds."""
        return len(self._ring)

    def recent(self, n: int | None = None) -> npt.NDArray[np.float32]:
        """A copy of the newest ``n`` vectors (all the ring holds by default)."""
        n = self._ring_filled if n is None else min(n, self._ring_filled)
        idx = (self._ring_at - n + np.arange(n)) % len(self._ring)
        out: npt.NDArray[np.float32] = self._ring[idx]
        return out

    def due(self) -> bool:
        """True when enough vectors arrived since the last check (and since the
        last training, so the ring holds only vectors the codec did not train on)
        for another look at the drift."""
        return (
            self.ready
            and self._since_check >= max(1, len(self._ring) // 4)
            and self.since_training >= len(self._ring)
        )

    def window(self) -> tuple[npt.NDArray[np.float32], int]:
        """A copy of the newest vectors to measure the drift on, and how many had
        been seen then; resets :meth:`due`."""
        self._since_check = 0
        return self.recent(_WINDOW), self.seen

    def first(self) -> npt.NDArray[np.float32]:
        """The first vectors that arrived after training (to measure the baseline
        on, when training had none to spare)."""
        out = np.concatenate(self._first) if self._first else self.recent()
        self._first, self._first_rows = [], 0
        return out

    def training_sample(self) -> npt.NDArray[np.float32]:
        """A copy of what to retrain on, ``capacity`` vectors: half from before the
        drift and half from after it, as far as the reservoir and the ring allow.

        The reservoir is uniform over everything seen, so a fraction ``f = (seen -
        drifted_at) / seen`` of it came after the drift; the newest vectors of the
        ring make up the rest of the recent half (none once ``f`` reaches 1/2, when
        the reservoir alone is that mix). Without a drift (a retrain on demand),
        half the ring, half the reservoir."""
        after = 0.0 if self.drifted_at is None else (self.seen - self.drifted_at) / self.seen
        ring = int(self.capacity * max(0.0, 0.5 - after) / (1.0 - after)) if after < 1 else 0
        recent = self.recent(ring)
        want = min(self.filled, self.capacity - len(recent))
        pick = self._rng.choice(self.filled, size=want, replace=False)
        return np.concatenate([self._reservoir[np.sort(pick)], recent])

    def trained(self, baseline: float | None = None) -> None:
        """The index was (re)trained. ``baseline``: its fit on vectors it was not
        trained on; ``None``: measured on the vectors that arrive next."""
        self.ready = True
        self.baseline = baseline
        self._first, self._first_rows = [], 0
        self.last_drift = None
        self.drifted_at = None
        self.since_training = 0
        self._since_check = 0
