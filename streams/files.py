"""File sources: JSONL/NDJSON, ``.npy``, ``.fvecs`` and ``.bvecs``.

All files of one source form the single partition ``"files"``; its position maps each
file's resolved path to the next byte (JSONL) or row (numeric formats), so a second
run over the same file resumes where the index stands and adds nothing.

Numeric files are memory-mapped and read a chunk of rows at a time, so memory stays
bounded by the channel capacities however large the file is. A JSONL line longer than
``max_line_bytes`` is never held whole: the reader keeps a short prefix (for the dead
letter), skips the rest, and passes the record on marked as oversized.

Ids of numeric files are row numbers plus the file's *id offset*, so that two files
in one index never overwrite each other: the first numeric file starts at
``id_offset`` (default 0), each further file of the same run right after the one
before it, and the offset each file got (when not 0) is kept in the position
(``"ids:<path>"``) so a later run gives it the same ids. A file whose id range would
overlap another's is refused with the offset to use instead.

Only regular files are memory-mapped (``.npy``, ``.fvecs``, ``.bvecs``); JSONL can
also come from a FIFO or socket, read by readiness polling so that stopping never
waits on a blocked read. Devices and directories are refused.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from streams.errors import SourceError
from streams.formats import FORMATS as REGISTRY
from streams.formats import file_formats, format_for_suffix
from streams.records import Chunk, Position, Positions
from streams.source import Source

__all__ = ["FILES_PARTITION", "FORMATS", "FileSource", "detect_format"]

FILES_PARTITION = "files"

FORMATS = file_formats()

_NPY_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))

DEFAULT_CHUNK_BYTES = 4 << 20

DEFAULT_MAX_LINE_BYTES = 1 << 20

DEAD_LETTER_PREFIX_BYTES = 4096
"""How much of an oversized JSONL line is kept for its dead letter."""

IDS_KEY = "ids:"
"""Position key prefix under which a numeric file's id offset is recorded."""


def detect_format(path: Path) -> str:
    """The file format implied by ``path``'s suffix.

    Raises:
        SourceError: the suffix is not one of the known formats.
    """
    fmt = format_for_suffix(path.suffix)
    if fmt is None:
        known = ", ".join(sorted(s for f in FORMATS for s in REGISTRY[f].suffixes))
        raise SourceError(
            str(path),
            f"cannot tell the format from the suffix {path.suffix!r}",
            f"known suffixes: {known}; or pass format= / --format",
        )
    return fmt.name


class FileSource(Source):
    """Reads embedding files in order, as the partition ``"files"``.

    Args:
        paths: one path or several; read one after another.
        format: ``"jsonl"``, ``"npy"``, ``"fvecs"`` or ``"bvecs"``; by default from
            each file's suffix.
        chunk_bytes: how much to read per chunk (about; whole rows or lines).
        max_line_bytes: a longer JSONL line is skipped while reading (only a prefix
            is kept, for its dead letter) and rejected as ``oversized``.
        id_offset: the id of row 0 of the first numeric file (see the module
            docstring for how further files get theirs).
        name: the stage name.

    Ids: JSONL records carry their own; numeric formats use ``offset + row``.

    Raises:
        SourceError: no files, an unknown format, or a negative ``id_offset``.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        format: str | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        id_offset: int | None = None,
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
        self.max_line_bytes = max(int(max_line_bytes), 1)
        if id_offset is not None and id_offset < 0:
            raise SourceError("file source", f"id_offset {id_offset} is negative")
        self.id_offset = id_offset
        self.name = name

    def __repr__(self) -> str:
        return f"<FileSource {[str(p) for p in self.paths]} format={self.format or 'auto'}>"

    async def chunks(self, start: Positions) -> AsyncIterator[Chunk]:
        done = start.get(FILES_PARTITION, {})
        bases = await anyio.to_thread.run_sync(self._id_offsets, done)
        for path, fmt in zip(self.paths, self.formats, strict=True):
            key = str(path.resolve())
            offset = int(done.get(key, 0))
            reader = _READERS[fmt]
            async for chunk in reader(self, path, key, offset, fmt, bases.get(key, 0)):
                yield chunk

    def _id_offsets(self, done: Position) -> dict[str, int]:
        """The id offset of every numeric file of this run, checked against every
        numeric file the index already holds (blocking: reads file headers)."""
        held: dict[str, tuple[int, int]] = {}  # path -> (first id, ids used)
        for k, v in done.items():
            if k.startswith(IDS_KEY):
                name = k[len(IDS_KEY) :]
                held[name] = (int(v), int(done.get(name, 0)))
        for k, v in done.items():
            if not k.startswith(IDS_KEY) and k not in held and _numeric_name(k):
                held[k] = (0, int(v))  # recorded before offsets were: they started at 0
        out: dict[str, int] = {}
        nxt = self.id_offset
        for path, fmt in zip(self.paths, self.formats, strict=True):
            if fmt == "jsonl":
                continue
            key = str(path.resolve())
            rows = _numeric_rows(path, fmt)
            if key in held:
                base = held[key][0]
                if self.id_offset is not None and nxt == self.id_offset and base != nxt:
                    raise SourceError(
                        str(path),
                        f"--id-offset {self.id_offset}: the index already holds this file "
                        f"with ids from {base}",
                        f"leave --id-offset out, or give {base}",
                    )
            else:
                base = nxt if nxt is not None else 0
            out[key] = base
            nxt = base + rows
            for other, (first, used) in held.items():
                if other != key and first < base + rows and base < first + used:
                    free = max(f + u for f, u in [*held.values(), (base, rows)])
                    raise SourceError(
                        str(path),
                        f"its ids {base}..{base + rows - 1} (offset + row) overlap those of "
                        f"{other} ({first}..{first + used - 1}) in the index",
                        f"give --id-offset {free} (or id_offset=) to give it ids of its own",
                    )
            held[key] = (base, rows)
        return out


def _open_error(path: Path, exc: OSError) -> SourceError:
    if isinstance(exc, FileNotFoundError):
        return SourceError(str(path), "no such file", "check the path")
    if isinstance(exc, IsADirectoryError):
        return SourceError(str(path), "is a directory, not a file")
    if isinstance(exc, PermissionError):
        return SourceError(str(path), "permission denied", "check the file's permissions")
    return SourceError(str(path), f"cannot read: {exc.strerror or exc}")


def _numeric_name(key: str) -> bool:
    return Path(key).suffix.lower() in (".npy", ".fvecs", ".bvecs")


def _numeric_rows(path: Path, fmt: str) -> int:
    if fmt == "npy":
        return int(_open_npy(path).shape[0])
    raw, _dim, rowbytes = _open_vecs(path, fmt)
    return raw.shape[0] // rowbytes if rowbytes else 0


def _mode(path: Path) -> int:
    """The file type and mode of an input (following symlinks); a directory or a
    missing path is an error saying so."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _open_error(path, exc) from exc
    if stat.S_ISDIR(mode):
        raise SourceError(str(path), "is a directory, not a file")
    return mode


def _require_regular(path: Path, fmt: str) -> None:
    """Memory-mapped formats need a regular file (a FIFO or device would block or
    never end)."""
    mode = _mode(path)
    if not stat.S_ISREG(mode):
        raise SourceError(
            str(path),
            f"is a {_kind(mode)}, not a regular file; .{fmt} files are memory-mapped",
            "write it to a file first (JSONL can be read from a pipe)",
        )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _check_resume(path: Path, offset: int, size: int, unit: str) -> None:
    if offset > size:
        raise SourceError(
            str(path),
            f"the index already holds this file up to {unit} {offset}, but it has only {size}",
            "the file was replaced or truncated; ingest it into a new index directory",
        )


# -- JSONL -------------------------------------------------------------------------


@dataclass
class _LongLine:
    """A JSONL line over the limit, being skipped: where it started and its size."""

    line: int
    prefix: bytes
    size: int


async def _read_jsonl(
    src: FileSource, path: Path, key: str, offset: int, fmt: str, _ids: int
) -> AsyncIterator[Chunk]:
    f, regular = await anyio.to_thread.run_sync(_open_stream, path)
    with f:
        size = os.fstat(f.fileno()).st_size if regular else 0
        read = _reader(f, regular=regular)
        if regular:
            _check_resume(path, offset, size, "byte")
        # Line numbers in messages are 1-based and count from the file's start, also
        # when resuming in the middle.
        line = 1
        if offset:
            if not regular:
                raise SourceError(
                    str(path),
                    f"the index holds this stream up to byte {offset}, but a pipe cannot seek",
                    "ingest a pipe into a new index directory, or use a regular file",
                )
            line += await anyio.to_thread.run_sync(_count_newlines, f, offset)
            f.seek(offset)
        limit = src.max_line_bytes
        carry = b""
        long: _LongLine | None = None
        while True:
            block = await read(src.chunk_bytes)
            eof = not block
            payloads: list[bytes | None] = []
            where: list[int] = []
            truncated: dict[int, int] = {}
            if long is not None:
                # Skipping an oversized line: hold nothing of it but its prefix.
                cut = block.find(b"\n")
                if cut < 0 and not eof:
                    long.size += len(block)
                    continue
                tail = cut if cut >= 0 else len(block)
                long.size += tail
                truncated[0] = long.size
                payloads.append(long.prefix)
                where.append(long.line)
                line += 1
                offset += long.size + (cut >= 0)
                long = None
                data = block[tail + 1 :] if cut >= 0 else b""
            else:
                data = carry + block
            if eof:
                lines, carry = ([data] if data else []), b""
                end = offset + len(data)
            else:
                cut = data.rfind(b"\n")
                lines = data[:cut].split(b"\n") if cut >= 0 else []
                carry = data[cut + 1 :]
                end = offset + cut + 1
            for i, text in enumerate(lines):
                if text.strip():
                    payloads.append(text)
                    where.append(line + i)
            line += len(lines)
            offset = end
            if len(carry) > limit:
                long = _LongLine(line, carry[:DEAD_LETTER_PREFIX_BYTES], len(carry))
                carry = b""
            if not payloads and not lines:
                if eof:
                    return
                continue
            yield Chunk(
                partition=FILES_PARTITION,
                source=str(path),
                format="jsonl",
                position={key: end},
                locations=np.asarray(where, dtype=np.int64),
                location_kind="line",
                payloads=payloads,
                truncated=truncated or None,
                read_at=time.time(),
            )
            if eof:
                return


def _open_stream(path: Path) -> tuple[Any, bool]:
    """Open a JSONL input without ever blocking: a FIFO with no writer yet opens at
    once (non-blocking) and is then waited on by polling. Returns (file, regular)."""
    mode = _mode(path)
    regular = stat.S_ISREG(mode)
    if not (regular or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        raise SourceError(
            str(path), f"is a {_kind(mode)}", "give a regular file, a FIFO or a socket"
        )
    try:
        fd = os.open(path, os.O_RDONLY | (0 if regular else os.O_NONBLOCK))
    except OSError as exc:
        raise _open_error(path, exc) from exc
    # Unbuffered: read() returns what is there.
    return os.fdopen(fd, "rb", buffering=0), regular


def _reader(f: Any, *, regular: bool) -> Callable[[int], Awaitable[bytes]]:
    """An async ``read(n)`` for a file: a worker thread for regular files (each read
    is short), readiness polling for pipes and sockets (a thread blocked on a quiet
    pipe could not be stopped, and would hold the process open at exit)."""
    if regular:

        async def read_file(n: int) -> bytes:
            data: bytes = await anyio.to_thread.run_sync(f.read, n)
            return data

        return read_file
    fd = f.fileno()
    os.set_blocking(fd, False)

    async def read_pipe(n: int) -> bytes:
        while True:
            # Wait first: a FIFO whose writer has not connected yet reads as empty,
            # but is not readable until the writer writes or closes.
            await anyio.wait_readable(fd)
            try:
                return os.read(fd, n)
            except BlockingIOError:
                continue

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
    src: FileSource, path: Path, key: str, offset: int, fmt: str, ids: int
) -> AsyncIterator[Chunk]:
    arr = await anyio.to_thread.run_sync(_open_npy, path)
    rows = arr.shape[0]
    _check_resume(path, offset, rows, "row")
    step = max(1, src.chunk_bytes // max(1, arr.shape[1] * 4))
    for begin in range(offset, rows, step):
        end = min(begin + step, rows)
        vectors = await anyio.to_thread.run_sync(_rows_f32, arr, begin, end)
        yield _vector_chunk(path, key, "npy", vectors, begin, end, ids)


def _open_npy(path: Path) -> npt.NDArray[Any]:
    _require_regular(path, "npy")
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
    path: Path, key: str, fmt: str, vectors: npt.NDArray[Any], begin: int, end: int, base: int
) -> Chunk:
    rows = np.arange(begin, end, dtype=np.int64)
    return Chunk(
        partition=FILES_PARTITION,
        source=str(path),
        format=fmt,
        # An offset of 0 goes unrecorded: a file without one starts at 0.
        position={key: end, IDS_KEY + key: base} if base else {key: end},
        locations=rows,
        location_kind="row",
        vectors=vectors,
        ids=rows + base if base else rows,
        read_at=time.time(),
    )


# -- .fvecs / .bvecs -----------------------------------------------------------------


async def _read_vecs(
    src: FileSource, path: Path, key: str, offset: int, fmt: str, ids: int
) -> AsyncIterator[Chunk]:
    raw, dim, rowbytes = await anyio.to_thread.run_sync(_open_vecs, path, fmt)
    rows = raw.shape[0] // rowbytes if rowbytes else 0
    _check_resume(path, offset, rows, "row")
    table = raw[: rows * rowbytes].reshape(rows, rowbytes) if rows else raw[:0].reshape(0, 1)
    step = max(1, src.chunk_bytes // rowbytes) if rowbytes else 1
    for begin in range(offset, rows, step):
        end = min(begin + step, rows)
        vectors = await anyio.to_thread.run_sync(_vecs_rows, path, fmt, table, dim, begin, end)
        yield _vector_chunk(path, key, fmt, vectors, begin, end, ids)


def _open_vecs(path: Path, fmt: str) -> tuple[npt.NDArray[np.uint8], int, int]:
    _require_regular(path, fmt)
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
