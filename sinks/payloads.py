"""Payloads: the metadata stored with each vector, in columns, per segment.

A record's payload is its JSON ``metadata`` object or msgpack map, or for f32/f16
Kafka messages its headers (name -> UTF-8 value). A segment keeps the payloads of
the vectors it holds in a :class:`PayloadStore`, written with the segment into
every snapshot as one content-addressed object, so vectors, payloads and source
positions are always of the same moment. An upsert puts the new payload where the
new vector goes (the active segment) and removes the old one with the old vector;
a delete removes both.

Layout of one store (a few arrays, no Python object per vector):

- ``ids``: the id of each entry, in the order entries were added; flat-code and
  HNSW segments add vectors in the same order, so entry ``i`` is usually row ``i``
  of the index (:meth:`PayloadStore.rows_in` checks, and maps ids otherwise).
- Declared fields (``--payload-index FIELD[:keyword|int|float|bool]``) as typed
  columns: keywords dictionary-encoded (one int32 code per entry and the distinct
  strings once), numbers as int64 / float64, bools as bools, each with a mask of
  the entries that have the field. A filter on them is one vectorised pass.
- Everything else as msgpack, one blob with an offset per entry: returned with
  results, and scanned (decoded entry by entry) by filters on undeclared fields.

A declared field holding a value of another type (a string where ``int`` was
declared) keeps the value in the blob, so it is stored and returned, but it is not
in the column that filters read; the store counts such values per field
(``inspect`` shows them) and the sink logs the first one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from streams.errors import ConfigError

__all__ = [
    "FIELD_KINDS",
    "FieldStats",
    "PayloadSchema",
    "PayloadStore",
    "parse_payload_index",
]

FIELD_KINDS = ("keyword", "int", "float", "bool")
"""Types a declared payload field can have."""

PayloadSchema = dict[str, str]
"""Declared field -> its kind (one of :data:`FIELD_KINDS`)."""

Ids = npt.NDArray[np.int64]
Payload = dict[str, Any] | None

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(dict[str, Any])
_DTYPES = {"keyword": np.int32, "int": np.int64, "float": np.float64, "bool": np.bool_}
_INT64 = (-(1 << 63), (1 << 63) - 1)


def parse_payload_index(specs: Iterable[str]) -> PayloadSchema:
    """``["lang", "year:int"]`` as a schema (a field without a type is a keyword).

    Raises:
        ConfigError: an empty name, an unknown type, or a field declared twice.
    """
    schema: PayloadSchema = {}
    for spec in specs:
        name, _, kind = spec.partition(":")
        name, kind = name.strip(), (kind.strip() or "keyword")
        if not name:
            raise ConfigError(f"--payload-index {spec!r}: give a field name, e.g. lang:keyword")
        if kind not in FIELD_KINDS:
            raise ConfigError(
                f"--payload-index {spec!r}: unknown type {kind!r}; use one of "
                f"{', '.join(FIELD_KINDS)}"
            )
        if name in schema and schema[name] != kind:
            raise ConfigError(
                f"--payload-index declares {name!r} twice, as {schema[name]} and {kind}"
            )
        schema[name] = kind
    return schema


def _beyond_int64(kind: str, raw: list[Any]) -> bool:
    """Whether an int (or float) column's integers reach beyond int64 (checked
    at C speed: Python ints have no bound)."""
    if kind not in ("int", "float"):
        return False
    ints = [v for v in raw if type(v) is int]
    return bool(ints) and (max(ints) > _INT64[1] or min(ints) < _INT64[0])


def _odd(schema: PayloadSchema, name: str, value: Any) -> bool:
    """A declared field's value that its column cannot hold."""
    return value is not None and not _fits(schema[name], value)


def _fits(kind: str, value: Any) -> bool:
    t = type(value)
    if kind == "keyword":
        return t is str
    if kind == "int":
        return t is int and _INT64[0] <= value <= _INT64[1]
    if kind == "float":
        return t is float or (t is int and _INT64[0] <= value <= _INT64[1])
    return t is bool


@dataclass(slots=True)
class Column:
    """One declared field over a store's entries."""

    kind: str
    values: npt.NDArray[Any]
    present: npt.NDArray[np.bool_]
    vocab: list[str] = field(default_factory=list)  # keywords: code -> string
    mismatched: int = 0  # values of another type, kept in the blob instead
    _codes: dict[str, int] | None = None

    def code(self, value: str) -> int:
        """The code of keyword ``value``; -1 when no entry has it."""
        if self._codes is None:
            self._codes = {s: i for i, s in enumerate(self.vocab)}
        return self._codes.get(value, -1)

    def value(self, i: int) -> Any:
        """The Python value of entry ``i`` (which has the field)."""
        v = self.values[i]
        if self.kind == "keyword":
            return self.vocab[int(v)]
        if self.kind == "int":
            return int(v)
        if self.kind == "float":
            return float(v)
        return bool(v)

    def take(self, rows: npt.NDArray[np.intp]) -> Column:
        return Column(self.kind, self.values[rows], self.present[rows], self.vocab, self.mismatched)


def _column(kind: str, raw: Sequence[Any]) -> Column:
    """A column from per-entry values (``None`` where absent or mistyped).

    Built with C-speed passes (``map``, ``dict.fromkeys``), no Python statement per
    entry: this runs on the write path for every batch."""
    n = len(raw)
    present = np.fromiter(map(_is_not_none, raw), bool, n)
    if kind == "keyword":
        distinct = dict.fromkeys(raw)
        distinct.pop(None, None)
        vocab = list(distinct)
        codes_of: dict[Any, int] = {s: i for i, s in enumerate(vocab)}
        codes_of[None] = -1
        codes = np.fromiter(map(codes_of.__getitem__, raw), np.int32, n)
        return Column(kind, codes, present, vocab)
    fill: Any = False if kind == "bool" else 0
    values: npt.NDArray[Any] = np.array(
        [fill if v is None else v for v in raw], dtype=_DTYPES[kind]
    )
    return Column(kind, values, present)


def _is_not_none(v: Any) -> bool:
    return v is not None


_NONE = type(None)
_TYPES: dict[str, set[type]] = {
    "keyword": {str, _NONE},
    "int": {int, _NONE},
    "float": {int, float, _NONE},
    "bool": {bool, _NONE},
}


def _concat_columns(kind: str, parts: Sequence[Column | None], sizes: Sequence[int]) -> Column:
    values: list[npt.NDArray[Any]] = []
    present: list[npt.NDArray[np.bool_]] = []
    vocab: dict[str, int] = {}
    mismatched = 0
    for col, n in zip(parts, sizes, strict=True):
        if col is None:
            values.append(np.zeros(n, _DTYPES[kind]) - (1 if kind == "keyword" else 0))
            present.append(np.zeros(n, bool))
            continue
        mismatched += col.mismatched
        if kind == "keyword":
            remap = np.array([vocab.setdefault(s, len(vocab)) for s in col.vocab], np.int32)
            codes = np.where(col.present, remap[np.maximum(col.values, 0)] if len(remap) else 0, -1)
            values.append(codes.astype(np.int32))
        else:
            values.append(col.values)
        present.append(col.present)
    return Column(
        kind,
        np.concatenate(values) if values else np.zeros(0, _DTYPES[kind]),
        np.concatenate(present) if present else np.zeros(0, bool),
        list(vocab),
        mismatched,
    )


@dataclass(slots=True)
class _Block:
    """The entries of a store at one moment (never changed once made)."""

    ids: Ids
    has: npt.NDArray[np.bool_]  # the entry has a payload (False: the record had none)
    offsets: npt.NDArray[np.int64] | None  # blob offsets, n + 1; None: every rest empty
    blob: bytes
    columns: dict[str, Column]
    _order: npt.NDArray[np.intp] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def rest(self, i: int) -> dict[str, Any]:
        if self.offsets is None:
            return {}
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return _decoder.decode(self.blob[lo:hi]) if hi > lo else {}

    def get(self, i: int) -> Payload:
        if not self.has[i]:
            return None
        out = self.rest(i)
        for name, col in self.columns.items():
            if col.present[i]:
                out[name] = col.value(i)
        return out

    def find(self, ids: Ids) -> npt.NDArray[np.intp]:
        """Entry of each of ``ids``; -1 where absent."""
        if self._order is None:
            self._order = np.argsort(self.ids, kind="stable")
        if not len(self.ids):
            return np.full(len(ids), -1, np.intp)
        pos = np.searchsorted(self.ids, ids, sorter=self._order)
        pos = np.minimum(pos, len(self.ids) - 1)
        at = self._order[pos]
        return np.where(self.ids[at] == ids, at, -1)

    def take(self, rows: npt.NDArray[np.intp]) -> _Block:
        offsets, blob = None, b""
        if self.offsets is not None and len(rows):
            lo, hi = self.offsets[rows], self.offsets[rows + 1]
            sizes = hi - lo
            if sizes.any():
                mv = memoryview(self.blob)
                blob = b"".join(mv[a:b] for a, b in zip(lo.tolist(), hi.tolist(), strict=True))
                offsets = np.zeros(len(rows) + 1, np.int64)
                np.cumsum(sizes, out=offsets[1:])
        cols = {name: col.take(rows) for name, col in self.columns.items()}
        return _Block(self.ids[rows], self.has[rows], offsets, blob, cols)


def _empty_block(schema: PayloadSchema) -> _Block:
    return _Block(
        np.zeros(0, np.int64),
        np.zeros(0, bool),
        None,
        b"",
        {name: _column(kind, []) for name, kind in schema.items()},
    )


def _concat(blocks: Sequence[_Block], schema: PayloadSchema) -> _Block:
    blocks = [b for b in blocks if len(b)]
    if len(blocks) == 1 and set(blocks[0].columns) == set(schema):
        return blocks[0]
    if not blocks:
        return _empty_block(schema)
    sizes = [len(b) for b in blocks]
    offsets = None
    blob = b""
    if any(b.offsets is not None for b in blocks):
        parts = []
        base = 0
        for b in blocks:
            if b.offsets is None:
                parts.append(np.full(len(b), base, np.int64))
            else:
                parts.append(b.offsets[:-1] + base)
                base += int(b.offsets[-1])
        offsets = np.concatenate([*parts, np.array([base], np.int64)])
        blob = b"".join(b.blob for b in blocks)
    names = dict.fromkeys([*schema, *(n for b in blocks for n in b.columns)])
    columns = {}
    for name in names:
        kind = schema.get(name) or next(b.columns[name].kind for b in blocks if name in b.columns)
        columns[name] = _concat_columns(kind, [b.columns.get(name) for b in blocks], sizes)
    return _Block(
        np.concatenate([b.ids for b in blocks]),
        np.concatenate([b.has for b in blocks]),
        offsets,
        blob,
        columns,
    )


def build_block(ids: Ids, payloads: Sequence[Payload], schema: PayloadSchema) -> _Block:
    """A block of ``ids`` with their ``payloads`` (``None``: no payload): declared
    fields into columns, the rest msgpack-encoded."""
    n = len(ids)
    has = np.fromiter((p is not None for p in payloads), bool, n)
    columns: dict[str, Column] = {}
    # Entries with a value of another type than declared: it stays in their rest.
    odd: set[int] = set()
    for name, kind in schema.items():
        raw = [p.get(name) if p is not None else None for p in payloads]
        bad: list[int] = []
        if not set(map(type, raw)) <= _TYPES[kind] or _beyond_int64(kind, raw):
            bad = [i for i, v in enumerate(raw) if v is not None and not _fits(kind, v)]
        for i in bad:
            raw[i] = None
        odd.update(bad)
        columns[name] = _column(kind, raw)
        columns[name].mismatched = len(bad)
    declared = set(schema)
    offsets = None
    blob = b""
    if has.any():
        rests: list[dict[str, Any]] = [{}] * n
        for i, p in enumerate(payloads):
            if p is None or (p.keys() <= declared and i not in odd):
                continue  # everything it holds is in the columns
            rests[i] = {
                k: v for k, v in p.items() if k not in declared or (i in odd and _odd(schema, k, v))
            }
        if any(rests):
            encoded = [_encoder.encode(r) if r else b"" for r in rests]
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(np.fromiter(map(len, encoded), np.int64, n), out=offsets[1:])
            blob = b"".join(encoded)
    return _Block(np.ascontiguousarray(ids, np.int64), has, offsets, blob, columns)


class _Wire(msgspec.Struct, array_like=True):
    """A store as written into a snapshot object."""

    ids: bytes
    has: bytes
    offsets: bytes | None
    blob: bytes
    columns: list[tuple[str, str, bytes, bytes, list[str], int]]


_wire_encoder = msgspec.msgpack.Encoder()
_wire_decoder = msgspec.msgpack.Decoder(_Wire)


@dataclass(slots=True)
class FieldStats:
    """What ``inspect`` reports of one payload field."""

    type: str
    count: int
    indexed: bool
    mismatched: int = 0


class PayloadStore:
    """The payloads of one segment's vectors (see the module docstring).

    A store is *blank* until the first payload arrives: none of the segment's
    vectors has one, and it costs no memory (an index without payloads pays
    nothing). :meth:`materialize` gives it an entry per vector the segment holds;
    from then on it has exactly one entry per live vector of the segment.

    Mutated only under the owning shard's write lock; readers (searches, under the
    read lock, or merges reading a sealed segment without it) take :attr:`block`,
    which is replaced, never changed.
    """

    __slots__ = ("_block", "_lock", "_pending", "schema")

    def __init__(self, schema: PayloadSchema, block: _Block | None = None) -> None:
        self.schema = schema
        self._block = block
        self._pending: list[_Block] = []
        self._lock = threading.Lock()

    @property
    def blank(self) -> bool:
        """No vector of the segment has a payload, and no entry is kept."""
        return self._block is None

    def materialize(self, ids: Ids) -> None:
        """Give a blank store an entry (without payload) for each of ``ids``."""
        if self._block is None:
            self._block = build_block(ids, [None] * len(ids), self.schema)

    def with_schema(self, schema: PayloadSchema) -> PayloadStore:
        """This store under ``schema`` (columns built for newly declared fields)."""
        if schema == self.schema:
            return self
        if self._block is None:
            return PayloadStore(schema)
        block = self.block
        if set(schema) - set(block.columns):
            block = _redeclare(block, schema)
        return PayloadStore(schema, block)

    def __len__(self) -> int:
        return 0 if self._block is None else len(self.block)

    @property
    def block(self) -> _Block:
        """The current entries (appends folded in); an empty block when blank."""
        if self._block is None:
            return _empty_block(self.schema)
        if self._pending:
            with self._lock:
                if self._pending:
                    self._block = _concat([self._block, *self._pending], self.schema)
                    self._pending = []
        return self._block

    @property
    def empty(self) -> bool:
        """No entry has a payload."""
        return self._block is None or not self.block.has.any()

    def append(self, ids: Ids, payloads: Sequence[Payload] | None) -> None:
        """Add entries for ``ids`` (added to the index in this order); a blank
        store stays blank while no payload comes."""
        if self._block is None:
            if payloads is None or all(p is None for p in payloads):
                return
            raise AssertionError("materialize() a blank store before its first payload")
        if payloads is None:
            payloads = [None] * len(ids)
        self._pending.append(build_block(ids, payloads, self.schema))

    def remove(self, ids: Ids) -> None:
        """Drop the entries of ``ids`` (those present)."""
        if self._block is None:
            return
        block = self.block
        at = block.find(np.ascontiguousarray(ids, np.int64))
        at = at[at >= 0]
        if len(at):
            keep = np.ones(len(block), bool)
            keep[at] = False
            smaller = block.take(np.flatnonzero(keep))
            if block._order is not None:
                # The id order of what is left, in one pass instead of a new sort
                # (upserts remove from big sealed segments batch after batch).
                order = block._order[keep[block._order]]
                smaller._order = (np.cumsum(keep) - 1)[order]
            self._block = smaller

    def get(self, ids: Ids) -> list[Payload]:
        """The payload of each of ``ids`` (``None`` where it has none or is absent)."""
        block = self.block
        at = block.find(np.ascontiguousarray(ids, np.int64))
        return [block.get(i) if i >= 0 else None for i in at.tolist()]

    @staticmethod
    def gathered(schema: PayloadSchema, stores: Sequence[PayloadStore], ids: Ids) -> PayloadStore:
        """A store for exactly ``ids``, with their entries from ``stores`` (the
        inputs of a merge, compaction or re-encode) and no payload for the ids none
        of them has; blank when every input is."""
        blocks = [s.block for s in stores if not s.blank]
        if not blocks:
            return PayloadStore(schema)
        ids = np.ascontiguousarray(ids, np.int64)
        joined = _concat(blocks, schema)
        at = joined.find(ids)
        found = joined.take(np.sort(at[at >= 0]))
        rest = ids[at < 0]
        if len(rest):
            found = _concat([found, build_block(rest, [None] * len(rest), schema)], schema)
        return PayloadStore(schema, found)

    def rows_in(self, index_ids: Ids) -> npt.NDArray[np.intp] | None:
        """The row of each entry in an index whose row ``r`` holds ``index_ids[r]``
        (-1: not there); ``None`` when entry ``i`` is row ``i`` for every entry."""
        ids = self.block.ids
        if len(ids) == len(index_ids) and np.array_equal(ids, index_ids):
            return None
        order = np.argsort(index_ids, kind="stable")
        if not len(index_ids):
            return np.full(len(ids), -1, np.intp)
        pos = np.minimum(np.searchsorted(index_ids, ids, sorter=order), len(index_ids) - 1)
        rows = order[pos]
        return np.where(index_ids[rows] == ids, rows, -1)

    def stats(self) -> dict[str, FieldStats]:
        """Per field: its type, how many entries have it, whether it is indexed."""
        if self._block is None:
            return {}
        block = self.block
        out: dict[str, FieldStats] = {}
        for name, col in block.columns.items():
            out[name] = FieldStats(col.kind, int(col.present.sum()), True, col.mismatched)
        if block.offsets is not None:
            for i in np.flatnonzero(np.diff(block.offsets)).tolist():
                for name, value in block.rest(i).items():
                    kind = _kind_of(value)
                    got = out.get(name)
                    if got is None:
                        out[name] = FieldStats(kind, 1, False)
                    elif not got.indexed:
                        got.count += 1
                        if got.type != kind:
                            got.type = "mixed"
        return out

    @property
    def nbytes(self) -> int:
        """Bytes the store holds in memory."""
        if self._block is None:
            return 0
        b = self.block
        total = b.ids.nbytes + b.has.nbytes + len(b.blob)
        total += 0 if b.offsets is None else b.offsets.nbytes
        for col in b.columns.values():
            total += col.values.nbytes + col.present.nbytes + sum(map(len, col.vocab))
        return total

    def to_bytes(self) -> bytes:
        """The store as one snapshot object (not for a blank store)."""
        assert self._block is not None
        b = self.block
        return _wire_encoder.encode(
            _Wire(
                b.ids.astype("<i8").tobytes(),
                np.packbits(b.has).tobytes(),
                None if b.offsets is None else b.offsets.astype("<i8").tobytes(),
                b.blob,
                [
                    (
                        name,
                        col.kind,
                        col.values.astype(np.dtype(_DTYPES[col.kind]).newbyteorder("<")).tobytes(),
                        np.packbits(col.present).tobytes(),
                        col.vocab,
                        col.mismatched,
                    )
                    for name, col in b.columns.items()
                ],
            )
        )

    @classmethod
    def from_bytes(cls, schema: PayloadSchema, data: bytes) -> PayloadStore:
        """A store read from its snapshot object.

        Raises:
            ValueError: the object is not a payload store.
        """
        try:
            w = _wire_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"damaged payload object: {exc}") from None
        ids = np.frombuffer(w.ids, "<i8").astype(np.int64)
        n = len(ids)
        has = np.unpackbits(np.frombuffer(w.has, np.uint8), count=n).astype(bool)
        offsets = None if w.offsets is None else np.frombuffer(w.offsets, "<i8").astype(np.int64)
        if offsets is not None and (len(offsets) != n + 1 or int(offsets[-1]) != len(w.blob)):
            raise ValueError("damaged payload object: offsets do not fit the blob")
        columns = {}
        for name, kind, values, present, vocab, mismatched in w.columns:
            if kind not in _DTYPES:
                raise ValueError(f"damaged payload object: field {name!r} of unknown type {kind!r}")
            dtype = np.dtype(_DTYPES[kind]).newbyteorder("<")
            vals: npt.NDArray[Any] = np.frombuffer(values, dtype).astype(_DTYPES[kind])
            pres = np.unpackbits(np.frombuffer(present, np.uint8), count=n).astype(bool)
            if len(vals) != n:
                raise ValueError(f"damaged payload object: field {name!r} has {len(vals)} values")
            columns[name] = Column(kind, vals, pres, list(vocab), mismatched)
        block = _Block(ids, has, offsets, bytes(w.blob), columns)
        store = cls(schema, block)
        # A field declared since the segment was written gets its column now.
        missing = set(schema) - set(columns)
        if missing and n:
            store._block = _redeclare(block, schema)
        return store


def _redeclare(block: _Block, schema: PayloadSchema) -> _Block:
    payloads = [block.get(i) for i in range(len(block))]
    return build_block(block.ids, payloads, schema)


def _kind_of(value: Any) -> str:
    t = type(value)
    if t is bool:
        return "bool"
    if t is int:
        return "int"
    if t is float:
        return "float"
    if t is str:
        return "keyword"
    if t is list:
        return "list"
    if t is dict:
        return "object"
    return "null" if value is None else t.__name__
