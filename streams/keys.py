"""Stable 63-bit ids for string keys.

FAISS stores int64 ids. String keys (``"doc-17"``) map to the low 63 bits of their
BLAKE2b hash, which is the same in every process and on every machine, so an upsert
of ``"doc-17"`` from any partition, file or run finds the earlier vector. The sink
keeps the reverse map so results return the original keys.
"""

from __future__ import annotations

import hashlib

__all__ = ["INT64_MAX", "INT64_MIN", "key_id"]

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
_MASK = (1 << 63) - 1


def key_id(key: str) -> int:
    """The stable non-negative 63-bit id of a string key."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK
