from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from operators import batch, decode
from streams import BadRecordError, FileSource, SourceError, StageError
from tests.helpers import collect


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
