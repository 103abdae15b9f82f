"""The payload filter language (JSON), checked once and evaluated per segment.

A filter is a JSON object. Each key names a payload field and its condition; all
of them must hold::

    {"lang": "en", "year": {"gte": 2020}, "tags": {"in": ["news", "sport"]}}

- A plain value (string, number, bool) means equality.
- A condition object holds operators, all of which must hold:
  ``{"in": [...]}``, ``{"nin": [...]}``, ``{"ne": v}``,
  ``{"gt" | "gte" | "lt" | "lte": number}``, ``{"exists": bool}``.
- ``{"$or": [filter, ...]}``, ``{"$and": [filter, ...]}`` and ``{"$not": filter}``
  may appear at any level: in place of a field (over whole filters) or inside a
  field's condition object (over that field's conditions).

Semantics, as in MongoDB's query language: a vector whose payload lacks the field
fails ``eq``, ``in``, comparisons and ``exists: true``, and passes ``ne``, ``nin``
and ``exists: false``. Numbers compare across int and float; a bool is not a
number. A string never equals a number. Where an undeclared field holds a list,
``eq`` and ``in`` match when any element does.

A bad filter raises :class:`FilterError`, which names the part that is wrong (as a
path like ``$.year.gte``) and what would be right; HTTP answers it with 400 and the
CLI exits with 2.

Evaluation (:func:`evaluate`) gives a bool mask over a payload store's entries:
declared fields (:mod:`sinks.payloads`) in one vectorised pass per condition,
undeclared ones by decoding the entries' payloads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sinks.payloads import Column, PayloadSchema, _Block
from streams.errors import ConfigError

__all__ = ["All", "AnyOf", "Cond", "Filter", "FilterError", "Not", "evaluate", "parse_filter"]

_COMPARE = ("gt", "gte", "lt", "lte")
OPERATORS = ("eq", "ne", "in", "nin", *_COMPARE, "exists")


class FilterError(ConfigError):
    """A filter that cannot be evaluated: the message names the bad part."""


@dataclass(frozen=True, slots=True)
class Cond:
    """``field`` ``op`` ``value``."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class All:
    """Every part holds."""

    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one part holds."""

    parts: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The part does not hold."""

    part: Filter


Filter = Cond | All | AnyOf | Not
"""A checked filter."""


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    return json.dumps(value)[:60]


def parse_filter(
    spec: str | Mapping[str, Any] | Filter, schema: PayloadSchema | None = None
) -> Filter:
    """Check a filter (JSON text or a parsed object) and turn it into a tree.

    ``schema``: the declared fields; a condition that cannot hold for a declared
    field's type (``gt`` on a keyword, a string against an ``int`` field) is
    refused rather than silently matching nothing.

    Raises:
        FilterError: what is wrong, and where.
    """
    if isinstance(spec, (Cond, All, AnyOf, Not)):
        _check_tree(spec, schema or {})
        return spec
    if isinstance(spec, (str, bytes)):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            raise FilterError(f"the filter is not JSON: {exc}") from None
    return _object(spec, "$", schema or {})


def _object(obj: Any, path: str, schema: PayloadSchema) -> Filter:
    if not isinstance(obj, Mapping):
        raise FilterError(
            f"{path}: a filter is a JSON object of field -> condition, got {_describe(obj)}"
        )
    parts: list[Filter] = []
    for key, value in obj.items():
        if not isinstance(key, str):
            raise FilterError(f"{path}: field names are strings, got {key!r}")
        here = f"{path}.{key}"
        if key in ("$or", "$and"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{here}: takes a non-empty list of filters")
            subs = tuple(_object(v, f"{here}[{i}]", schema) for i, v in enumerate(value))
            parts.append(AnyOf(subs) if key == "$or" else All(subs))
        elif key == "$not":
            parts.append(Not(_object(value, here, schema)))
        elif key.startswith("$"):
            raise FilterError(f"{here}: unknown combinator {key!r}; use $or, $and or $not")
        else:
            parts.append(_condition(key, value, here, schema))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _condition(name: str, value: Any, path: str, schema: PayloadSchema) -> Filter:
    if not isinstance(value, Mapping):
        return _op(name, "eq", value, path, schema)
    if not value:
        raise FilterError(f'{path}: an empty condition; give an operator, e.g. {{"gte": 1}}')
    parts: list[Filter] = []
    for op, arg in value.items():
        here = f"{path}.{op}"
        if op in ("$or", "$and"):
            if not isinstance(arg, list) or not arg:
                raise FilterError(f"{here}: takes a non-empty list of conditions")
            subs = tuple(_condition(name, v, f"{here}[{i}]", schema) for i, v in enumerate(arg))
            parts.append(AnyOf(subs) if op == "$or" else All(subs))
        elif op == "$not":
            parts.append(Not(_condition(name, arg, here, schema)))
        else:
            parts.append(_op(name, op, arg, here, schema))
    return parts[0] if len(parts) == 1 else All(tuple(parts))


def _op(name: str, op: str, arg: Any, path: str, schema: PayloadSchema) -> Cond:
    if op not in OPERATORS:
        raise FilterError(
            f"{path}: unknown operator {op!r}; use one of {', '.join(OPERATORS)}, "
            "or $or / $and / $not"
        )
    kind = schema.get(name)
    if op in ("eq", "ne"):
        if arg is None:
            raise FilterError(f'{path}: null matches nothing; use {{"exists": false}}')
        if not _scalar(arg):
            hint = ' (use {"in": [...]} for one of several values)' if isinstance(arg, list) else ""
            raise FilterError(
                f"{path}: compares with a string, number or bool, got {_describe(arg)}{hint}"
            )
        _check_kind(name, kind, arg, path)
    elif op in ("in", "nin"):
        if not isinstance(arg, list) or not all(_scalar(v) for v in arg):
            raise FilterError(
                f"{path}: takes a list of strings, numbers or bools, got {_describe(arg)}"
            )
        for i, v in enumerate(arg):
            _check_kind(name, kind, v, f"{path}[{i}]")
        arg = tuple(arg)
    elif op in _COMPARE:
        if not _number(arg):
            raise FilterError(f"{path}: compares with a number, got {_describe(arg)}")
        if kind in ("keyword", "bool"):
            raise FilterError(
                f"{path}: field {name!r} is declared {kind}; {op} needs a number field"
            )
    elif not isinstance(arg, bool):
        raise FilterError(f"{path}: takes true or false, got {_describe(arg)}")
    return Cond(name, op, arg)


def _check_tree(node: Filter, schema: PayloadSchema) -> None:
    """Check a tree parsed without ``schema`` against it."""
    if isinstance(node, Cond):
        _op(node.field, node.op, list(node.value) if isinstance(node.value, tuple) else node.value,
            f"$.{node.field}.{node.op}", schema)  # fmt: skip
    elif isinstance(node, Not):
        _check_tree(node.part, schema)
    else:
        for part in node.parts:
            _check_tree(part, schema)


def _check_kind(name: str, kind: str | None, value: Any, path: str) -> None:
    if kind is None:
        return
    ok = {
        "keyword": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": _number(value),
        "float": _number(value),
    }[kind]
    if not ok:
        raise FilterError(
            f"{path}: field {name!r} is declared {kind}; {_describe(value)} can never match it"
        )


# -- evaluation -------------------------------------------------------------------


Mask = npt.NDArray[np.bool_]


class _Scan:
    """Undeclared fields of a block's entries, decoded once per evaluation."""

    def __init__(self, block: _Block) -> None:
        self.block = block
        self._rests: list[dict[str, Any]] | None = None

    def values(self, name: str) -> list[Any]:
        if self._rests is None:
            b = self.block
            if b.offsets is None:
                self._rests = [{}] * len(b)
            else:
                self._rests = [b.rest(i) for i in range(len(b))]
        missing = _MISSING
        return [r.get(name, missing) for r in self._rests]


_MISSING = object()


def evaluate(node: Filter, block: _Block) -> Mask:
    """Which entries of ``block`` pass ``node``."""
    return _eval(node, block, _Scan(block))


def _eval(node: Filter, block: _Block, scan: _Scan) -> Mask:
    if isinstance(node, Cond):
        col = block.columns.get(node.field)
        if col is not None and col.mismatched == 0:
            return _column_mask(node, col)
        mask = _scan_mask(node, scan.values(node.field))
        if col is not None:
            # Values of the declared type are in the column, the others in the blob.
            negated = node.op in ("ne", "nin") or (node.op == "exists" and not node.value)
            colmask = _column_mask(node, col)
            mask = (mask & colmask) if negated else (mask | colmask)
        return mask
    if isinstance(node, All):
        out = _eval(node.parts[0], block, scan)
        for part in node.parts[1:]:
            out &= _eval(part, block, scan)
        return out
    if isinstance(node, AnyOf):
        out = _eval(node.parts[0], block, scan)
        for part in node.parts[1:]:
            out |= _eval(part, block, scan)
        return out
    return ~_eval(node.part, block, scan)


def _column_mask(node: Cond, col: Column) -> Mask:
    op, arg = node.op, node.value
    present = col.present
    none: Mask = np.zeros(len(present), bool)
    if op == "exists":
        return present.copy() if arg else ~present
    if op in ("ne", "nin"):
        return ~_column_mask(Cond(node.field, "eq" if op == "ne" else "in", arg), col)
    if op == "in":
        for v in arg:
            none |= _column_mask(Cond(node.field, "eq", v), col)
        return none
    values = col.values
    if op == "eq":
        if col.kind == "keyword":
            code = col.code(arg) if isinstance(arg, str) else -1
            return np.equal(values, code) if code >= 0 else none
        if (col.kind == "bool") != isinstance(arg, bool) or not isinstance(arg, (int, float)):
            return none
        same: Mask = present & np.equal(values, arg)
        return same
    if col.kind not in ("int", "float"):
        return none  # (refused by parse_filter for a declared field)
    # gt / gte / lt / lte on a number column
    cmp = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}[op]
    out: Mask = present & cmp(values, arg)
    return out


def _equal(value: Any, arg: Any) -> bool:
    if isinstance(value, list):
        return any(_equal(v, arg) for v in value)
    if isinstance(arg, bool) or isinstance(value, bool):
        return type(arg) is type(value) and value == arg
    if isinstance(arg, str) or isinstance(value, str):
        return type(arg) is type(value) and value == arg
    return _number(value) and value == arg


def _test(op: str, arg: Any, v: Any) -> bool:
    """Whether one decoded value (:data:`_MISSING` when absent) passes."""
    if op == "exists":
        return (v is not _MISSING) is bool(arg)
    if op == "eq":
        return v is not _MISSING and _equal(v, arg)
    if op == "ne":
        return v is _MISSING or not _equal(v, arg)
    if op == "in":
        return v is not _MISSING and any(_equal(v, a) for a in arg)
    if op == "nin":
        return v is _MISSING or not any(_equal(v, a) for a in arg)
    if not _number(v):
        return False
    if op == "gt":
        return bool(v > arg)
    if op == "gte":
        return bool(v >= arg)
    if op == "lt":
        return bool(v < arg)
    return bool(v <= arg)


def _scan_mask(node: Cond, values: list[Any]) -> Mask:
    op, arg = node.op, node.value
    return np.fromiter((_test(op, arg, v) for v in values), bool, len(values))
