"""How record ids, Kafka keys and string ids become FAISS ids: one rule.

FAISS stores int64 ids and uses -1 for "no result", so ids are ``0 .. 2**63 - 1``.

- An integer id is used as it is when it is in that range; a negative one is
  rejected (``bad-id``), never stored and lost.
- A string (a JSON/msgpack string id, or a Kafka key) that is a *canonical decimal*
  (ASCII digits, no sign, no leading zero, at most ``2**63 - 1``) is that integer:
  the key ``b"123"`` and the JSON id ``"123"`` and the JSON id ``123`` are one id.
- Any other string (``"doc-17"``, ``"+5"``, ``"007"``, ``"-1"``, ``"²"``) maps to the
  low 63 bits of its BLAKE2b hash, the same in every process and on every machine,
  so an upsert of ``"doc-17"`` from any partition, file or run finds the earlier
  vector. The sink keeps the reverse map so results return the original keys.

The rule looks at one record only, never at the rest of its batch.
"""

from __future__ import annotations

import hashlib

__all__ = ["INT64_MAX", "INT64_MIN", "canonical_decimal", "key_id"]

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
_MASK = (1 << 63) - 1


def key_id(key: str) -> int:
    """The stable non-negative 63-bit id of a string key."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK


def canonical_decimal(text: str) -> int | None:
    """The integer ``text`` spells when it is a canonical decimal id (``0`` or ASCII
    digits without a leading zero, at most ``2**63 - 1``), else ``None``."""
    if not text or len(text) > 19 or not text.isascii() or not text.isdigit():
        return None
    if text[0] == "0" and len(text) > 1:
        return None
    value = int(text)
    return value if value <= INT64_MAX else None
