from __future__ import annotations

import dataclasses

import numpy as np

from operators.batch import last_wins
from streams.records import ROW_FIELDS, Batch


def _full(n: int, start: int = 0) -> Batch:
    ids = np.arange(start, start + n, dtype=np.int64)
    return Batch(
        ids=ids,
        vectors=np.ones((n, 3), np.uint8) * ids[:, None].astype(np.uint8),
        timestamps=ids.astype(np.float64),
        partition="p",
        position={"offset": start + n},
        deleted=ids % 2 == 0,
        keys={int(ids[0]): "first"},
        metadata=[{"i": int(i)} for i in ids],
        floats=ids[:, None].astype(np.float32).repeat(4, axis=1),
    )


def test_row_fields_are_every_per_row_field_of_a_batch() -> None:
    b = _full(5)
    per_row = {
        f.name
        for f in dataclasses.fields(Batch)
        if hasattr(getattr(b, f.name), "__len__")
        and not isinstance(getattr(b, f.name), (dict, str))
        and len(getattr(b, f.name)) == 5
    }
    assert per_row == set(ROW_FIELDS)


def test_take_and_concat_carry_every_row_field() -> None:
    a, b = _full(4), _full(3, start=10)
    both = Batch.concat([a, b], {"offset": 13})
    assert both.ids.tolist() == [0, 1, 2, 3, 10, 11, 12]
    assert both.floats is not None and both.floats[:, 0].tolist() == both.ids.tolist()
    assert both.metadata == [{"i": i} for i in both.ids.tolist()]
    assert both.keys == {0: "first", 10: "first"}
    part = both.take(np.array([1, 4]))
    for name in ROW_FIELDS:
        got = getattr(part, name)
        want = getattr(both, name)
        want = [want[1], want[4]] if isinstance(want, list) else want[[1, 4]]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # A part without floats or metadata gets filled ones; the rows stay aligned.
    bare = dataclasses.replace(_full(2, start=20), floats=None, metadata=None, deleted=None)
    mixed = Batch.concat([a, bare], {"offset": 22})
    assert mixed.floats is not None and np.isnan(mixed.floats[-2:]).all()
    assert mixed.metadata is not None and mixed.metadata[-2:] == [None, None]
    assert mixed.deleted is not None and not mixed.deleted[-2:].any()


def test_last_wins_keeps_floats_with_their_rows() -> None:
    b = _full(4)
    b.ids[:] = [7, 8, 7, 9]
    kept = last_wins(b)
    assert kept.ids.tolist() == [8, 7, 9]
    assert kept.floats is not None and kept.floats[:, 0].tolist() == [1.0, 2.0, 3.0]
