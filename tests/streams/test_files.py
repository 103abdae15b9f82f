from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from operators import batch, decode
from sinks import open_snapshot
from streams import BadRecordError, FileSource, SourceError, StageError
from tests.helpers import collect, run_cli

pytestmark = pytest.mark.anyio


async def test_npy_in_chunks_with_row_positions(make_npy) -> None:
    path, x = make_npy(1000, 8)
    chunks = await collect(FileSource(path, chunk_bytes=8 * 4 * 300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    key = str(path.resolve())
    assert [c.position[key] for c in chunks] == [300, 600, 900, 1000]
    np.testing.assert_array_equal(np.concatenate([c.vectors for c in chunks]), x)
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]), np.arange(1000))


async def test_npy_float16_becomes_float32_and_resumes(make_npy) -> None:
    path, x = make_npy(100, 4, dtype=np.float16)
    key = str(path.resolve())
    chunks = await collect(FileSource(path), start={"files": {key: 60}})
    assert chunks[0].vectors.dtype == np.float32
    np.testing.assert_array_equal(chunks[0].ids, np.arange(60, 100))
    np.testing.assert_array_equal(chunks[0].vectors, x[60:].astype(np.float32))
    assert await collect(FileSource(path), start={"files": {key: 100}}) == []


def _write_vecs(path: Path, x: np.ndarray, fmt: str) -> None:
    n, d = x.shape
    body = x.astype(np.float32 if fmt == "fvecs" else np.uint8)
    rows = np.empty((n, 4 + body.itemsize * d), np.uint8)
    rows[:, :4] = np.full((n, 1), d, "<i4").view(np.uint8)
    rows[:, 4:] = body.view(np.uint8).reshape(n, -1)
    rows.tofile(path)


@pytest.mark.parametrize("fmt", ["fvecs", "bvecs"])
async def test_vecs_formats(tmp_path: Path, rng, fmt: str) -> None:
    x = rng.integers(0, 255, (257, 12)).astype(np.float32)
    path = tmp_path / f"x.{fmt}"
    _write_vecs(path, x, fmt)
    batches = await collect(FileSource(path, chunk_bytes=1000), decode())
    got = np.concatenate([b.vectors for b in batches])
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), np.arange(257))


async def test_truncated_fvecs_names_file_and_row(tmp_path: Path, rng) -> None:
    path = tmp_path / "x.fvecs"
    _write_vecs(path, rng.standard_normal((10, 4)), "fvecs")
    with open(path, "ab") as f:
        f.write(b"\x04\x00\x00\x00\x00")
    with pytest.raises(StageError) as err:
        await collect(FileSource(path))
    assert isinstance(err.value.cause, SourceError)
    assert "x.fvecs" in str(err.value) and "row 10 is incomplete" in str(err.value)


async def test_jsonl_records_positions_and_line_numbers(make_jsonl) -> None:
    recs = [{"id": i, "vector": [float(i), 1.0], "ts": 1_700_000_000_000 + i} for i in range(50)]
    lines = [json.dumps(r) for r in recs]
    lines.insert(10, "")  # blank lines are skipped but counted
    path = make_jsonl(lines)
    chunks = await collect(FileSource(path, chunk_bytes=200))
    assert sum(len(c) for c in chunks) == 50
    locs = np.concatenate([c.locations for c in chunks]).tolist()
    assert locs == [*range(1, 11), *range(12, 52)]
    assert chunks[-1].position[str(path.resolve())] == path.stat().st_size
    batches = await collect(FileSource(path, chunk_bytes=200), decode())
    ids = np.concatenate([b.ids for b in batches])
    np.testing.assert_array_equal(ids, np.arange(50))
    ts = np.concatenate([b.timestamps for b in batches])
    assert ts[3] == pytest.approx(1_700_000_000.003)


async def test_jsonl_resume_from_byte_offset(make_jsonl) -> None:
    path = make_jsonl([{"id": i, "vector": [1.0, 2.0]} for i in range(20)])
    cut = sum(len(line) for line in path.read_bytes().splitlines(keepends=True)[:7])
    batches = await collect(FileSource(path), decode(), start={"files": {str(path.resolve()): cut}})
    np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), np.arange(7, 20))


async def test_jsonl_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    path.write_text('{"id": 1, "vector": [1, 2]}\n{"id": "doc", "vector": [3, 4]}')
    (b,) = await collect(FileSource(path), decode(), batch(10))
    assert b.keys is not None and list(b.keys.values()) == ["doc"]
    assert len(b) == 2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not-json"),
        ('{"id": 1, "vector": [1.0, 2.0, 3.0]}', "wrong-dimension"),
        ('{"vector": [1.0, 2.0]}', "missing-id"),
        ('{"id": 99999999999999999999, "vector": [1.0, 2.0]}', "id-out-of-range"),
        ('{"id": 5, "vector": [1.0, NaN]}', "not-json"),
        ('{"id": 5, "vector": [1.0, 1e999]}', "not-finite"),
    ],
)
async def test_bad_jsonl_line_is_a_clear_error(make_jsonl, line: str, reason: str) -> None:
    path = make_jsonl(['{"id": 0, "vector": [0.5, 0.5]}', line])
    with pytest.raises(StageError) as err:
        await collect(FileSource(path), decode())
    assert err.value.stage == "decode"
    cause = err.value.cause
    assert isinstance(cause, BadRecordError)
    assert cause.reason == reason
    assert f"{path} line 2" in str(cause)


async def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="no such file"):
        await collect(FileSource(tmp_path / "nope.npy"))
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((100, 8), np.float32))
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(StageError, match=r"x\.npy.*truncated"):
        await collect(FileSource(bad))
    with pytest.raises(SourceError, match="suffix"):
        await collect(FileSource(tmp_path / "x.csv"))
    np.save(tmp_path / "y.npy", np.zeros(5))
    with pytest.raises(StageError, match="1 dimensions"):
        await collect(FileSource(tmp_path / "y.npy"))


async def test_file_shorter_than_position_is_an_error(make_npy) -> None:
    path, _ = make_npy(10, 2)
    with pytest.raises(StageError, match="replaced or truncated"):
        await collect(FileSource(path), start={"files": {str(path.resolve()): 11}})


async def test_nan_in_npy_names_the_row(make_npy) -> None:
    path, x = make_npy(10, 3)
    x[7, 1] = np.nan
    np.save(path, x)
    with pytest.raises(StageError, match="row 7"):
        await collect(FileSource(path), decode())


# -- inputs that must not hang, crash or exhaust the process ---------------------------

CAP = 1 << 30  # the CLI needs about 500 MB of address space (libraries, thread stacks)


def test_a_huge_jsonl_line_is_skipped_in_bounded_memory(tmp_path: Path) -> None:
    """A 1.5 GB line (sparse: no disk) under a 1 GiB address-space cap: only a prefix
    is kept, the record is dead-lettered as oversized, the next line is ingested."""
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"id": 1, "vector": [1, 2]}\n')
        f.truncate(f.tell() + (3 << 29))  # zeros, held by no disk block
        f.seek(0, 2)
        f.write(b'\n{"id": 2, "vector": [3, 4]}\n')
    dead = tmp_path / "dead.jsonl"
    p = run_cli(
        "ingest", str(path), "--index", str(tmp_path / "idx"), "--max-payload-bytes", "1000",
        "--dead-letter", str(dead), "--no-progress", limit_bytes=CAP,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("2 records")
    (letter,) = [json.loads(line) for line in dead.read_text().splitlines()]
    assert letter["reason"] == "oversized" and letter["position"] == {"line": 2}
    assert f"{3 << 29:,}" in letter["detail"]
    raw = letter["raw"]
    assert len(raw if isinstance(raw, str) else raw["base64"]) <= 8192  # a prefix only


async def test_oversized_line_positions_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    lines = [b'{"id": 1, "vector": [1, 2]}', b"x" * 5000, b'{"id": 3, "vector": [5, 6]}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    chunks = await collect(FileSource(path, chunk_bytes=64, max_line_bytes=100))
    got = [(int(loc), p) for c in chunks for loc, p in zip(c.locations, c.payloads, strict=True)]
    assert [loc for loc, _ in got] == [1, 2, 3]
    assert got[0][1] == lines[0] and got[2][1] == lines[2] and len(got[1][1]) < 5000
    assert [c.truncated for c in chunks if c.truncated] == [{0: 5000}]
    assert chunks[-1].position == {str(path.resolve()): path.stat().st_size}


@pytest.mark.parametrize("fmt", ["fvecs", "npy"])
def test_a_fifo_is_refused_where_a_file_is_memory_mapped(tmp_path: Path, fmt: str) -> None:
    fifo = tmp_path / f"x.{fmt}"
    os.mkfifo(fifo)
    p = run_cli("ingest", str(fifo), "--index", str(tmp_path / "idx"), timeout=60)
    assert p.returncode == 1
    assert "is a FIFO, not a regular file" in p.stderr and "Traceback" not in p.stderr


def test_sigterm_stops_ingest_waiting_on_a_fifo_without_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "x.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.app.cli", "ingest", str(fifo), "--index",
         str(tmp_path / "idx"), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    assert proc.poll() is None  # waiting for a writer
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("ingest ignored SIGTERM while waiting on a FIFO")
    assert proc.returncode == 0, err
    assert out.startswith("0 records")


async def test_a_fifo_jsonl_is_read_when_its_writer_comes_late(tmp_path: Path) -> None:
    fifo = tmp_path / "x.jsonl"
    os.mkfifo(fifo)

    def write() -> None:
        time.sleep(0.5)
        with open(fifo, "wb") as f:
            f.write(b'{"id": 1, "vector": [1, 2]}\n{"id": 2, "vector": [3, 4]}\n')

    thread = threading.Thread(target=write)
    thread.start()
    batches = await collect(FileSource(fifo), decode())
    thread.join()
    assert [b.ids.tolist() for b in batches if len(b)] == [[1, 2]]


def test_special_files_are_refused_for_jsonl(tmp_path: Path) -> None:
    p = run_cli("ingest", "/dev/null", "--format", "jsonl", "--index", str(tmp_path / "i"))
    assert p.returncode == 1 and "is a device" in p.stderr


# -- ids and positions of several files ------------------------------------------------


def test_rerunning_a_multi_file_ingest_changes_nothing(tmp_path: Path, rng) -> None:
    for name, rows in (("a.npy", 300), ("b.npy", 200)):
        np.save(tmp_path / name, rng.standard_normal((rows, 8)).astype(np.float32))
    idx = tmp_path / "idx"
    files = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    first = run_cli("ingest", *files, "--index", str(idx), "--batch-size", "1000", "--metric", "l2")
    assert first.returncode == 0 and first.stdout.startswith("500 records"), first.stderr
    before = sorted((idx / "objects").iterdir())
    again = run_cli("ingest", *files, "--index", str(idx), "--batch-size", "1000")
    assert again.returncode == 0 and again.stdout.startswith("0 records"), again.stdout
    assert sorted((idx / "objects").iterdir()) == before
    view = open_snapshot(idx)
    assert view.manifest["ntotal"] == 500
    # Each file has ids of its own: b's rows follow a's.
    res = view.search(np.load(tmp_path / "b.npy")[:3], 1)
    assert res.ids[:, 0].tolist() == [300, 301, 302]


def test_a_second_numeric_file_with_overlapping_ids_is_refused(tmp_path: Path, rng) -> None:
    np.save(tmp_path / "a.npy", rng.standard_normal((100, 8)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.standard_normal((50, 8)).astype(np.float32))
    idx = tmp_path / "idx"
    assert run_cli("ingest", str(tmp_path / "a.npy"), "--index", str(idx)).returncode == 0
    p = run_cli("ingest", str(tmp_path / "b.npy"), "--index", str(idx))
    assert p.returncode == 1 and "overlap" in p.stderr and "--id-offset 100" in p.stderr
    ok = run_cli("ingest", str(tmp_path / "b.npy"), "--index", str(idx), "--id-offset", "100")
    assert ok.returncode == 0, ok.stderr
    assert open_snapshot(idx).manifest["ntotal"] == 150


def test_empty_vectors_are_dead_letters_not_crashes(tmp_path: Path) -> None:
    np.save(tmp_path / "empty.npy", np.zeros((5, 0), np.float32))
    lines = tmp_path / "x.jsonl"
    lines.write_text(
        '{"id": 1, "vector": []}\n{"id": 2, "vector": [1, 2]}\n{"id": -5, "vector": [1, 2]}\n'
    )
    for src in (tmp_path / "empty.npy", lines):
        dead = tmp_path / f"dead-{src.suffix}.jsonl"
        p = run_cli(
            "ingest", str(src), "--index", str(tmp_path / f"idx{src.suffix}"),
            "--dead-letter", str(dead), "--no-progress",
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        reasons = [json.loads(line)["reason"] for line in dead.read_text().splitlines()]
        assert reasons == (["bad-vector"] * 5 if src.suffix == ".npy" else ["bad-vector", "bad-id"])
