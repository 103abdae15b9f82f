"""Search-time parameters (``nprobe``, ``efSearch``...) for every segment.

Written in FAISS's ``ParameterSpace`` syntax (``"nprobe=32,efSearch=128"``) or as a
mapping, and turned into a per-call ``faiss.SearchParameters`` object for each
segment's index type. Nothing is set on the index itself: a search never mutates an
index another thread may be searching, and two searches with different parameters
can run at once.

Names:

- ``nprobe``: inverted lists an IVF index visits (more: higher recall, slower).
- ``max_codes``: at most this many codes an IVF search scans (0: no limit).
- ``efSearch``: the candidate list of an HNSW search (at least ``k``).
- ``quantizer_efSearch``: the same, for the HNSW coarse quantizer of an IVF index.
- ``ht``: the Hamming threshold of a polysemous PQ search.

A name the index type does not have is an error that lists the names it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faiss

from streams.errors import ConfigError

__all__ = [
    "KNOWN_PARAMS",
    "SearchParams",
    "applicable_params",
    "make_search_parameters",
    "parse_params",
]

SearchParams = dict[str, int]
"""Parameter name -> value."""

KNOWN_PARAMS = ("nprobe", "max_codes", "efSearch", "quantizer_efSearch", "ht")


def parse_params(spec: str | Mapping[str, Any] | None) -> SearchParams:
    """``"nprobe=32,efSearch=128"`` (or a mapping) as checked name -> value.

    Raises:
        ConfigError: malformed text, an unknown name, or a value that is not a
            non-negative integer.
    """
    if spec is None:
        return {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(spec, str):
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(f"search parameter {part!r}: expected NAME=VALUE")
            pairs.append((name.strip(), value.strip()))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        raise ConfigError(f"search parameters must be NAME=VALUE text or an object, not {spec!r}")
    out: SearchParams = {}
    for name, value in pairs:
        if name not in KNOWN_PARAMS:
            raise ConfigError(
                f"unknown search parameter {name!r}; known: {', '.join(KNOWN_PARAMS)}"
            )
        if isinstance(value, bool):
            raise ConfigError(f"search parameter {name}: {value!r} is not a number")
        try:
            number = int(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"search parameter {name}={value!r}: not an integer") from None
        if not isinstance(number, int) or number < 0:
            raise ConfigError(f"search parameter {name}={value!r}: expected an integer >= 0")
        if name in ("nprobe", "efSearch", "quantizer_efSearch") and number < 1:
            raise ConfigError(f"search parameter {name} must be at least 1")
        out[name] = number
    return out


def _inner(index: Any) -> Any:
    """The index under an id map."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return index


def applicable_params(index: Any) -> tuple[str, ...]:
    """The parameter names an index (as a segment holds it) takes."""
    inner = _inner(index)
    if isinstance(inner, faiss.IndexPreTransform):
        return applicable_params(faiss.downcast_index(inner.index))
    if isinstance(inner, faiss.IndexIVF):
        names = ["nprobe", "max_codes"]
        if isinstance(faiss.downcast_index(inner.quantizer), faiss.IndexHNSW):
            names.append("quantizer_efSearch")
        return tuple(names)
    if isinstance(inner, faiss.IndexHNSW):
        return ("efSearch",)
    if isinstance(inner, faiss.IndexPQ):
        return ("ht",)
    return ()


def make_search_parameters(
    index: Any, params: SearchParams, sel: Any = None
) -> tuple[Any, list[Any]]:
    """A ``faiss.SearchParameters`` object for one search of ``index`` with
    ``params`` (and the id selector ``sel``), or ``None`` when there is nothing to
    pass. Also returns the objects the parameters point to, which must stay alive
    until the search is done.

    Raises:
        ConfigError: a parameter this index type does not have.
    """
    keep: list[Any] = []
    if not params and sel is None:
        return None, keep
    inner = _inner(index)
    unused = set(params)
    obj = _for(inner, params, unused, keep)
    if unused:
        have = applicable_params(index)
        raise ConfigError(
            f"search parameter {', '.join(sorted(unused))} does not apply to this index "
            f"({type(inner).__name__}); it takes {', '.join(have) if have else 'none'}"
        )
    if sel is not None:
        obj.sel = sel
    return obj, keep


def _for(inner: Any, params: SearchParams, unused: set[str], keep: list[Any]) -> Any:
    obj: Any
    if isinstance(inner, faiss.IndexPreTransform):
        obj = faiss.SearchParametersPreTransform()
        sub = _for(faiss.downcast_index(inner.index), params, unused, keep)
        keep.append(sub)
        obj.index_params = sub
        return obj
    if isinstance(inner, faiss.IndexIVF):
        obj = faiss.SearchParametersIVF()
        if "nprobe" in params:
            obj.nprobe = int(params["nprobe"])
            unused.discard("nprobe")
        if "max_codes" in params:
            obj.max_codes = int(params["max_codes"])
            unused.discard("max_codes")
        if "quantizer_efSearch" in params and isinstance(
            faiss.downcast_index(inner.quantizer), faiss.IndexHNSW
        ):
            q = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            q.efSearch = int(params["quantizer_efSearch"])
            keep.append(q)
            obj.quantizer_params = q
            unused.discard("quantizer_efSearch")
        return obj
    if isinstance(inner, faiss.IndexHNSW):
        obj = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        if "efSearch" in params:
            obj.efSearch = int(params["efSearch"])
            unused.discard("efSearch")
        return obj
    if isinstance(inner, faiss.IndexPQ):
        obj = faiss.SearchParametersPQ()  # type: ignore[attr-defined]
        if "ht" in params:
            obj.polysemous_ht = int(params["ht"])
            unused.discard("ht")
        return obj
    return faiss.SearchParameters()
