from __future__ import annotations

import json
import re

import msgspec
import numpy as np
import pytest
import simdjson
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.codecs import decode_payloads
from operators.decode import _Decoder
from operators.json_fast import parse_record
from streams.keys import key_id
from streams.records import Chunk


def chunk(fmt: str, payloads, keys=None) -> Chunk:
    n = len(payloads)
    return Chunk(
        "t-0",
        "t[0]",
        fmt,
        {"offset": n},
        np.arange(100, 100 + n),
        "offset",
        payloads=list(payloads),
        keys=keys,
        read_at=1.0,
    )


def decode(fmt: str, payloads, keys=None, dim=None, reject_zero=False):
    return _Decoder("decode", dim, 1 << 16, reject_zero).decode(chunk(fmt, payloads, keys))


def test_f32_fast_path_and_f16() -> None:
    x = np.arange(12, dtype="<f4").reshape(3, 4)
    b, bad = decode("f32", [r.tobytes() for r in x], [b"7", b"8", b"9"])
    assert not bad and b.ids.tolist() == [7, 8, 9]
    np.testing.assert_array_equal(b.vectors, x)
    b, bad = decode("f16", [r.astype("<f2").tobytes() for r in x], [b"a", b"b", b"c"])
    assert not bad and b.ids.tolist() == [key_id("a"), key_id("b"), key_id("c")]
    assert b.keys == {key_id("a"): "a", key_id("b"): "b", key_id("c"): "c"}
    np.testing.assert_array_equal(b.vectors, x)


def test_f32_tombstones_and_bad_values() -> None:
    good = np.ones(4, "<f4").tobytes()
    payloads = [good, None, b"abc", np.ones(3, "<f4").tobytes(), good]
    b, bad = decode("f32", payloads, [b"1", b"2", b"3", b"4", None])
    assert b.ids.tolist() == [1, 2]
    assert b.deleted is not None and b.deleted.tolist() == [False, True]
    assert [(r.reason, r.location) for r in bad] == [
        ("bad-vector", 102),
        ("wrong-dimension", 103),
        ("missing-id", 104),
    ]


def test_json_with_keys_versions_and_deletes() -> None:
    lines = [
        json.dumps({"vector": [1, 2]}).encode(),  # id from the key
        json.dumps({"id": "doc", "vector": [3, 4], "ts": 5000}).encode(),
        json.dumps({"id": 9, "delete": True}).encode(),
        json.dumps({"id": 1, "vector": [1, 2], "version": 7}).encode(),
        None,  # tombstone of key 12
    ]
    b, bad = decode("json", lines, [b"10", b"x", b"y", b"z", b"12"])
    assert b.ids.tolist() == [10, key_id("doc"), 9, 12]
    assert b.deleted is not None and b.deleted.tolist() == [False, False, True, True]
    assert b.timestamps[1] == 5.0
    assert [r.reason for r in bad] == ["unknown-version"]


def test_msgpack_list_and_bytes_vectors() -> None:
    enc = msgspec.msgpack.encode
    payloads = [
        enc({"id": 1, "vector": [1.0, 2.0]}),
        enc({"id": 2, "vector": np.array([3, 4], "<f4").tobytes()}),
        b"\xc1",  # never valid msgpack
        enc({"id": 3}),
    ]
    b, bad = decode("msgpack", payloads)
    assert b.ids.tolist() == [1, 2]
    np.testing.assert_array_equal(b.vectors, [[1, 2], [3, 4]])
    assert [r.reason for r in bad] == ["not-msgpack", "missing-vector"]
    assert bad[0].to_json()["raw"] == {"base64": "wQ=="}


def test_oversized_and_zero_vectors() -> None:
    big = json.dumps({"id": 1, "vector": [0.5] * 20000}).encode()
    zero = json.dumps({"id": 2, "vector": [0, 0]}).encode()
    ok = json.dumps({"id": 3, "vector": [0, 1]}).encode()
    b, bad = decode("json", [big, zero, ok], reject_zero=True)
    assert b.ids.tolist() == [3]
    assert [r.reason for r in bad] == ["oversized", "zero-vector"]


FORMATS = ["json", "msgpack", "f32", "f16"]


def _json_values():
    leaf = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5)
    )
    return st.recursive(
        leaf,
        lambda c: st.one_of(
            st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)
        ),
        max_leaves=12,
    )


def _record():
    return st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(
                st.integers(min_value=-(2**70), max_value=2**70),
                st.text(max_size=4),
                st.none(),
                st.floats(),
            ),
            "vector": st.one_of(
                st.lists(st.floats(width=32), min_size=0, max_size=5),
                st.binary(max_size=20),
                st.none(),
                st.text(max_size=3),
            ),
            "ts": st.one_of(st.integers(), st.floats(), st.none(), st.text(max_size=2)),
            "delete": st.one_of(st.booleans(), st.integers()),
            "version": st.one_of(st.integers(min_value=0, max_value=3), st.text(max_size=2)),
            "metadata": _json_values(),
        },
    )


def _msgpack(record: dict) -> bytes:
    try:
        return msgspec.msgpack.encode(record)
    except OverflowError:  # ints beyond what msgpack can hold
        return b"\xc1"


def _payload(fmt: str):
    if fmt == "json":
        return st.one_of(
            st.binary(max_size=60),
            _record().map(
                lambda r: json.dumps(
                    {k: (v.hex() if isinstance(v, bytes) else v) for k, v in r.items()}
                ).encode()
            ),
            st.none(),
        )
    if fmt == "msgpack":
        return st.one_of(st.binary(max_size=60), _record().map(_msgpack), st.none())
    width = 32 if fmt == "f32" else 16
    return st.one_of(
        st.binary(max_size=40),
        st.none(),
        st.lists(st.floats(width=width), min_size=1, max_size=4).map(
            lambda v: np.asarray(v, "<f4" if fmt == "f32" else "<f2").tobytes()
        ),
    )


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_record_is_indexed_or_rejected_never_both(fmt: str, data) -> None:
    n = data.draw(st.integers(min_value=1, max_value=12))
    payloads = data.draw(st.lists(_payload(fmt), min_size=n, max_size=n))
    keys = data.draw(
        st.lists(
            st.one_of(
                st.none(),
                st.binary(max_size=4),
                st.integers(-5, 10**20).map(lambda i: str(i).encode()),
            ),
            min_size=n,
            max_size=n,
        )
    )
    decoder = _Decoder("decode", None, 1 << 10, data.draw(st.booleans()))
    b, bad = decoder.decode(chunk(fmt, payloads, keys))
    # Rows of the batch and rejected records partition the input.
    assert len(b) + len(bad) == n
    assert len({r.location for r in bad}) == len(bad)
    assert b.vectors.shape[0] == len(b) and b.vectors.dtype == np.float32
    live = ~b.deleted if b.deleted is not None else np.ones(len(b), bool)
    assert np.isfinite(b.vectors[live]).all()
    for r in bad:
        assert r.reason and r.stage == "decode" and 100 <= r.location < 100 + n
        json.dumps(r.to_json())  # always serialisable


# Lines where simdjson and the schema could disagree: the fast path must hand each
# to msgspec (or agree with it exactly).
_TRICKY_JSON = [
    b'{"id": 1, "vector": [[1.0], [2.0]]}',  # nested: as_buffer would flatten it
    b'{"id": 1, "vector": [1.0, [2.0]]}',
    b'{"id": 1, "metadata": {"a": [1]}, "vector": [[1.0], [2.0]]}',
    b'{"id": 1, "id": 2, "vector": [1.0, 2.0]}',  # duplicate key
    b'{"vector": [1.0, 2.0], "vector": [3.0, 4.0], "id": 5}',
    b'{"id": true, "vector": [1.0, 2.0]}',
    b'{"id": 1.5, "vector": [1.0, 2.0]}',
    b'{"id": 18446744073709551615, "vector": [1.0, 2.0]}',  # uint64, beyond int64
    b'{"id": 1, "vector": [true, 2.0]}',
    b'{"id": 1, "vector": [null, 2.0]}',
    b'{"id": 1, "vector": [1e39, 2.0]}',  # finite double, not a float32
    b'{"id": 1, "vector": [1e400, 2.0]}',
    b'{"id": 1, "vector": [9007199254740993, -0.0]}',
    b'{"id": 1, "vector": {"a": 1}}',
    b'{"id": 1, "vector": "[1.0, 2.0]"}',
    b'{"id": 1, "vector": null, "delete": true}',
    b'{"id": 1, "vector": [1.0, 2.0], "delete": 1}',
    b'{"id": 1, "vector": [1.0, 2.0], "ts": true}',
    b'{"id": 1, "vector": [1.0, 2.0], "ts": 17}',
    b'{"id": 1, "vector": [1.0, 2.0], "version": 1.0}',
    b'{"id": 1, "vector": [1.0, 2.0], "metadata": [1]}',
    b'{"id": 1, "vector": [1.0, 2.0], "metadata": {"k": 1, "k": 2}}',
    b'{"id": 1, "vector": [1.0, 2.0], "other": [[1]]}',
    b'{"\\u0069d": 3, "vec\\u0074or": [1.0, 2.0]}',  # escaped keys
    b' {"id": 1, "vector": [1.0, 2.0]} ',
    b'{"id": 1, "vector": [1.0, 2.0]} x',
    b'{"id": "\\ud800", "vector": [1.0, 2.0]}',  # lone surrogate
    b'{"id": "\xff", "vector": [1.0, 2.0]}',  # not UTF-8
    b"[1.0, 2.0]",
    b"",
]


def _columns(fast: bool, payloads, keys):
    from operators.codecs import decode_payloads

    cols, dim = decode_payloads("json", payloads, keys, max_bytes=1 << 16, dim=None, json_fast=fast)
    n = len(cols.rows)
    vec = None if cols.buf is None else cols.buf[:n].view(np.uint32).tolist()  # bit-exact
    return (
        cols.rows,
        cols.ids,
        vec,
        cols.deletes,
        cols.ts,
        cols.metadata,
        cols.keys,
        [(i, reason) for i, reason, _ in cols.bad],
        dim,
    )


def test_json_fast_path_matches_msgspec_on_tricky_lines() -> None:
    for line in _TRICKY_JSON:
        assert _columns(True, [line], [b"7"]) == _columns(False, [line], [b"7"]), line


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(
        st.one_of(_payload("json"), st.sampled_from(_TRICKY_JSON)), min_size=1, max_size=8
    ),
    data=st.data(),
)
def test_json_fast_path_decodes_exactly_like_msgspec(payloads, data) -> None:
    keys = data.draw(
        st.lists(
            st.one_of(st.none(), st.sampled_from([b"1", b"x", b"\xff"])),
            min_size=len(payloads),
            max_size=len(payloads),
        )
    )
    assert _columns(True, payloads, keys) == _columns(False, payloads, keys)


def test_json_fast_path_real_embeddings_bit_exact() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 384)).astype(np.float32)
    lines = [msgspec.json.encode({"id": i, "vector": x[i].tolist()}) for i in range(50)]
    lines += [
        json.dumps({"id": 100 + i, "vector": x[i].astype(float).tolist()}).encode()
        for i in range(50)
    ]
    assert _columns(True, lines, None) == _columns(False, lines, None)
    # ... and the fast path took them all (it is not quietly handing every line on).
    parse = simdjson.Parser().parse
    assert all(parse_record(parse, line) is not None for line in lines)
    b, bad = decode("json", lines)
    assert not bad
    np.testing.assert_array_equal(b.vectors, np.vstack([x, x]))


_KEYS = st.one_of(
    st.integers(0, 10**18 - 1).map(lambda i: str(i).encode()),
    st.integers(-(2**63), 2**64).map(lambda i: str(i).encode()),
    st.text("0123456789-+_, x²", max_size=21).map(str.encode),
    st.sampled_from(
        [b"007", b"0", b"9" * 18, b"9" * 19, b"1" * 20, b"", b" 5", b"+5", b"1_000", b"--5"]
    ),
    st.sampled_from(["\u00b2", "\u0661", "5\u0663"]).map(str.encode),  # non-ASCII digits
    st.binary(max_size=6),
)


def _rule(key: bytes) -> tuple[str, int | str]:
    """The per-key rule of streams.keys, written out plainly."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return ("bad", "bad-key")
    if not text:
        return ("bad", "missing-id")
    if re.fullmatch(r"0|[1-9][0-9]*", text, flags=re.ASCII) and int(text) < 2**63:
        return ("int", int(text))
    return ("str", text)


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(_KEYS, min_size=1, max_size=12))
def test_keys_map_to_ids_by_one_rule_whatever_the_batch(keys: list[bytes]) -> None:
    """Each key's id is the same decoded in a batch of any mix of keys and alone, and
    equals the plain rule: the vectorised path and the per-key path agree exactly."""
    from streams.keys import decimal_key_ids

    values = [np.float32([i, 1]).tobytes() for i in range(len(keys))]
    together = decode_payloads("f32", list(values), list(keys), max_bytes=1 << 20, dim=2)[0]
    got: dict[int, int | str] = {}
    ids = together.id_array.tolist() if together.id_array is not None else []
    for row, i in zip(together.rows, ids, strict=True):
        got[row] = together.keys.get(i, i)
    bad = {i: reason for i, reason, _ in together.bad}
    for i, key in enumerate(keys):
        kind, want = _rule(key)
        alone = decode_payloads("f32", [values[i]], [key], max_bytes=1 << 20, dim=2)[0]
        if kind == "bad":
            assert bad[i] == want and [r for _, r, _ in alone.bad] == [want]
            continue
        assert got[i] == want, (key, got[i], want)
        assert alone.id_array is not None
        one = int(alone.id_array[0])
        assert alone.keys.get(one, one) == want
        if kind == "str":
            assert one == key_id(want)  # type: ignore[arg-type]
    fast = decimal_key_ids(keys)  # type: ignore[arg-type]
    if fast is not None:
        assert fast.tolist() == [_rule(k)[1] for k in keys]


def test_a_json_string_id_and_the_same_kafka_key_are_one_id() -> None:
    x = np.float32([1, 2])
    j, _ = decode_payloads(
        "json", [b'{"id": "123", "vector": [1, 2]}'], None, max_bytes=1 << 20, dim=None
    )
    tomb, _ = decode_payloads("json", [None], [b"123"], max_bytes=1 << 20, dim=2)
    raw, _ = decode_payloads("f32", [x.tobytes()], [b"123"], max_bytes=1 << 20, dim=2)
    assert j.ids == [123] and tomb.ids == [123] and raw.id_array is not None
    assert raw.id_array.tolist() == [123]


def test_negative_ids_are_rejected_not_lost() -> None:
    cols, _ = decode_payloads(
        "json", [b'{"id": -5, "vector": [1, 2]}'], None, max_bytes=1 << 20, dim=None
    )
    assert [r for _, r, _ in cols.bad] == ["bad-id"] and not cols.rows
    # A key "-1" is a string id (hashed, non-negative), so it stays findable.
    raw, _ = decode_payloads("f32", [np.float32([1, 2]).tobytes()], [b"-1"], max_bytes=64, dim=2)
    assert raw.id_array is not None and raw.id_array[0] == key_id("-1") >= 0


_extreme = st.sampled_from(
    [0.0, -0.0, 1.0, -2.5, 3e38, -3e38, 1e-38, 1e-45, float("nan"), float("inf"), -float("inf")]
)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(_extreme, min_size=3, max_size=3), min_size=1, max_size=12))
def test_one_pass_row_checks_agree_with_the_exact_ones(rows: list[list[float]]) -> None:
    """decode flags rows by their squared norm (one pass) and re-checks flagged rows:
    overflowing and underflowing finite rows must come out as the exact checks say."""
    from operators.decode import _bad_rows

    x = np.asarray(rows, dtype=np.float32)
    nonfinite, zero = _bad_rows(x, True)
    finite = np.isfinite(x).all(axis=1)
    assert nonfinite.tolist() == np.flatnonzero(~finite).tolist()
    assert zero.tolist() == np.flatnonzero(finite & ~x.any(axis=1)).tolist()
    assert _bad_rows(x, False)[1].tolist() == []
