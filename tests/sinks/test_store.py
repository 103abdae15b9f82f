from __future__ import annotations

import json
from pathlib import Path

import pytest

from sinks.store import SnapshotStore
from streams import SnapshotError


def commit(store: SnapshotStore, payload: bytes, pos: int) -> int:
    obj = store.put_object(payload)
    return store.commit(
        {
            "ntotal": 1,
            "dim": 2,
            "shards": [
                {"name": "p", "object": obj, "keys": None, "ntotal": 1, "position": {"o": pos}}
            ],
        }
    )


def test_commit_load_and_content_addressing(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path)
    assert s.load() is None
    assert commit(s, b"one", 1) == 1
    assert commit(s, b"one", 2) == 2  # same content: one object, referenced twice
    assert len(list((tmp_path / "objects").iterdir())) == 1
    loaded = s.load()
    assert loaded is not None and loaded.seq == 2 and loaded.fallbacks == []
    assert loaded.manifest["parent"] == 1
    assert (tmp_path / "CURRENT").read_text().strip() == "2"


def test_corrupt_object_falls_back_with_reason(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path)
    commit(s, b"one", 1)
    commit(s, b"two", 2)
    m = s.read_manifest(2)
    obj = tmp_path / "objects" / m["shards"][0]["object"]
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
    obj = tmp_path / "objects" / s.read_manifest(2)["shards"][0]["object"]
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
        pos = loaded.manifest["shards"][0]["position"]["o"]
        # Before the CURRENT rename: the old state; after it: the new one. Never torn.
        assert pos in (1, 2), step
        if step.startswith("manifests/") or step.startswith("objects"):
            assert pos == 1, step
