"""File sources: JSONL/NDJSON, ``.npy``, ``.fvecs`` and ``.bvecs``.

All files of one source form the single partition ``"files"``; its position maps each
file's resolved path to the next byte (JSONL) or row (numeric formats), so a second
run over the same file resumes where the index stands and adds nothing.

Numeric files are memory-mapped and read a chunk of rows at a time, so memory stays
bounded by the channel capacities however large the file is.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from streams.errors import SourceError
from streams.records import Chunk, Position, Positions
from streams.source import Source

__all__ = ["FILES_PARTITION", "FORMATS", "FileSource", "detect_format"]

FILES_PARTITION = "files"

FORMATS = ("jsonl", "npy", "fvecs", "bvecs")

_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".npy": "npy",
    ".fvecs": "fvecs",
    ".bvecs": "bvecs",
}

_NPY_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))

DEFAULT_CHUNK_BYTES = 4 << 20


def detect_format(path: Path) -> str:
    """The file format implied by ``path``'s suffix.

    Raises:
        SourceError: the suffix is not one of the known formats.
    """
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_SUFFIXES))
        raise SourceError(
            str(path),
            f"cannot tell the format from the suffix {path.suffix!r}",
            f"known suffixes: {known}; or pass format= / --format",
        )
    return fmt


class FileSource(Source):
    """Reads embedding files in order, as the partition ``"files"``.

    Args:
        paths: one path or several; read one after another.
        format: ``"jsonl"``, ``"npy"``, ``"fvecs"`` or ``"bvecs"``; by default from
            each file's suffix.
        chunk_bytes: how much to read per chunk (about; whole rows or lines).
        name: the stage name.

    Ids: JSONL records carry their own; numeric formats use the row number.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        format: str | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        name: str = "source",
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise SourceError("file source", "no files given")
        if format is not None and format not in FORMATS:
            raise SourceError(
                "file source", f"unknown format {format!r}", f"use one of {', '.join(FORMATS)}"
            )
        self.paths = [Path(p) for p in paths]
        self.format = format
        # Fail before the pipeline starts, not halfway through the file list.
        self.formats = [format or detect_format(p) for p in self.paths]
        self.chunk_bytes = max(int(chunk_bytes), 1)
        self.name = name

    def __repr__(self) -> str:
        return f"<FileSource {[str(p) for p in self.paths]} format={self.format or 'auto'}>"

    async def chunks(self, start: Positions) -> AsyncIterator[Chunk]:
        done = start.get(FILES_PARTITION, {})
        for path, fmt in zip(self.paths, self.formats, strict=True):
            key = str(path.resolve())
            offset = int(done.get(key, 0))
            reader = _READERS[fmt]
            async for chunk in reader(self, path, key, offset, fmt):
                yield chunk


def _open_error(path: Path, exc: OSError) -> SourceError:
    if isinstance(exc, FileNotFoundError):
        return SourceError(str(path), "no such file", "check the path")
    if isinstance(exc, IsADirectoryError):
        return SourceError(str(path), "is a directory, not a file")
    if isinstance(exc, PermissionError):
        return SourceError(str(path), "permission denied", "check the file's permissions")
    return SourceError(str(path), f"cannot read: {exc.strerror or exc}")


def _check_resume(path: Path, offset: int, size: int, unit: str) -> None:
    if offset > size:
        raise SourceError(
            str(path),
            f"the index already holds this file up to {unit} {offset}, but it has only {size}",
            "the file was replaced or truncated; ingest it into a new index directory",
        )


# -- JSONL -------------------------------------------------------------------------


async def _read_jsonl(
    src: FileSource, path: Path, key: str, offset: int, fmt: str
) -> AsyncIterator[Chunk]:
    try:
        # Unbuffered: read() returns what is there, and closing never waits on a
        # reader thread blocked on a quiet pipe.
        f = await anyio.to_thread.run_sync(partial(open, path, "rb", buffering=0))
    except OSError as exc:
        raise _open_error(path, exc) from exc
    with f:
        info = os.fstat(f.fileno())
        size = info.st_size
        read = _reader(f, regular=stat.S_ISREG(info.st_mode))
        _check_resume(path, offset, size, "byte")
        # Line numbers in messages are 1-based and count from the file's start, also
        # when resuming in the middle.
        line = 1
        if offset:
            if not f.seekable():
                raise SourceError(
                    str(path),
                    f"the index holds this stream up to byte {offset}, but a pipe cannot seek",
                    "ingest a pipe into a new index directory, or use a regular file",
                )
            line += await anyio.to_thread.run_sync(_count_newlines, f, offset)
            f.seek(offset)
        carry = b""
        while True:
            block = await read(src.chunk_bytes)
            eof = not block
            data = carry + block
            if eof:
                if not data:
                    return
                lines, carry = [data], b""
                end = offset + len(data)
            else:
                cut = data.rfind(b"\n")
                if cut < 0:
                    carry = data
                    continue
                lines = data[:cut].split(b"\n")
                carry = data[cut + 1 :]
                end = offset + cut + 1
            payloads: list[bytes | None] = []
            where: list[int] = []
            for i, text in enumerate(lines):
                if text.strip():
                    payloads.append(text)
                    where.append(line + i)
            line += len(lines)
            offset = end
            position: Position = {key: end}
            yield Chunk(
                partition=FILES_PARTITION,
                source=str(path),
                format="json",
                position=position,
                locations=np.asarray(where, dtype=np.int64),
                location_kind="line",
                payloads=payloads,
                read_at=time.time(),
            )
            if eof:
                return


def _reader(f: Any, *, regular: bool) -> Callable[[int], Awaitable[bytes]]:
    """An async ``read(n)`` for a file: a worker thread for regular files, readiness
    polling for pipes and sockets (a thread blocked on a quiet pipe could not be
    stopped, and would hold the process open at exit)."""
    if regular:

        async def read_file(n: int) -> bytes:
            data: bytes = await anyio.to_thread.run_sync(f.read, n)
            return data

        return read_file
    fd = f.fileno()
    os.set_blocking(fd, False)

    async def read_pipe(n: int) -> bytes:
        while True:
            try:
                return os.read(fd, n)
            except BlockingIOError:
                await anyio.wait_readable(fd)

    return read_pipe


def _count_newlines(f: Any, upto: int) -> int:
    f.seek(0)
    n = 0
    left = upto
    while left > 0:
        block = f.read(min(left, 1 << 20))
        if not block:
            break
        n += block.count(b"\n")
        left -= len(block)
    return n


# -- .npy ----------------------------------------------------------------------------


async def _read_npy(
    src: FileSource, path: Path, key: str, offset: int, fmt: str
) -> AsyncIterator[Chunk]:
    arr = await anyio.to_thread.run_sync(_open_npy, path)
    rows = arr.shape[0]
    _check_resume(path, offset, rows, "row")
    step = max(1, src.chunk_bytes // max(1, arr.shape[1] * 4))
    for begin in range(offset, rows, step):
        end = min(begin + step, rows)
        vectors = await anyio.to_thread.run_sync(_rows_f32, arr, begin, end)
        yield _vector_chunk(path, key, "npy", vectors, begin, end)


def _open_npy(path: Path) -> npt.NDArray[Any]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as exc:
        raise _open_error(path, exc) from exc
    except ValueError as exc:
        raise SourceError(
            str(path),
            f"not a readable .npy file ({exc})",
            "the file is truncated or not written by numpy.save",
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise SourceError(str(path), "holds no single array (an .npz archive?)")
    if arr.ndim != 2:
        raise SourceError(
            str(path), f"has {arr.ndim} dimensions, shape {arr.shape}", "expected rows x dim"
        )
    if arr.dtype not in _NPY_DTYPES:
        raise SourceError(
            str(path), f"has dtype {arr.dtype}", "expected float32, float16 or float64"
        )
    return arr


def _rows_f32(arr: npt.NDArray[Any], begin: int, end: int) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(arr[begin:end], dtype=np.float32)


def _vector_chunk(
    path: Path, key: str, fmt: str, vectors: npt.NDArray[Any], begin: int, end: int
) -> Chunk:
    ids = np.arange(begin, end, dtype=np.int64)
    return Chunk(
        partition=FILES_PARTITION,
        source=str(path),
        format=fmt,
        position={key: end},
        locations=ids,
        location_kind="row",
        vectors=vectors,
        ids=ids,
        read_at=time.time(),
    )


# -- .fvecs / .bvecs -----------------------------------------------------------------


async def _read_vecs(
    src: FileSource, path: Path, key: str, offset: int, fmt: str
) -> AsyncIterator[Chunk]:
    raw, dim, rowbytes = await anyio.to_thread.run_sync(_open_vecs, path, fmt)
    rows = raw.shape[0] // rowbytes if rowbytes else 0
    _check_resume(path, offset, rows, "row")
    table = raw[: rows * rowbytes].reshape(rows, rowbytes) if rows else raw[:0].reshape(0, 1)
    step = max(1, src.chunk_bytes // rowbytes) if rowbytes else 1
    for begin in range(offset, rows, step):
        end = min(begin + step, rows)
        vectors = await anyio.to_thread.run_sync(_vecs_rows, path, fmt, table, dim, begin, end)
        yield _vector_chunk(path, key, fmt, vectors, begin, end)


def _open_vecs(path: Path, fmt: str) -> tuple[npt.NDArray[np.uint8], int, int]:
    try:
        size = path.stat().st_size
        if size == 0:
            return np.zeros(0, dtype=np.uint8), 0, 0
        raw = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as exc:
        raise _open_error(path, exc) from exc
    if size < 4:
        raise SourceError(str(path), f"is {size} bytes, too short for a {fmt} header")
    dim = int(raw[:4].view("<i4")[0])
    if dim <= 0 or dim > 1 << 20:
        raise SourceError(
            str(path), f"row 0 declares dimension {dim}", f"not a .{fmt} file, or corrupt"
        )
    elem = 4 if fmt == "fvecs" else 1
    rowbytes = 4 + dim * elem
    if size % rowbytes:
        raise SourceError(
            str(path),
            f"is truncated: {size} bytes is not a whole number of {rowbytes}-byte rows"
            f" (dimension {dim}); row {size // rowbytes} is incomplete",
            "re-export the file, or cut it to whole rows",
        )
    return raw, dim, rowbytes


def _vecs_rows(
    path: Path, fmt: str, table: npt.NDArray[np.uint8], dim: int, begin: int, end: int
) -> npt.NDArray[np.float32]:
    rows = table[begin:end]
    dims = np.ascontiguousarray(rows[:, :4]).view("<i4").ravel()
    bad = np.flatnonzero(dims != dim)
    if bad.size:
        row = begin + int(bad[0])
        raise SourceError(
            f"{path} row {row}",
            f"declares dimension {int(dims[bad[0]])}, but the file's first row has {dim}",
            f"a .{fmt} file holds rows of one dimension",
        )
    body = np.ascontiguousarray(rows[:, 4:])
    if fmt == "fvecs":
        return body.view("<f4").astype(np.float32, copy=False)
    return body.astype(np.float32)


_READERS = {
    "jsonl": _read_jsonl,
    "npy": _read_npy,
    "fvecs": _read_vecs,
    "bvecs": _read_vecs,
}
