"""Record codecs: turn a chunk's encoded payloads into columns, noting bad records.

Formats:

- ``json``: ``{"id": int|str, "vector": [...], "ts": ms, "metadata": {...},
  "delete": bool, "version": int}``; parsed by simdjson with the vector taken as one
  buffer of doubles (:mod:`operators.json_fast`), and by one typed msgspec decoder
  built once wherever simdjson's answer would not match the schema exactly.
- ``msgpack``: the same fields; ``vector`` may also be bytes of little-endian float32.
- ``f32`` / ``f16``: the value is the vector's little-endian values; the id is the
  key. Decoded for the whole chunk at once with ``np.frombuffer``.

Ids follow one rule (:mod:`streams.keys`): a non-negative integer id is used as is;
a string id or message key that is a canonical decimal is that integer, any other
string a stable 63-bit id (:func:`streams.keys.key_id`). Where a record has no id
the message key is used. A null payload (a Kafka tombstone) deletes the key's id.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import simdjson

from operators.json_fast import parse_record
from streams.keys import INT64_MAX, canonical_decimal, decimal_key_ids, key_id
from streams.slabs import SlabPool

__all__ = ["SCHEMA_VERSIONS", "Columns", "JsonRecord", "MsgpackRecord", "decode_payloads"]

SCHEMA_VERSIONS = frozenset({1})
"""Record schema versions this release understands (a missing version means 1)."""


class JsonRecord(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """One JSON record. ``{"id": ..., "delete": true}`` deletes the id."""

    id: int | str | None = None
    vector: list[float] | None = None
    ts: float | None = None
    metadata: dict[str, Any] | None = None
    delete: bool = False
    version: int | None = None


class MsgpackRecord(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """One msgpack record; ``vector`` is a list of numbers or float32 LE bytes."""

    id: int | str | None = None
    vector: list[float] | bytes | None = None
    ts: float | None = None
    metadata: dict[str, Any] | None = None
    delete: bool = False
    version: int | None = None


_json_one = msgspec.json.Decoder(JsonRecord)
_msgpack_one = msgspec.msgpack.Decoder(MsgpackRecord)


@dataclass
class Columns:
    """The decoded rows of one chunk; ``bad`` lists rejected items.

    ``rows[j]`` is the chunk item index of row ``j``; ``bad`` holds
    ``(item index, reason, detail)``.
    """

    rows: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    vectors: list[Any] = field(default_factory=list)  # list[float] | np.ndarray | None
    deletes: list[bool] = field(default_factory=list)
    ts: list[float | None] = field(default_factory=list)
    metadata: list[Any] = field(default_factory=list)
    keys: dict[int, str] = field(default_factory=dict)
    bad: list[tuple[int, str, str]] = field(default_factory=list)
    # Set by the raw formats instead of ``ids`` / ``vectors``: already arrays.
    id_array: npt.NDArray[np.int64] | None = None
    dense: npt.NDArray[np.float32] | None = None
    # The stream's dimension, and rows written straight into float32 as records
    # decode (so no list of Python floats outlives its record).
    dim: int | None = None
    buf: npt.NDArray[np.float32] | None = None
    capacity: int = 0


def _validation_reason(message: str) -> str:
    if "`$.id`" in message or "at `$.id`" in message:
        return "id-out-of-range" if "out of range" in message else "bad-id"
    if "out of range" in message:
        return "not-finite"
    if "`$.vector" in message or "at `$.vector" in message:
        return "bad-vector"
    return "invalid"


def resolve_id(rid: int | str | None, key: bytes | None, cols: Columns) -> tuple[int, str] | str:
    """The int64 id of a record, or the reason it has none (:mod:`streams.keys`
    has the rule: one record at a time, whatever else its chunk holds)."""
    if rid is None:
        if key is None:
            return "missing-id"
        try:
            rid = key.decode("utf-8")
        except UnicodeDecodeError:
            return "bad-key"
    if isinstance(rid, str):
        if not rid:
            return "missing-id"
        number = canonical_decimal(rid)
        if number is not None:
            return number, ""
        k = key_id(rid)
        cols.keys[k] = rid
        return k, ""
    if isinstance(rid, bool) or rid < 0:
        return "bad-id"
    if rid > INT64_MAX:
        return "id-out-of-range"
    return rid, ""


def _add(cols: Columns, i: int, rec: JsonRecord | MsgpackRecord, key: bytes | None) -> None:
    _add_fields(cols, i, key, rec.id, rec.vector, rec.ts, rec.metadata, rec.delete, rec.version)


def _add_fields(
    cols: Columns,
    i: int,
    key: bytes | None,
    rid: int | str | None,
    vector: Any,
    ts: float | None,
    metadata: dict[str, Any] | None,
    delete: bool,
    version: int | None,
) -> None:
    if version is not None and version not in SCHEMA_VERSIONS:
        cols.bad.append(
            (
                i,
                "unknown-version",
                f"schema version {version} is not one of "
                f"{sorted(SCHEMA_VERSIONS)}; upgrade embedstream",
            )
        )
        return
    got = resolve_id(rid, key, cols)
    if isinstance(got, str):
        detail = {
            "missing-id": "the record has no id and the message no key",
            "id-out-of-range": f"integer id {rid} is outside int64",
            "bad-id": f"id {rid!r} is negative or not an integer; ids are 0 .. 2**63-1 "
            "(FAISS uses -1 for 'no result'), or strings",
            "bad-key": "the message key is not UTF-8",
        }.get(got, got)
        cols.bad.append((i, got, detail))
        return
    if ts is not None and not math.isfinite(ts):
        cols.bad.append((i, "bad-timestamp", f"ts {ts} is not a number"))
        return
    if delete:
        vector = None
    elif vector is None:
        cols.bad.append((i, "missing-vector", "the record has no vector"))
        return
    elif isinstance(vector, bytes):
        if len(vector) % 4:
            cols.bad.append((i, "bad-vector", f"{len(vector)} vector bytes are not float32s"))
            return
        vector = np.frombuffer(vector, dtype="<f4")
    if vector is not None:
        if len(vector) == 0:
            cols.bad.append((i, "bad-vector", "the vector is empty"))
            return
        if cols.dim is None:
            cols.dim = len(vector)
        if len(vector) != cols.dim:
            cols.bad.append(
                (
                    i,
                    "wrong-dimension",
                    f"the vector has {len(vector)} values, the stream {cols.dim}",
                )
            )
            return
        if cols.buf is None:
            cols.buf = np.zeros((cols.capacity, cols.dim), dtype=np.float32)
        _store_row(cols, vector)
        vector = None
    cols.rows.append(i)
    cols.ids.append(got[0])
    cols.vectors.append(vector)
    cols.deletes.append(bool(delete))
    cols.ts.append(ts)
    cols.metadata.append(metadata)


@functools.lru_cache(maxsize=16)
def _row_packer(dim: int) -> struct.Struct:
    return struct.Struct(f"={dim}f")


def _store_row(cols: Columns, vector: Any) -> None:
    """Write ``vector`` into the next float32 row of ``cols.buf``.

    A list of Python floats goes through ``struct.pack_into``, which converts each
    float straight into the buffer: about 4 ns a value where numpy's generic
    sequence assignment costs about 18 (measured on 384-d rows). A value beyond
    float32's range makes struct refuse; numpy's assignment then stores it as inf,
    which validation rejects as not finite with the record's position.
    """
    buf = cols.buf
    assert buf is not None and cols.dim is not None
    row = len(cols.rows)
    if isinstance(vector, list):
        try:
            # numpy arrays are buffers; its stubs do not say so.
            _row_packer(cols.dim).pack_into(buf, row * cols.dim * 4, *vector)  # type: ignore[arg-type]
            return
        except (OverflowError, struct.error):
            pass
    buf[row] = vector


def _records(
    payloads: list[bytes | None],
    keys: list[bytes | None] | None,
    cols: Columns,
    ok: list[int],
    decode_one: Any,
    undecodable: str,
    fast: bool = False,
) -> None:
    """Decode record payloads (JSON or msgpack) one by one into ``cols``.

    One decode per record, its vector copied into float32 at once: measured faster
    than one decode of the whole chunk as an array, whose millions of live Python
    floats cost allocation and garbage-collector time. With ``fast`` (JSON), simdjson
    takes every record it can (:mod:`operators.json_fast`) and msgspec the rest.
    """
    # One parser per call: a parser holds one document at a time and chunks may be
    # decoded in several worker threads at once.
    parse = simdjson.Parser().parse if fast else None
    for i in ok:
        key = keys[i] if keys is not None else None
        payload = payloads[i]
        if payload is None:
            _tombstone(cols, i, key)
            continue
        if parse is not None:
            got = parse_record(parse, payload)
            if got is not None:
                _add_fields(cols, i, key, *got)
                continue
        try:
            rec = decode_one(payload)
        except msgspec.ValidationError as exc:
            cols.bad.append((i, _validation_reason(str(exc)), str(exc)))
            continue
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            # msgspec raises UnicodeDecodeError for a string that is not UTF-8.
            cols.bad.append((i, undecodable, str(exc)))
            continue
        _add(cols, i, rec, key)


def _tombstone(cols: Columns, i: int, key: bytes | None) -> None:
    got = resolve_id(None, key, cols)
    if isinstance(got, str):
        cols.bad.append((i, got, "a tombstone (null value) needs a key to delete"))
        return
    cols.rows.append(i)
    cols.ids.append(got[0])
    cols.vectors.append(None)
    cols.deletes.append(True)
    cols.ts.append(None)
    cols.metadata.append(None)


def _raw_fast(
    payloads: list[bytes | None],
    keys: list[bytes | None] | None,
    cols: Columns,
    fmt: str,
    dim: int | None,
    max_bytes: int,
    slabs: SlabPool | None = None,
    stream: str | None = None,
) -> int | bool | None:
    """The common case in C-speed passes: no tombstone, every value the same size,
    every key a decimal id. Returns ``False`` when the chunk is not that case."""
    if not payloads or keys is None or None in payloads or None in keys:
        return False
    width = 4 if fmt == "f32" else 2
    size = len(payloads[0])  # type: ignore[arg-type]
    if size == 0 or size % width or size > max_bytes or (dim is not None and size != dim * width):
        return False
    n = len(payloads)
    parts: list[bytes] = payloads  # type: ignore[assignment]
    # Check before joining: a join into the stream's slab spends its space, and a
    # fallback after it would leave a gap that cuts the stream's next batch short.
    if sum(map(len, parts)) != n * size:
        return False  # some value has another size: the careful path finds it
    ids = decimal_key_ids(keys)
    if ids is None:
        return False
    blob = b"".join(parts) if slabs is None else slabs.join(parts, stream)
    d = size // width
    dense = np.frombuffer(blob, dtype="<f4" if fmt == "f32" else "<f2").reshape(n, d)
    cols.rows = list(range(n))
    cols.id_array = ids
    cols.dense = dense if fmt == "f32" else dense.astype(np.float32)
    cols.deletes = [False] * n
    return d


def _raw(
    payloads: list[bytes | None],
    keys: list[bytes | None] | None,
    cols: Columns,
    ok: list[int],
    fmt: str,
    dim: int | None,
) -> int | None:
    """Raw little-endian values: vectorised over the chunk. Returns the dimension."""
    width = 4 if fmt == "f32" else 2
    dtype = "<f4" if fmt == "f32" else "<f2"
    good: list[int] = []
    for i in ok:
        p = payloads[i]
        if p is not None and (len(p) % width or not p):
            cols.bad.append((i, "bad-vector", f"{len(p)} bytes are not whole {fmt} values"))
        else:
            good.append(i)
    values = [i for i in good if payloads[i] is not None]
    if values and dim is None:
        dim = len(payloads[values[0]]) // width  # type: ignore[arg-type]
    if dim is not None:
        expect = dim * width
        wrong = [i for i in values if len(payloads[i]) != expect]  # type: ignore[arg-type]
        for i in wrong:
            n = len(payloads[i]) // width  # type: ignore[arg-type]
            cols.bad.append((i, "wrong-dimension", f"the vector has {n} values, the stream {dim}"))
        if wrong:
            w = set(wrong)
            good = [i for i in good if i not in w]
            values = [i for i in values if i not in w]
    # Ids from keys, vectorised when every key is a decimal integer (the common case).
    key_list = [keys[i] if keys is not None else None for i in good]
    # Every key a decimal integer (the common case): one vectorised pass. Otherwise
    # resolve_id key by key, which follows the same rule, so a key's id never
    # depends on its neighbours.
    ids = decimal_key_ids(key_list)
    kept: list[int] = []
    if ids is None:
        id_list: list[int] = []
        for i, key in zip(good, key_list, strict=True):
            got = resolve_id(None, key, cols)
            if isinstance(got, str):
                cols.bad.append((i, got, "raw vector messages carry their id in the key"))
            else:
                kept.append(i)
                id_list.append(got[0])
        ids_arr = np.asarray(id_list, dtype=np.int64)
    else:
        kept, ids_arr = good, ids
    deleted = np.fromiter((payloads[i] is None for i in kept), dtype=bool, count=len(kept))
    d = dim or 0
    dense = np.zeros((len(kept), d), dtype=np.float32)
    live = np.flatnonzero(~deleted)
    if len(live):
        blob = b"".join(payloads[kept[j]] for j in live.tolist())  # type: ignore[misc]
        dense[live] = np.frombuffer(blob, dtype=dtype).reshape(len(live), d)
    cols.rows = kept
    cols.id_array = ids_arr
    cols.dense = dense
    cols.deletes = deleted.tolist()
    return dim


def decode_payloads(
    fmt: str,
    payloads: list[bytes | None],
    keys: list[bytes | None] | None,
    *,
    max_bytes: int,
    dim: int | None,
    json_fast: bool = True,
    slabs: SlabPool | None = None,
    stream: str | None = None,
    truncated: dict[int, int] | None = None,
) -> tuple[Columns, int | None]:
    """Decode ``payloads`` of format ``fmt``. Returns the columns and the dimension
    of raw formats (learned from the first vector when ``dim`` is None).

    ``json_fast=False`` decodes JSON with msgspec alone (the reference the fast
    path is tested against). ``slabs`` gives the raw formats reusable memory
    (:mod:`streams.slabs`), in which the joins of one ``stream`` follow each
    other. ``truncated`` names payloads the source cut short (index -> full size):
    they are rejected as oversized."""
    cols = Columns(dim=dim, capacity=len(payloads))
    if fmt in ("f32", "f16") and not truncated:
        fast = _raw_fast(payloads, keys, cols, fmt, dim, max_bytes, slabs, stream)
        if fast is not False:
            return cols, fast  # type: ignore[return-value]
    ok = []
    for i, p in enumerate(payloads):
        if truncated and i in truncated:
            cols.bad.append(
                (
                    i,
                    "oversized",
                    f"a line of {truncated[i]:,} bytes is over the limit of {max_bytes:,} "
                    "(max_payload_bytes / --max-payload-bytes); it was skipped while "
                    f"reading, and its first {len(p or b''):,} bytes are kept here",
                )
            )
        elif p is not None and len(p) > max_bytes:
            cols.bad.append(
                (
                    i,
                    "oversized",
                    f"{len(p):,} bytes is over the limit of "
                    f"{max_bytes:,} (max_payload_bytes / --max-payload-bytes)",
                )
            )
        else:
            ok.append(i)
    if fmt == "json":
        # A value beyond float32's range becomes inf in the cast (and is rejected
        # as not finite by validation), not a warning.
        with np.errstate(over="ignore"):
            _records(payloads, keys, cols, ok, _json_one.decode, "not-json", json_fast)
        dim = cols.dim
    elif fmt == "msgpack":
        _records(payloads, keys, cols, ok, _msgpack_one.decode, "not-msgpack")
        dim = cols.dim
    elif fmt in ("f32", "f16"):
        dim = _raw(payloads, keys, cols, ok, fmt, dim)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return cols, dim
