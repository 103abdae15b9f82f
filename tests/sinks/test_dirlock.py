"""An index directory is owned, not assumed: marker, writer lock, cleanup that only
touches this project's files, and refusal of symlinks and special files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sinks import open_snapshot
from sinks.dirlock import MARKER
from sinks.manifest import ManifestBody
from sinks.store import SnapshotStore
from streams import SnapshotError
from tests.helpers import run_cli


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32))
    return path


def test_ingest_refuses_a_directory_that_is_not_an_index(tmp_path: Path, data: Path) -> None:
    home = tmp_path / "home"
    (home / "objects").mkdir(parents=True)
    precious = [home / "objects" / "thesis.tex", home / ".draft.tmp", home / "notes.txt"]
    for p in precious:
        p.write_text("mine")
    p = run_cli("ingest", str(data), "--index", str(home))
    assert p.returncode == 1, p.stderr
    assert "is not an embedstream index" in p.stderr and "Traceback" not in p.stderr
    assert all(p.read_text() == "mine" for p in precious)


def test_an_index_is_marked_and_an_old_unmarked_one_is_adopted(tmp_path: Path, data: Path) -> None:
    idx = tmp_path / "idx"
    assert run_cli("ingest", str(data), "--index", str(idx)).returncode == 0
    assert (idx / MARKER).is_file()
    (idx / MARKER).unlink()  # as written by a release before markers
    p = run_cli("ingest", str(data), "--index", str(idx))
    assert p.returncode == 0 and p.stdout.startswith("0 records"), p.stderr
    assert (idx / MARKER).is_file()


def test_cleanup_and_gc_only_remove_our_own_files(tmp_path: Path) -> None:
    s = SnapshotStore(tmp_path / "idx")
    foreign = [s.objects / "README", s.objects / ".hidden.tmp", s.root / ".notes.tmp"]
    for p in foreign:
        p.write_text("not ours")
    ours = s.objects / f".{'a' * 64}.1.2.deadbeef.tmp"
    ours.write_text("a leftover temp file of a crash")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    link = s.objects / ("b" * 64)
    link.symlink_to(outside)  # an object name, but a symlink
    s.close()
    s = SnapshotStore(tmp_path / "idx")
    assert not ours.exists()
    s.commit(ManifestBody(dim=2, shards=[]))
    s.prune(1, grace=0)
    assert all(p.read_text() == "not ours" for p in foreign)
    assert outside.read_text() == "keep" and link.is_symlink()


def test_symlinked_objects_directory_is_refused(tmp_path: Path, data: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ("c" * 64)).write_text("someone else's file")
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "objects").symlink_to(elsewhere)
    (idx / "CURRENT").write_text("1\n")
    p = run_cli("ingest", str(data), "--index", str(idx))
    assert p.returncode == 1 and "objects/ is a symlink" in p.stderr
    assert (elsewhere / ("c" * 64)).read_text() == "someone else's file"


def test_a_second_writer_is_stopped_with_the_holders_name(tmp_path: Path, data: Path) -> None:
    idx = tmp_path / "idx"
    fifo = tmp_path / "slow.jsonl"
    os.mkfifo(fifo)
    first = subprocess.Popen(
        [sys.executable, "-m", "streams.app.cli", "ingest", str(fifo), "--index", str(idx),
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (idx / "LOCK").exists() or not (idx / "LOCK").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = run_cli("ingest", str(data), "--index", str(idx))
        assert second.returncode == 1
        assert f"another writer holds this index (pid {first.pid} on host" in second.stderr
    finally:
        with open(fifo, "wb") as f:
            f.write(b'{"id": 5000, "vector": [1, 2, 3, 4, 5, 6, 7, 8]}\n')
        _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    # The lock went with the first writer: the directory is usable again, and nothing
    # the first one wrote was lost.
    assert run_cli("ingest", str(data), "--index", str(idx)).returncode == 0
    assert open_snapshot(idx).manifest["ntotal"] == 2001


def test_two_concurrent_writers_never_lose_records(tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    paths = []
    for name in ("a.npy", "b.npy"):
        paths.append(tmp_path / name)
        np.save(paths[-1], np.random.default_rng(1).standard_normal((100_000, 8)).astype("f4"))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.app.cli",
                "ingest",
                str(p),
                "--index",
                str(idx),
                "--id-offset",
                str(i * 100_000),
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, p in enumerate(paths)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    # Either both ran one after the other, or the second was refused: never both 0
    # with records gone.
    ntotal = open_snapshot(idx).manifest["ntotal"]
    if codes == [0, 0]:
        assert ntotal == 200_000
    else:
        assert codes == [0, 1], results
        assert ntotal == 100_000
        assert any("another writer holds this index" in err for _, err in results)


def test_objects_that_are_special_files_are_refused_not_waited_on(tmp_path: Path, data) -> None:
    idx = tmp_path / "idx"
    assert run_cli("ingest", str(data), "--index", str(idx)).returncode == 0
    manifest = json.loads((idx / "manifests" / "00000001.json").read_text())
    obj = idx / "objects" / manifest["shards"][0]["segments"][0]["object"]
    obj.unlink()
    os.mkfifo(obj)
    for cmd in (["inspect", str(idx)], ["search", str(idx), "--queries", str(data)]):
        p = run_cli(*cmd, timeout=60)
        assert p.returncode == 1 and "not a regular file" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr


def test_a_symlinked_float_file_is_refused(tmp_path: Path, data: Path) -> None:
    idx = tmp_path / "idx"
    args = ["ingest", str(data), "--index", str(idx), "--quantize", "sq8", "--rerank", "10"]
    assert run_cli(*args, "--train-size", "1000").returncode == 0
    (floats,) = (idx / "floats").iterdir()
    target = tmp_path / "precious.bin"
    target.write_bytes(floats.read_bytes())
    floats.unlink()
    floats.symlink_to(target)
    before = target.read_bytes()
    np.save(data, np.vstack([np.load(data), np.ones((10, 8), np.float32)]))
    p = run_cli(*args)
    assert p.returncode == 1 and "symlink" in p.stderr, p.stderr
    assert target.read_bytes() == before
    with pytest.raises(SnapshotError, match="symlink"):
        open_snapshot(idx)


def test_a_truncated_float_file_is_detected(tmp_path: Path, data: Path) -> None:
    idx = tmp_path / "idx"
    args = ["ingest", str(data), "--index", str(idx), "--quantize", "sq8", "--rerank", "10"]
    assert run_cli(*args, "--train-size", "1000").returncode == 0
    (floats,) = (idx / "floats").iterdir()
    with open(floats, "r+b") as f:
        f.truncate(100)
    with pytest.raises(SnapshotError, match="truncated or replaced"):
        open_snapshot(idx)


def test_a_directory_holding_only_our_names_is_used(tmp_path: Path) -> None:
    """What a worker that started a moment earlier leaves while it sets the directory
    up (subdirectories, a marker still in its temp file) is not foreign."""
    d = tmp_path / "idx"
    (d / "objects").mkdir(parents=True)
    (d / "workers" / "w1" / "manifests").mkdir(parents=True)
    (d / ".EMBEDSTREAM.1.2.deadbeef.tmp").write_text("being written")
    SnapshotStore(d, chain="w2").close()
    assert (d / MARKER).is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "objects").mkdir()
    (tmp_path / "other" / "photo.jpg").write_text("mine")
    with pytest.raises(SnapshotError, match=r"holds photo\.jpg"):
        SnapshotStore(tmp_path / "other")
