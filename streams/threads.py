"""How FAISS's OpenMP threads wait: passively, unless the user chose otherwise.

Searches run FAISS's OpenMP loops while ingestion keeps the other cores busy. With
OpenMP's default (active) waiting, a thread that finishes its share spins at the
barrier and takes CPU from the adder and from the one thread still working; on a
2-core machine search p99 during ingestion was 2.2-2.5x idle, with passive waiting
1.7x (``benchmarks/bench_sink.py``). The setting is read once, when FAISS loads
OpenMP, so ``sinks`` and ``operators`` import this module before FAISS.
"""

from __future__ import annotations

import os

__all__ = ["OMP_WAIT_POLICY"]

OMP_WAIT_POLICY = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
