"""Answers as strict JSON: what the CLI prints and the HTTP server sends."""

from __future__ import annotations

import base64
import math
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON can hold it: NaN and infinities become null, bytes
    (a msgpack payload may hold some) ``{"base64": ...}`` as in dead letters."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return value
