"""Payloads and filtered search (sinks.payloads, sinks.filters, sinks.filtered):
filtered Flat search equals the brute-force filtered top-k exactly (a property
test over random filters, across sealed, merged and active segments, after
upserts and deletes, live and after a restart); upserts replace payloads and
deletes remove them; approximate indexes return k results whenever k match; bad
filters get errors that name the bad part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks import FaissSink, open_snapshot
from sinks.filters import All, Cond, FilterError, parse_filter
from sinks.payloads import PayloadStore, build_block, parse_payload_index
from streams.errors import ConfigError
from streams.records import Batch

D = 16
LANGS = ["en", "fr", "de", "es"]
DECLARED = {"lang": "keyword", "year": "int", "score": "float", "rare": "keyword", "ok": "bool"}


def _payload(rng: np.random.Generator, i: int) -> dict[str, Any] | None:
    if i % 17 == 0:
        return None  # a record without payload
    p: dict[str, Any] = {"lang": LANGS[int(rng.integers(0, 4))], "n": int(rng.integers(0, 100))}
    if i % 5:
        p["year"] = int(rng.integers(1990, 2025))
    elif i % 10 == 5:
        p["year"] = str(int(rng.integers(1990, 2025)))  # another type than declared
    if i % 3:
        p["score"] = float(rng.random())
    if i % 200 == 7:
        p["rare"] = "x"
    if i % 4 == 1:
        p["ok"] = bool(i % 8 == 1)
    p["tag"] = f"t{int(rng.integers(0, 25))}"
    if i % 2:
        p["tags"] = [f"g{int(j)}" for j in rng.integers(0, 6, 2)]
    return p


# -- a reference evaluator, written apart from sinks.filters ------------------------


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eq(v: Any, a: Any) -> bool:
    if isinstance(v, list):
        return any(_eq(x, a) for x in v)
    if isinstance(v, bool) or isinstance(a, bool):
        return isinstance(v, bool) and isinstance(a, bool) and v == a
    if isinstance(v, str) or isinstance(a, str):
        return isinstance(v, str) and isinstance(a, str) and v == a
    return _num(v) and _num(a) and v == a


def _ref_cond(name: str, cond: Any, p: dict[str, Any] | None) -> bool:
    has = p is not None and name in p
    v = p.get(name) if p is not None else None
    if not isinstance(cond, dict):
        cond = {"eq": cond}
    for op, a in cond.items():
        if op == "$or":
            ok = any(_ref_cond(name, c, p) for c in a)
        elif op == "$and":
            ok = all(_ref_cond(name, c, p) for c in a)
        elif op == "$not":
            ok = not _ref_cond(name, a, p)
        elif op == "eq":
            ok = has and _eq(v, a)
        elif op == "ne":
            ok = not (has and _eq(v, a))
        elif op == "in":
            ok = has and any(_eq(v, x) for x in a)
        elif op == "nin":
            ok = not (has and any(_eq(v, x) for x in a))
        elif op == "exists":
            ok = has == a
        else:
            cmp = {"gt": v > a, "gte": v >= a, "lt": v < a, "lte": v <= a} if _num(v) else {}
            ok = has and _num(v) and cmp[op]
        if not ok:
            return False
    return True


def _ref(f: dict[str, Any], p: dict[str, Any] | None) -> bool:
    for key, cond in f.items():
        if key == "$or":
            ok = any(_ref(s, p) for s in cond)
        elif key == "$and":
            ok = all(_ref(s, p) for s in cond)
        elif key == "$not":
            ok = not _ref(cond, p)
        else:
            ok = _ref_cond(key, cond, p)
        if not ok:
            return False
    return True


# -- random filters ---------------------------------------------------------------

_VALUES = {
    "lang": st.sampled_from([*LANGS, "zz"]),
    "year": st.integers(1985, 2030),
    "score": st.floats(0, 1),
    "rare": st.sampled_from(["x", "y"]),
    "ok": st.booleans(),
    "tag": st.sampled_from([f"t{i}" for i in range(27)]),
    "n": st.integers(-5, 105),
    "tags": st.sampled_from([f"g{i}" for i in range(7)]),
    "nothing": st.sampled_from(["a", "b"]),
}
_NUMERIC = ("year", "score", "n")


@st.composite
def _conditions(draw: st.DrawFn, name: str) -> Any:
    value = _VALUES[name]
    ops = ["eq", "ne", "in", "nin", "exists"] + (
        ["gt", "gte", "lt", "lte"] if name in _NUMERIC else []
    )
    op = draw(st.sampled_from(ops))
    if op == "eq":
        return draw(value)
    if op in ("in", "nin"):
        return {op: draw(st.lists(value, min_size=1, max_size=3))}
    if op == "exists":
        return {op: draw(st.booleans())}
    if op in ("gt", "gte", "lt", "lte") and draw(st.booleans()):
        # A range: two bounds in one condition object.
        other = {"gt": "lt", "gte": "lte", "lt": "gt", "lte": "gte"}[op]
        return {op: draw(value), other: draw(value)}
    return {op: draw(value)}


@st.composite
def _filters(draw: st.DrawFn, depth: int = 2) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in draw(
        st.lists(st.sampled_from(sorted(_VALUES)), min_size=1, max_size=2, unique=True)
    ):
        out[name] = draw(_conditions(name))
    if depth and draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(["$or", "$and", "$not"]))
        if kind == "$not":
            out[kind] = draw(_filters(depth - 1))
        else:
            out[kind] = draw(st.lists(_filters(depth - 1), min_size=1, max_size=3))
    return out


# -- the index under test ---------------------------------------------------------


def _write(sink: FaissSink, ids, vecs, metas, offset: int, deleted=None) -> Any:
    batch = Batch(
        np.asarray(ids, np.int64),
        vecs,
        np.zeros(len(ids)),
        "p",
        {"offset": offset},
        deleted=deleted,
        metadata=metas,
    )
    return sink.write(batch)


async def _build(path: Path, factory: str = "Flat", n: int = 6000) -> dict[int, tuple]:
    """Ingest ``n`` vectors with payloads in batches, then upsert and delete some;
    returns the reference: id -> (vector, payload)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, D)).astype(np.float32)
    metas = [_payload(rng, i) for i in range(n)]
    truth = {i: (x[i], metas[i]) for i in range(n)}
    sink = FaissSink(
        path,
        factory=factory,
        metric="l2",
        snapshot_every=None,
        segment_size=700,
        train_size=2000,
        payload_index=DECLARED,
    )
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        for lo in range(0, n, 500):
            await _write(sink, range(lo, lo + 500), x[lo : lo + 500], metas[lo : lo + 500], lo)
        # Upserts: new vectors and new payloads (or none) for old ids.
        up = rng.choice(n, 500, replace=False)
        xv = rng.standard_normal((500, D)).astype(np.float32)
        mv = [_payload(rng, int(i) + 3) for i in up]
        await _write(sink, up, xv, mv, n + 1)
        for i, v, m in zip(up.tolist(), xv, mv, strict=True):
            truth[i] = (v, m)
        # Deletes.
        gone = rng.choice(n, 300, replace=False)
        await _write(sink, gone, np.zeros((300, D), np.float32), None, n + 2, np.ones(300, bool))
        for i in gone.tolist():
            truth.pop(i, None)
        await sink.merge()
        await sink.close(ok=True)
    return truth


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, tuple]]:
    path = tmp_path_factory.mktemp("payloads") / "idx"
    truth = anyio.run(_build, path)
    return path, truth


def _brute(truth: dict[int, tuple], f: dict[str, Any], q: np.ndarray, k: int):
    ids = np.array([i for i, (_, p) in truth.items() if _ref(f, p)], np.int64)
    if not len(ids):
        return ids.reshape(len(q), 0), np.zeros((len(q), 0), np.float32)
    vecs = np.stack([truth[i][0] for i in ids.tolist()])
    dist = ((q[:, None, :] - vecs[None, :, :]) ** 2).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(dist, order, 1)


def _check(view: Any, truth: dict[int, tuple], f: dict[str, Any], k: int, q: np.ndarray) -> None:
    got = view.search(q, k, filter=f, with_payload=True)
    want_ids, want_d = _brute(truth, f, q, k)
    m = want_ids.shape[1]
    assert (got.ids[:, m:] == -1).all(), (f, got.ids)
    np.testing.assert_array_equal(got.ids[:, :m], want_ids, err_msg=str(f))
    np.testing.assert_allclose(got.scores[:, :m], want_d, rtol=1e-4, atol=1e-4)
    for row in got.rows():
        for i, p in zip(row["ids"], row["payloads"], strict=True):
            assert p == truth[i][1]


QUERIES = np.random.default_rng(9).standard_normal((3, D)).astype(np.float32)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(f=_filters(), k=st.sampled_from([1, 10, 100]))
def test_filtered_flat_search_equals_the_brute_force_filtered_top_k(flat, f, k) -> None:
    path, truth = flat
    view = _VIEWS.setdefault(path, open_snapshot(path))
    _check(view, truth, f, k, QUERIES)


_VIEWS: dict[Path, Any] = {}


@pytest.mark.parametrize(
    "f",
    [
        {"rare": "x"},  # ~0.5%: an exact scan of the matches
        {"lang": "en"},  # ~25%: a FAISS scan with a bitmap
        {"lang": {"ne": "zz"}},  # everything but records without payload
        {"year": {"gte": 2000, "lt": 2010}, "tag": {"in": ["t1", "t2"]}},
        {"$or": [{"rare": "x"}, {"ok": True}]},
        {"year": {"exists": False}},
        {"nothing": {"exists": False}},  # every vector, with or without payload
        {"nothing": "a"},  # none
    ],
)
def test_the_live_sink_and_a_restart_answer_the_same(flat, tmp_path: Path, f) -> None:
    path, truth = flat
    _check(open_snapshot(path), truth, f, 10, QUERIES)

    async def live() -> None:
        # A sink reopened on the directory (a restart): same answers, and its own
        # search path (the live one) agrees with the reference too.
        sink = FaissSink(path, snapshot_every=None)
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            got = await sink.search(QUERIES, 10, filter=f, with_payload=True)
            want_ids, _ = _brute(truth, f, QUERIES, 10)
            np.testing.assert_array_equal(got.ids[:, : want_ids.shape[1]], want_ids)
            await sink.close(ok=True)

    anyio.run(live)


def test_an_upsert_replaces_the_payload_and_a_delete_removes_it(tmp_path: Path) -> None:
    async def main() -> None:
        sink = FaissSink(
            tmp_path / "idx", metric="l2", snapshot_every=None, payload_index={"c": "keyword"}
        )
        x = np.eye(4, D, dtype=np.float32)
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            await _write(
                sink, [1, 2, 3, 4], x, [{"c": "red"}, {"c": "red"}, None, {"c": "blue", "z": 1}], 1
            )
            await _write(sink, [1], x[:1], [{"c": "green", "z": 2}], 2)  # upsert
            await _write(sink, [2], x[:1], None, 3, np.ones(1, bool))  # delete
            await _write(sink, [3], x[2:3], [{"c": "red"}], 4)  # a payload for one that had none
            got = await sink.search(x, 4, filter={"c": "red"}, with_payload=True)
            assert sorted(set(got.ids[got.ids >= 0].tolist())) == [3]
            got = await sink.search(x[:1], 4, with_payload=True)
            payloads = dict(zip(got.rows()[0]["ids"], got.rows()[0]["payloads"], strict=True))
            assert payloads == {
                1: {"c": "green", "z": 2},
                3: {"c": "red"},
                4: {"c": "blue", "z": 1},
            }
            await sink.close(ok=True)
        view = open_snapshot(tmp_path / "idx")
        got = view.search(x[:1], 4, with_payload=True).rows()[0]
        assert dict(zip(got["ids"], got["payloads"], strict=True)) == payloads
        fields = view.payload_fields()
        assert fields["c"].indexed and fields["c"].count == 3 and fields["c"].type == "keyword"
        assert not fields["z"].indexed and fields["z"].count == 2

    anyio.run(main)


def test_a_value_of_another_type_than_declared_is_kept_returned_and_counted(flat) -> None:
    path, truth = flat
    view = open_snapshot(path)
    odd = {i for i, (_, p) in truth.items() if p is not None and isinstance(p.get("year"), str)}
    assert odd
    assert view.payload_fields()["year"].mismatched >= len(odd)
    # Not in the column, so a range never matches it; but it is stored and returned,
    # and "exists" sees it.
    got = view.search(
        QUERIES,
        5000,
        filter={"year": {"exists": True}, "$not": {"year": {"gte": 0}}},
        with_payload=True,
    )
    found = set(got.ids[got.ids >= 0].tolist())
    assert found == odd


@pytest.mark.parametrize("factory", ["HNSW16", "IVF32,Flat"])
@pytest.mark.parametrize(
    "f", [{"rare": "x"}, {"tag": {"in": ["t1", "t2"]}}, {"lang": {"in": ["en", "fr"]}}]
)
def test_approximate_indexes_return_k_results_whenever_k_match(
    tmp_path: Path, factory: str, f
) -> None:
    truth = anyio.run(_build, tmp_path / "idx", factory)
    view = open_snapshot(tmp_path / "idx")
    q = np.random.default_rng(4).standard_normal((20, D)).astype(np.float32)
    k = 10
    # Parameters at which the unfiltered search has a recall near 0.95: the
    # filtered one (widened by the selectivity) must keep it.
    params = {"nprobe": 8} if factory.startswith("IVF") else {"efSearch": 32}
    got = view.search(q, k, params, filter=f, with_payload=True)
    want_ids, _ = _brute(truth, f, q, k)
    m = want_ids.shape[1]
    assert (got.ids[:, :m] >= 0).all() and (got.ids[:, m:] == -1).all()
    for row in got.rows():
        assert all(_ref(f, p) for p in row["payloads"])
    recall = np.mean(
        [len(set(a) & set(b)) / m for a, b in zip(got.ids[:, :m], want_ids, strict=True)]
    )
    assert recall >= 0.9, recall


@pytest.mark.parametrize(
    ("f", "where"),
    [
        ("[1, 2]", "$: a filter is a JSON object"),
        ("{not json", "not JSON"),
        ({"year": {"between": [1, 2]}}, "$.year.between: unknown operator 'between'"),
        ({"lang": {"gt": 3}}, "$.lang.gt: field 'lang' is declared keyword"),
        ({"year": "2020"}, "$.year: field 'year' is declared int"),
        ({"year": {"gte": "2020"}}, "$.year.gte: compares with a number"),
        ({"lang": None}, "$.lang: null matches nothing"),
        ({"lang": ["en"]}, 'use {"in": [...]}'),
        ({"lang": {"in": "en"}}, "$.lang.in: takes a list"),
        ({"lang": {"exists": 1}}, "$.lang.exists: takes true or false"),
        ({"$or": []}, "$.$or: takes a non-empty list"),
        ({"$xor": [{}]}, "$.$xor: unknown combinator"),
        ({"$or": [{"lang": "en"}, {"year": {"in": [1, "x"]}}]}, "$.$or[1].year.in[1]"),
        ({"lang": {}}, "$.lang: an empty condition"),
        ({"ok": {"$not": {"lt": 1}}}, "$.ok.$not.lt: field 'ok' is declared bool"),
    ],
)
def test_bad_filters_get_errors_that_name_the_bad_part(flat, f, where: str) -> None:
    path, _ = flat
    with pytest.raises(FilterError, match=None) as err:
        open_snapshot(path).search(QUERIES, 3, filter=f)
    assert where in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_payload_index_specs() -> None:
    assert parse_payload_index(["lang", "year:int", "price:float", "ok:bool"]) == {
        "lang": "keyword",
        "year": "int",
        "price": "float",
        "ok": "bool",
    }
    with pytest.raises(ConfigError, match="unknown type 'date'"):
        parse_payload_index(["when:date"])
    with pytest.raises(ConfigError, match="declares 'a' twice"):
        parse_payload_index(["a:int", "a:float"])


def test_a_store_round_trips_through_its_snapshot_object() -> None:
    rng = np.random.default_rng(1)
    metas = [_payload(rng, i) for i in range(500)]
    store = PayloadStore(DECLARED, build_block(np.arange(500), metas, DECLARED))
    back = PayloadStore.from_bytes(DECLARED, store.to_bytes())
    assert back.get(np.arange(500)) == metas
    # A field declared later gets its column from what was stored.
    later = PayloadStore.from_bytes({**DECLARED, "tag": "keyword"}, store.to_bytes())
    assert later.block.columns["tag"].present.sum() == sum(1 for m in metas if m)
    assert later.get(np.arange(500)) == metas
    with pytest.raises(ValueError, match="damaged payload object"):
        PayloadStore.from_bytes(DECLARED, b"\x00garbage")


def test_filters_parse_once_and_say_what_they_hold() -> None:
    f = parse_filter('{"lang": "en", "year": {"gte": 2020, "lt": 2024}}', DECLARED)
    assert parse_filter(f) is f
    assert f == All(
        (Cond("lang", "eq", "en"), All((Cond("year", "gte", 2020), Cond("year", "lt", 2024))))
    )


@pytest.mark.parametrize(("factory", "rebuild"), [("IVF16,Flat", "retrain"), ("HNSW16", "compact")])
def test_payloads_follow_their_vectors_through_retraining_and_compaction(
    tmp_path: Path, factory: str, rebuild: str
) -> None:
    """Segments rebuilt from a copy (re-encoded after a retrain, compacted HNSW
    graphs) carry every live vector's payload and none of the others'."""
    rng = np.random.default_rng(8)
    n = 4000
    x = rng.standard_normal((n, D)).astype(np.float32)
    metas = [{"i": i, "lang": LANGS[i % 4]} for i in range(n)]

    async def main() -> dict[int, Any]:
        sink = FaissSink(tmp_path / "idx", factory=factory, metric="l2", snapshot_every=None,
                         segment_size=500, train_size=1000, merge_factor=0,
                         payload_index={"lang": "keyword"})  # fmt: skip
        async with anyio.create_task_group() as tg:
            await sink.open(tg)
            for lo in range(0, n, 500):
                await _write(sink, range(lo, lo + 500), x[lo : lo + 500], metas[lo : lo + 500], lo)
            # Replace half the vectors of the first segments (tombstones in HNSW).
            up = np.arange(0, 1500, 2)
            await _write(sink, up, x[up] + 0.01, [{"i": int(i), "v": 2} for i in up], n + 1)
            if rebuild == "retrain":
                assert await sink.retrain()
                assert sink.statistics().reencoded_segments > 0
            else:
                assert await sink.compact() > 0
            got = await sink.search(x, 1, {"nprobe": 16} if factory.startswith("IVF") else None,
                                    with_payload=True)  # fmt: skip
            await sink.close(ok=True)
        return {r["ids"][0]: r["payloads"][0] for r in got.rows()}

    found = anyio.run(main)
    for i, p in found.items():
        assert p == ({"i": i, "v": 2} if i < 1500 and i % 2 == 0 else metas[i])
    assert len(found) >= 0.9 * n
    view = open_snapshot(tmp_path / "idx")
    rows = view.search(x[:300], 1, {"nprobe": 16} if factory.startswith("IVF") else None,
                       filter={"lang": "de"}, with_payload=True).rows()  # fmt: skip
    assert all(r["payloads"][0]["lang"] == "de" for r in rows)
    assert view.payload_fields()["lang"].count == sum(
        1 for i in range(n) if not (i < 1500 and i % 2 == 0)
    )
