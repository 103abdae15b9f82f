from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinks.manifest import ManifestBody
from sinks.store import SnapshotStore
from streams import SnapshotError


def commit(store: SnapshotStore, payload: bytes, pos: int) -> int:
    obj = store.put_object(payload)
    body = {
        "ntotal": 1,
        "dim": 2,
        "shards": [{"name": "p", "object": obj, "keys": None, "ntotal": 1, "position": {"o": pos}}],
    }
    return store.commit(msgspec.convert(body, ManifestBody))


def test_commit_load_and_content_addressing(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path)
    assert s.load() is None
    assert commit(s, b"one", 1) == 1
    assert commit(s, b"one", 2) == 2  # same content: one object, referenced twice
    assert len(list((tmp_path / "objects").iterdir())) == 1
    loaded = s.load()
    assert loaded is not None and loaded.seq == 2 and loaded.fallbacks == []
    assert loaded.manifest.parent == 1
    assert (tmp_path / "CURRENT").read_text().strip() == "2"


def test_corrupt_object_falls_back_with_reason(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path)
    commit(s, b"one", 1)
    commit(s, b"two", 2)
    m = s.read_manifest(2)
    obj = tmp_path / "objects" / m.shards[0].object
    data = bytearray(obj.read_bytes())
    data[0] ^= 0xFF
    obj.write_bytes(bytes(data))
    loaded = s.load()
    assert loaded is not None and loaded.seq == 1
    assert loaded.fallbacks[0]["seq"] == 2
    assert "corrupt" in loaded.fallbacks[0]["reason"]


@pytest.mark.parametrize(
    "damage",
    ["truncate", "empty", "garbage", "missing-manifest", "missing-object", "current-garbage"],
)
def test_damage_falls_back_to_previous(tmp_path: Path, damage: str) -> None:
    s = SnapshotStore(tmp_path)
    commit(s, b"one", 1)
    commit(s, b"two", 2)
    man = tmp_path / "manifests" / "00000002.json"
    obj = tmp_path / "objects" / s.read_manifest(2).shards[0].object
    if damage == "truncate":
        man.write_bytes(man.read_bytes()[:20])
    elif damage == "empty":
        man.write_bytes(b"")
    elif damage == "garbage":
        man.write_text(json.dumps({"seq": 2}))
    elif damage == "missing-manifest":
        man.unlink()
    elif damage == "missing-object":
        obj.unlink()
    elif damage == "current-garbage":
        (tmp_path / "CURRENT").write_bytes(b"\xff\xfe")
    loaded = s.load()
    assert loaded is not None
    if damage == "current-garbage":
        # Every manifest is fine: the newest verifiable one wins, with a warning.
        assert loaded.seq == 2 and loaded.fallbacks
    else:
        assert loaded.seq == 1 and loaded.fallbacks[0]["seq"] == 2


def test_nothing_loads_is_an_error_not_an_empty_index(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path)
    commit(s, b"one", 1)
    for p in (tmp_path / "objects").iterdir():
        p.unlink()
    with pytest.raises(SnapshotError, match="no snapshot loads"):
        s.load()


def test_uncommitted_manifest_is_ignored(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path)
    commit(s, b"one", 1)
    commit(s, b"two", 2)
    (tmp_path / "CURRENT").write_text("1\n")  # as if we died before renaming CURRENT
    loaded = s.load()
    assert loaded is not None and loaded.seq == 1 and not loaded.fallbacks
    assert commit(s, b"three", 3) == 3  # seqs are never reused


def test_prune_keeps_newest_and_collects_objects(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path)
    for i in range(6):
        commit(s, f"obj{i}".encode(), i)
    assert s.prune(2) == (4, 4)
    assert s.seqs() == [5, 6]
    assert len(list((tmp_path / "objects").iterdir())) == 2
    assert s.load() is not None


def test_crash_at_every_step_leaves_previous_state(tmp_path: Path) -> None:
    """Die (raise) at each durable step of a snapshot; the directory still loads."""
    steps: list[str] = []
    probe = SnapshotStore(tmp_path / "probe", hook=steps.append)
    commit(probe, b"base", 1)
    steps.clear()
    commit(probe, b"next", 2)
    probe.prune(1)
    assert len(steps) >= 10, steps

    class Died(Exception):
        pass

    for i, step in enumerate(steps):
        d = tmp_path / f"crash{i}"
        s = SnapshotStore(d)
        commit(s, b"base", 1)

        def hook(name: str, step: str = step) -> None:
            if name == step:
                raise Died(step)

        s.hook = hook
        with pytest.raises(Died):
            commit(s, b"next", 2)
            s.prune(1)
        loaded = SnapshotStore(d, readonly=True).load()
        assert loaded is not None, step
        pos = loaded.manifest.shards[0].position["o"]
        # Before the CURRENT rename: the old state; after it: the new one. Never torn.
        assert pos in (1, 2), step
        if step.startswith("manifests/") or step.startswith("objects"):
            assert pos == 1, step


# -- manifests are validated by schema -------------------------------------------------


def _two_snapshots(tmp_path: Path) -> Path:
    import numpy as np

    from tests.helpers import run_cli

    idx = tmp_path / "idx"
    for rows in (100, 200):
        np.save(tmp_path / "x.npy", np.ones((rows, 4), np.float32))
        assert run_cli("ingest", str(tmp_path / "x.npy"), "--index", str(idx)).returncode == 0
    return idx


@pytest.mark.parametrize(
    "corrupt",
    [
        {"shards": "abc"},
        {"dim": "4"},
        {"shards": [{"name": "files", "ntotal": -1, "position": {}, "segments": []}]},
        {
            "shards": [
                {
                    "name": "files",
                    "ntotal": 1,
                    "position": {},
                    "segments": [{"object": "../../etc/passwd"}],
                }
            ]
        },
        {"template": 42},
        {"shards": [{"name": 7, "ntotal": 1, "position": {}}]},
    ],
)
def test_a_type_corrupt_manifest_falls_back_everywhere(tmp_path: Path, corrupt: dict) -> None:
    from sinks import open_snapshot
    from tests.helpers import run_cli

    idx = _two_snapshots(tmp_path)
    man = idx / "manifests" / "00000002.json"
    man.write_text(json.dumps({**json.loads(man.read_text()), **corrupt}))
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == 100
    assert "does not match the manifest schema" in view.fallbacks[0]["reason"]
    for cmd in (["inspect", str(idx)], ["search", str(idx), "--queries", str(tmp_path / "x.npy")]):
        p = run_cli(*cmd)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    p = run_cli("ingest", str(tmp_path / "x.npy"), "--index", str(idx))
    assert p.returncode == 0 and p.stdout.startswith("100 records"), p.stderr


def test_one_bad_worker_chain_does_not_block_the_directory(tmp_path: Path) -> None:
    from sinks import open_snapshot

    idx = _two_snapshots(tmp_path)
    bad = idx / "workers" / "w9"
    (bad / "manifests").mkdir(parents=True)
    (bad / "manifests" / "00000001.json").write_text(
        json.dumps({"schema": 1, "seq": 1, "shards": [{"name": 3}], "dim": "x"})
    )
    (bad / "CURRENT").write_text("1\n")
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == 200


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=300), current=st.binary(max_size=12), which=st.sampled_from([1, 2]))
def test_random_bytes_in_manifests_and_current_never_raise_anything_else(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, current: bytes, which: int
) -> None:
    from sinks.shared import combine

    d = tmp_path_factory.mktemp("fuzz")
    s = SnapshotStore(d)
    commit(s, b"one", 1)
    commit(s, b"two", 2)
    s.close()
    (d / "manifests" / f"{which:08d}.json").write_bytes(data)
    if current:
        (d / "CURRENT").write_bytes(current)
    try:
        loaded = SnapshotStore(d, readonly=True).load()
        combine(d)
    except SnapshotError:
        return  # a clear "no snapshot loads" with every reason
    assert loaded is not None and loaded.manifest.seq in (1, 2)


def test_a_hash_valid_object_faiss_cannot_read_is_one_clear_error(tmp_path: Path) -> None:
    import hashlib

    from tests.helpers import run_cli

    idx = _two_snapshots(tmp_path)
    man_path = idx / "manifests" / "00000002.json"
    man = json.loads(man_path.read_text())
    junk = b"not a faiss index"
    digest = hashlib.sha256(junk).hexdigest()
    (idx / "objects" / digest).write_bytes(junk)
    man["shards"][0]["segments"][0]["object"] = digest
    man_path.write_text(json.dumps(man))
    p = run_cli("search", str(idx), "--queries", str(tmp_path / "x.npy"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert "faiss cannot read this segment" in line and "kept changing" not in line


@pytest.mark.asyncio
async def test_serve_keeps_the_last_good_snapshot_and_says_why(tmp_path: Path) -> None:
    import anyio
    import numpy as np

    from sinks.live import LiveView

    idx = _two_snapshots(tmp_path)
    live = LiveView(idx)
    assert live.view.manifest["seq"] == 2
    async with anyio.create_task_group() as tg:
        tg.start_soon(live.follow, 0.05)
        for damage in ("manifest", "current"):
            if damage == "manifest":
                (idx / "manifests" / "00000003.json").write_text(
                    '{"schema": 1, "seq": 3, "shards": 5}'
                )
                (idx / "CURRENT").write_text("3\n")
            else:
                (idx / "CURRENT").write_bytes(b"\xff\xfe garbage")
            await anyio.sleep(0.5)
            health = live.health()
            assert health["seq"] == 2
            if damage == "manifest":
                assert health["stale"] and "manifest 3" in health["reload_error"]
            res = await live.search(np.ones((1, 4), np.float32), 3)
            assert len(res.rows()[0]["ids"]) == 3
        tg.cancel_scope.cancel()
