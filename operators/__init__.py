"""Stream operators: decode, batch, normalize, quantize.

Each factory returns an :class:`~streams.operator.Operator` with a stable name;
compose them with ``|``.
"""

import streams.threads  # noqa: F401 - before FAISS loads OpenMP
from operators.batch import batch
from operators.codecs import JsonRecord, MsgpackRecord
from operators.decode import decode
from operators.normalize import l2_normalize, normalize
from operators.quantize import Codec, quantize

__all__ = [
    "Codec",
    "JsonRecord",
    "MsgpackRecord",
    "batch",
    "decode",
    "l2_normalize",
    "normalize",
    "quantize",
]
