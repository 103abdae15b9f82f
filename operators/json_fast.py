"""The fast path for JSON records: simdjson parses, the vector never becomes Python.

msgspec's typed decode turns each vector into a list of Python floats, and copying
those into float32 costs as much as the parse (384-d rows: ~18 µs to decode, ~4-7
more to copy). simdjson parses the same line in ~11 µs and hands the vector over
as one buffer of doubles (``Array.as_buffer``), so no Python float is ever made.

The fast path takes only records whose every field has exactly the type the schema
wants (:class:`operators.codecs.JsonRecord`); anything else — invalid JSON, a wrong
type, a duplicate key, a nested vector, a number simdjson will not hold — returns
``None`` and the caller decodes that line with msgspec, which gives the precise
reason. Both paths round the same correctly-rounded double to float32, so a record
decodes bit for bit the same whichever path takes it (a property test holds them
to that).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import simdjson

__all__ = ["FastRecord", "parse_record"]

_Object = simdjson.Object
_Array = simdjson.Array
# What simdjson raises for bad input or a value it will not convert; the caller
# then asks msgspec, so none of these escape.
_REFUSED = (ValueError, TypeError, KeyError, IndexError, RuntimeError, OverflowError)

FastRecord = tuple[
    int | str | None,  # id
    npt.NDArray[np.float64] | None,  # vector (None: absent or null)
    float | None,  # ts
    dict[str, Any] | None,  # metadata
    bool,  # delete
    int | None,  # version
]
"""The fields of one record, in :class:`operators.codecs.JsonRecord`'s order."""


def parse_record(parse: Any, line: bytes) -> FastRecord | None:
    """Parse one JSON record with ``parse`` (a ``simdjson.Parser().parse``).

    Returns the record's fields, or ``None`` when msgspec must decide. Proxies into
    the parser's document never outlive this call: the parser refuses a new
    document while any are alive.
    """
    try:
        doc = parse(line)
        if type(doc) is not _Object:
            return None
        keys = list(doc.keys())
        if len(keys) > 2 and len(set(keys)) != len(keys):
            return None  # duplicate keys: which one wins is msgspec's call
        if len(keys) == 2 and keys[0] == keys[1]:
            return None
        rid: Any = doc["id"] if "id" in keys else None
        if rid is not None and type(rid) is not int and type(rid) is not str:
            return None
        vector = None
        if "vector" in keys:
            v = doc["vector"]
            if v is not None:
                if type(v) is not _Array:
                    return None
                # ``as_buffer`` flattens nested arrays; a line with a single "["
                # cannot nest, otherwise look at the vector's own text.
                if line.count(b"[") != 1 and "[" in v.mini[1:]:
                    return None
                vector = np.frombuffer(v.as_buffer(of_type="d"), dtype=np.float64)
        ts: Any = None
        meta: Any = None
        delete: Any = False
        version: Any = None
        if len(keys) > ("id" in keys) + ("vector" in keys):
            if "ts" in keys:
                ts = doc["ts"]
                if type(ts) is int:
                    ts = float(ts)
                elif ts is not None and type(ts) is not float:
                    return None
            if "metadata" in keys:
                meta = doc["metadata"]
                if meta is not None:
                    if type(meta) is not _Object:
                        return None
                    meta = meta.as_dict()
            if "delete" in keys:
                delete = doc["delete"]
                if type(delete) is not bool:
                    return None
            if "version" in keys:
                version = doc["version"]
                if version is not None and type(version) is not int:
                    return None
        return rid, vector, ts, meta, delete, version
    except _REFUSED:
        return None
