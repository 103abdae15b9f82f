"""The shard's id set (sinks.idset) against a Python set, through merges."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.idset import IdSet

ids = st.lists(st.integers(-(2**40), 2**40), max_size=40, unique=True)


@settings(max_examples=80, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["add", "discard"]), ids), max_size=40))
def test_an_id_set_answers_as_a_python_set_does(steps: list[tuple[str, list[int]]]) -> None:
    model: set[int] = set()
    held = IdSet()
    for action, batch in steps:
        arr = np.array(batch, dtype=np.int64)
        present = held.contains(arr)
        assert present.tolist() == [i in model for i in batch]
        if action == "add":
            held.add(arr[~present])  # as the shard adds: only what is not there
            model |= set(batch)
        else:
            held.discard(arr)
            model -= set(batch)
        assert len(held) == len(model)
    assert held.to_array().tolist() == sorted(model)


def test_runs_merge_into_one_sorted_array() -> None:
    held = IdSet(np.arange(0, 200_000, 2, dtype=np.int64))
    for start in range(1, 40_001, 2_000):  # odd ids, in runs, until a merge
        held.add(np.arange(start, start + 2_000, 2, dtype=np.int64))
    merged = held.to_array()
    assert merged.flags.owndata and len(merged) == 100_000 + 20_000
    assert bool((np.diff(merged) > 0).all())
    assert held.contains(np.array([1, 3, 39_999, 40_001, 199_998], np.int64)).tolist() == [
        True,
        True,
        True,
        False,
        True,
    ]
