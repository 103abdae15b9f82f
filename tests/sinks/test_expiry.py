"""Expiry by time (--ttl): deadlines from event times, renewal by upsert, removal
at the deadline, kept across a restart; with a fake clock."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import faiss
import numpy as np
import pytest

from sinks import FaissSink, open_snapshot
from sinks.expiry import Expiry, parse_duration
from sinks.segment import Segment
from streams import ConfigError
from streams.records import Batch
from tests.helpers import run_cli

DIM = 8


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _batch(ids, x, ts, offset: int, deleted=None) -> Batch:
    ids = np.asarray(ids, np.int64)
    return Batch(ids, x[ids], np.full(len(ids), ts, np.float64), "p", {"offset": offset},
                 deleted=deleted)  # fmt: skip


def test_parse_duration() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("30m") == 1800
    assert parse_duration("3600s") == parse_duration("3600") == 3600
    assert parse_duration("1.5h") == 5400
    for bad in ("", "0s", "abc", "-5m", "3x"):
        with pytest.raises(ConfigError, match="not a duration"):
            parse_duration(bad)


def test_expiry_keeps_the_newest_deadline_of_each_id() -> None:
    e = Expiry()
    e.put(np.arange(10), np.full(10, 100.0))
    e.put(np.arange(5), np.full(5, 200.0))  # renewed
    e.forget(np.array([9]))
    assert e.next_deadline == 100.0
    assert e.due(99.0).tolist() == []
    assert sorted(e.due(100.0).tolist()) == [5, 6, 7, 8]
    again = Expiry.from_bytes(e.to_bytes())
    assert len(again) == 5 and again.next_deadline == 200.0
    assert sorted(again.due(1e9).tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="not n x 16"):
        Expiry.from_bytes(b"x" * 17)


@pytest.mark.asyncio
async def test_vectors_expire_at_their_deadline_and_an_upsert_renews(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, DIM)).astype(np.float32)
    clock = Clock(1000.0)
    kw = {"metric": "l2", "snapshot_every": None, "clock": clock}
    sink = FaissSink(tmp_path / "idx", ttl=100, **kw)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        await sink.write(_batch(range(100), x, 1000.0, 1))  # deadline 1100
        await sink.write(_batch(range(100, 200), x, 1050.0, 2))  # deadline 1150
        await sink.write(_batch(range(10), x, 1060.0, 3))  # renewed: 1160
        # Event time unknown (NaN): the time it is indexed.
        await sink.write(_batch(range(200, 210), x, np.nan, 4))  # 1000 + 100
        # Older than the ttl on arrival: never searchable, counted as expired.
        await sink.write(_batch(range(210, 220), x, 800.0, 5))
        assert sink.ntotal == 210 and sink.statistics().expired == 10
        # (The sink's own expiry task may run first: count, not the return value.)
        clock.now = 1099.0
        await sink.expire()
        assert sink.statistics().expired == 10
        clock.now = 1120.0
        await sink.expire()  # ids 10-99 and 200-209
        hits = await sink.search(x[:20], 1)
        top = hits.ids[:, 0].tolist()
        assert top[:10] == list(range(10))  # renewed ones stay
        assert not set(top[10:]) & set(range(10, 100))
        assert sink.ntotal == 110 and sink.statistics().expired == 110
        await sink.close(ok=True)
    view = open_snapshot(tmp_path / "idx")
    assert view.config.ttl == 100
    assert sum(s["expired"] for s in view.manifest["shards"]) == 110
    # A restart keeps every deadline (and the ttl, when not given again).
    sink = FaissSink(tmp_path / "idx", **kw)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        assert sink.config.ttl == 100
        clock.now = 1155.0
        await sink.expire()  # ids 100-199
        assert sink.ntotal == 10 and sink.statistics().expired == 210
        clock.now = 1161.0
        await sink.expire()  # ids 0-9
        assert sink.ntotal == 0 and sink.statistics().expired == 220
        await sink.close(ok=True)


@pytest.mark.parametrize("factory", ["HNSW8", "IVF4,Flat"])
@pytest.mark.asyncio
async def test_expiry_removes_from_every_index_type(tmp_path: Path, factory: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, DIM)).astype(np.float32)
    clock = Clock(0.0)
    sink = FaissSink(tmp_path / "idx", factory=factory, metric="l2", snapshot_every=None,
                     ttl=10, clock=clock, train_size=200)  # fmt: skip
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        await sink.write(_batch(range(200), x, 0.0, 1))
        await sink.write(_batch(range(200, 400), x, 5.0, 2))
        clock.now = 11.0
        await sink.expire()
        assert sink.statistics().expired == 200
        hits = await sink.search(x[:50], 5, {"nprobe": 4} if "IVF" in factory else None)
        assert not set(hits.ids.ravel().tolist()) & set(range(200))
        await sink.close(ok=True)


@pytest.mark.asyncio
async def test_the_expiry_task_removes_vectors_while_ingest_runs(tmp_path: Path) -> None:
    """The real clock and a short ttl: nothing but the sink's own task expires them."""
    x = np.random.default_rng(2).standard_normal((50, DIM)).astype(np.float32)
    sink = FaissSink(tmp_path / "idx", metric="l2", snapshot_every=None, ttl=0.3)
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        await sink.write(_batch(range(50), x, np.nan, 1))
        assert sink.ntotal == 50
        with anyio.fail_after(5):
            while sink.ntotal:
                await anyio.sleep(0.02)
        assert sink.statistics().expired == 50
        await sink.close(ok=True)


def test_the_cli_takes_ttl_and_inspect_counts_expired(tmp_path: Path) -> None:
    src = tmp_path / "r.jsonl"
    # Records from 2001 with a one-day ttl: expired on arrival; one without ts stays.
    lines = [{"id": i, "vector": [float(i)] * 4, "ts": 1e12} for i in range(5)]
    lines.append({"id": 9, "vector": [1.0] * 4})
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    p = run_cli("ingest", str(src), "--index", str(tmp_path / "idx"), "--ttl", "1d",
                "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    info = json.loads(run_cli("inspect", str(tmp_path / "idx"), "--json").stdout)
    assert info["ttl"] == 86400 and info["ntotal"] == 1
    assert info["shards"][0]["expired"] == 5
    assert "5 expired" in run_cli("inspect", str(tmp_path / "idx")).stdout
    bad = run_cli("ingest", str(src), "--index", str(tmp_path / "x"), "--ttl", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_search_positions_say_up_to_where_each_shard_was_searched(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((300, DIM)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", x[:2])
    p = run_cli("ingest", str(tmp_path / "x.npy"), "--index", str(tmp_path / "idx"),
                "--no-progress")  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = run_cli("search", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npy"),
                  "-k", "1", "--positions").stdout.splitlines()  # fmt: skip
    head = json.loads(out[0])
    assert head["positions"] == {"files": {str((tmp_path / "x.npy").resolve()): 300}}
    assert head["snapshots"] == {"files": 1}
    assert [json.loads(line)["ids"] for line in out[1:]] == [[0], [1]]
    view = open_snapshot(tmp_path / "idx")
    res = view.search(x[:1], 1)
    assert res.positions == head["positions"] and res.snapshots == {"files": 1}


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF4,Flat"])
@pytest.mark.asyncio
async def test_vectors_past_their_deadline_are_invisible_before_any_sweep(
    tmp_path: Path, factory: str
) -> None:
    """A snapshot opened read-only is never swept: its searches leave out what is
    past its deadline themselves, with and without a filter, the payloads too."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, DIM)).astype(np.float32)
    clock = Clock(0.0)
    sink = FaissSink(tmp_path / "idx", factory=factory, metric="l2", snapshot_every=None,
                     ttl=100, clock=clock, train_size=200)  # fmt: skip
    async with anyio.create_task_group() as tg:
        await sink.open(tg)
        first = _batch(range(200), x, 0.0, 1)  # deadline 100
        first.metadata = [{"half": "first"}] * 200
        second = _batch(range(200, 400), x, 50.0, 2)  # deadline 150
        second.metadata = [{"half": "second"}] * 200
        await sink.write(first)
        await sink.write(second)
        await sink.close(ok=True)
    view = open_snapshot(tmp_path / "idx")
    for shard in view.shards:
        shard.clock = clock
    params = {"nprobe": 4} if "IVF" in factory else {"efSearch": 64} if "HNSW" in factory else None
    early = view.search(x[:50], 5, params)
    assert set(early.ids.ravel().tolist()) & set(range(200))
    clock.now = 120.0
    late = view.search(x[:50], 5, params, with_payload=True)
    found = set(late.ids.ravel().tolist())
    assert not found & set(range(200)) and -1 not in found  # still k answers each
    assert {p["half"] for p in (late.payloads or {}).values()} == {"second"}
    kept = view.search(x[:50], 5, params, filter={"half": {"in": ["first", "second"]}})
    assert not set(kept.ids.ravel().tolist()) & set(range(200))
    assert view.search(x[:5], 5, params, filter={"half": "first"}).ids.max() == -1
    assert view.ntotal == 400  # hidden, not removed: the writer's sweep removes them
    clock.now = 151.0
    assert view.search(x[:5], 5, params).ids.max() == -1


def test_binary_segments_leave_hidden_ids_out_and_still_answer_k() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    seg = Segment(faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(32)))
    seg.add(np.packbits(x > 0, axis=1), np.arange(64, dtype=np.int64))
    _, every = seg.search(x[:8], 5)
    hidden = np.unique(every[:, :3])
    dist, ids = seg.search(x[:8], 5, hidden=hidden)
    assert not np.isin(ids, hidden).any() and (ids >= 0).all()
    assert (np.diff(dist, axis=1) >= 0).all()
