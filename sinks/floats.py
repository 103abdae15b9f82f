"""Full-precision vectors on disk, for exact rerank of quantised search results.

With ``quantize`` the index holds codes in RAM; the float32 vectors go to an
append-only file per shard (``DIR/floats/<shard>.f32``), memory-mapped for reading,
so RAM holds the codes and an id -> row map while the floats stay on disk.

Crash safety: the file only grows, and a snapshot records how many rows it covers
together with the id -> row map (as an object); loading checks that the file holds
at least that many rows. Rows past that count belong to
batches after the snapshot: they are cut off on restart and written again by the
replay. Upserts append a new row and move the id to it.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from sinks.durable import open_regular
from streams.errors import SnapshotError

__all__ = ["FloatStore", "floats_path"]


def floats_path(root: str | os.PathLike[str], shard: str) -> Path:
    """Where the floats of ``shard`` live under a snapshot directory."""
    return Path(root) / "floats" / f"{quote(shard, safe='')}.f32"


class FloatStore:
    """One shard's float32 rows plus the id -> row map.

    Args:
        path: the file.
        dim: floats per row.
        rows: rows the caller knows to be valid (a snapshot's count); the file is cut
            to it when writable.
        mapping: the id -> row map as two arrays, from a snapshot.
        readonly: open for searching only.
    """

    def __init__(
        self,
        path: Path,
        dim: int,
        rows: int = 0,
        mapping: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None,
        *,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.dim = dim
        self.rows = rows
        self.row_of: dict[int, int] = {}
        if mapping is not None:
            self.row_of = dict(zip(mapping[0].tolist(), mapping[1].tolist(), strict=True))
        self._map: npt.NDArray[np.float32] | None = None
        self._mapped_rows = 0
        self._remap = threading.Lock()
        self._f = None
        need = rows * dim * 4
        if readonly and not rows:
            return
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Never through a symlink, never a FIFO or device: only a regular file
            # inside the directory is read, truncated or appended to.
            fd = open_regular(path, os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise SnapshotError(f"{path}: cannot open the shard's float file: {exc}") from None
        size = os.fstat(fd).st_size
        if size < need:
            os.close(fd)
            raise SnapshotError(
                f"{path}: holds {size:,} bytes, but the snapshot names {rows:,} rows of "
                f"{dim} floats ({need:,} bytes); the file was truncated or replaced: "
                "restore it, or ingest into a new index directory"
            )
        if readonly:
            os.close(fd)
            return
        self._f = os.fdopen(fd, "r+b")  # lives as long as the shard
        self._f.truncate(need)

    def __len__(self) -> int:
        return len(self.row_of)

    def append(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Append rows for ``ids`` (blocking; under the shard's write lock)."""
        assert self._f is not None, "read-only float store"
        if not len(ids):
            return
        data = np.ascontiguousarray(vectors, dtype="<f4")
        self._f.seek(0, io.SEEK_END)
        self._f.write(data.tobytes())
        self._f.flush()
        start = self.rows
        self.rows += len(ids)
        self.row_of.update(zip(ids.tolist(), range(start, self.rows), strict=True))

    def discard(self, ids: npt.NDArray[np.int64]) -> None:
        for i in ids.tolist():
            self.row_of.pop(i, None)

    def sync(self) -> None:
        """Make the rows so far durable (before a snapshot names them)."""
        if self._f is not None:
            os.fsync(self._f.fileno())

    def mapping(self) -> bytes:
        """The id -> row map as ``.npz`` bytes, for a snapshot object."""
        ids = np.fromiter(self.row_of.keys(), dtype=np.int64, count=len(self.row_of))
        rows = np.fromiter(self.row_of.values(), dtype=np.int64, count=len(self.row_of))
        buf = io.BytesIO()
        np.savez(buf, ids=ids, rows=rows)
        return buf.getvalue()

    @staticmethod
    def read_mapping(data: bytes) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        with np.load(io.BytesIO(data)) as z:
            return z["ids"], z["rows"]

    def _rows_view(self) -> npt.NDArray[np.float32]:
        with self._remap:
            if self._map is None or self._mapped_rows < self.rows:
                self._map = (
                    np.memmap(self.path, dtype="<f4", mode="r", shape=(self.rows, self.dim))
                    if self.rows
                    else np.zeros((0, self.dim), np.float32)
                )
                self._mapped_rows = self.rows
            return self._map

    def gather(
        self, ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """The vectors of ``ids`` (any shape) and which of them were found."""
        flat = ids.ravel().tolist()
        rows = np.fromiter((self.row_of.get(i, -1) for i in flat), dtype=np.int64, count=len(flat))
        found = rows >= 0
        out = np.zeros((len(flat), self.dim), dtype=np.float32)
        if found.any():
            out[found] = self._rows_view()[rows[found]]
        return out.reshape(*ids.shape, self.dim), found.reshape(ids.shape)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
