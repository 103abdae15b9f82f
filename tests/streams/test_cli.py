from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MINILM_BASE


def cli(
    *args: str, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streams.app.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def real_10k(tmp_path: Path) -> Path:
    """10,000 x 384 float32: the committed real MiniLM slice, then noisy copies of it."""
    real = np.load(MINILM_BASE).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal((10_000 - len(real), 384))
    extra = real[np.arange(len(noise)) % len(real)] + 0.05 * noise.astype(np.float32)
    x = np.vstack([real, extra])
    path = tmp_path / "base.npy"
    np.save(path, x)
    return path


def test_ingest_inspect_search_10k(tmp_path: Path, real_10k: Path) -> None:
    idx = tmp_path / "idx"
    out = cli("ingest", str(real_10k), "--index", str(idx), "--normalize").stdout
    assert "10,000 records" in out
    info = json.loads(cli("inspect", str(idx), "--json").stdout)
    assert info["ntotal"] == 10_000 and info["dim"] == 384
    assert info["metric"] == "ip" and info["factory"] == "Flat" and info["seq"] == 1
    assert info["shards"][0]["position"] == {str(real_10k.resolve()): 10_000}
    q = tmp_path / "q.npy"
    np.save(q, np.load(real_10k)[:20])
    lines = cli("search", str(idx), "--queries", str(q), "-k", "5").stdout.splitlines()
    assert len(lines) == 20
    rows = [json.loads(line) for line in lines]
    assert [r["ids"][0] for r in rows] == list(range(20))
    assert all(len(r["ids"]) == len(r["scores"]) == 5 for r in rows)
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in rows)
    # Once more: the position says everything is in, nothing is added.
    out = cli("ingest", str(real_10k), "--index", str(idx)).stdout
    assert out.startswith("0 records")
    hist = json.loads(cli("inspect", str(idx), "--json", "--history").stdout)["history"]
    assert [h["seq"] for h in hist] == [1] and hist[0]["ok"]
    assert "10,000 vectors" in cli("inspect", str(idx)).stdout


def test_bad_input_one_line_errors(tmp_path: Path) -> None:
    p = cli("ingest", str(tmp_path / "missing.npy"), "--index", str(tmp_path / "i"), check=False)
    assert p.returncode == 1
    assert p.stderr.strip().count("\n") == 0
    assert "missing.npy" in p.stderr and "no such file" in p.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "vector": [1, 2]}\n{"id": 2, "vector": [1, 2, 3]}\n')
    p = cli("ingest", str(bad), "--index", str(tmp_path / "i"), check=False)
    assert p.returncode == 1
    assert "bad.jsonl line 2" in p.stderr and "wrong-dimension" in p.stderr

    trunc = tmp_path / "t.npy"
    np.save(trunc, np.ones((50, 4), np.float32))
    trunc.write_bytes(trunc.read_bytes()[:-7])
    p = cli("ingest", str(trunc), "--index", str(tmp_path / "i"), check=False)
    assert p.returncode == 1 and "t.npy" in p.stderr and "truncated" in p.stderr

    p = cli("ingest", str(tmp_path / "x.csv"), "--index", str(tmp_path / "i"), check=False)
    assert p.returncode == 2 and "--format" in p.stderr

    p = cli("inspect", str(tmp_path / "nothing"), check=False)
    assert p.returncode == 1 and "no such directory" in p.stderr


def test_run_pipeline_file(tmp_path: Path) -> None:
    data = tmp_path / "v.npy"
    np.save(data, np.random.default_rng(1).standard_normal((500, 8)).astype(np.float32))
    script = tmp_path / "pipe.py"
    script.write_text(
        "from streams import FileSource\n"
        "from operators import decode, batch, normalize\n"
        "from sinks import FaissSink\n"
        f"pipeline = FileSource({str(data)!r}) | decode() | batch(100) | normalize()"
        f" | FaissSink({str(tmp_path / 'idx')!r}, normalize_queries=True)\n"
    )
    assert "500 records" in cli("run", str(script)).stdout
    assert json.loads(cli("inspect", str(tmp_path / "idx"), "--json").stdout)["ntotal"] == 500
    (tmp_path / "nopipe.py").write_text("x = 1\n")
    p = cli("run", str(tmp_path / "nopipe.py"), check=False)
    assert p.returncode == 2 and "defines no `pipeline`" in p.stderr


def test_demo_runs() -> None:
    out = cli("demo", "--rows", "5000", "--dim", "32").stdout
    assert "5,000 records" in out
    assert "own id first for 100.0%" in out


def test_sigint_drains_and_snapshots(tmp_path: Path) -> None:
    import os
    import signal
    import threading
    import time

    fifo = tmp_path / "live.jsonl"
    os.mkfifo(fifo)
    release = threading.Event()

    def writer() -> None:
        with open(fifo, "w") as f:
            for i in range(100):
                f.write(json.dumps({"id": i, "vector": [float(i), 1.0]}) + "\n")
            f.flush()
            release.wait(60)  # keep the pipe open: the source never sees its end

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    idx = tmp_path / "idx"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.app.cli",
            "ingest",
            str(fifo),
            "--index",
            str(idx),
            "--metric",
            "l2",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "100 records" in out
    info = json.loads(cli("inspect", str(idx), "--json").stdout)
    assert info["ntotal"] == 100


def test_dead_letters_for_every_bad_kind(tmp_path: Path) -> None:
    good = [{"id": i, "vector": [float(i), 1.0, 0.5]} for i in range(10)]
    bad = [
        "{not json",  # not-json
        '{"id": 100, "vector": [1, 2]}',  # wrong-dimension
        '{"id": 101, "vector": [1, 2, 1e999]}',  # not-finite
        '{"vector": [1, 2, 3]}',  # missing-id
        '{"id": 99999999999999999999, "vector": [1, 2, 3]}',  # id-out-of-range
        '{"id": 102, "vector": [0, 0, 0]}',  # zero-vector (normalising)
        '{"id": 103, "vector": [1, 2, 3], "version": 9}',  # unknown-version
        '{"id": 104}',  # missing-vector
        '{"id": 105, "vector": "abc"}',  # bad-vector
        '{"id": 106, "vector": [' + ",".join(["0.5"] * 300) + "]}",  # oversized
    ]
    lines = [json.dumps(good[0]), *bad[:5], *map(json.dumps, good[1:]), *bad[5:]]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    dl = tmp_path / "dl.jsonl"
    out = cli(
        "ingest",
        str(data),
        "--index",
        str(tmp_path / "idx"),
        "--normalize",
        "--dead-letter",
        str(dl),
        "--max-payload-bytes",
        "1000",
        "--no-progress",
    ).stdout
    assert "10 records" in out
    info = json.loads(cli("inspect", str(tmp_path / "idx"), "--json").stdout)
    assert info["ntotal"] == 10
    letters = [json.loads(line) for line in dl.read_text().splitlines()]
    assert sorted(r["reason"] for r in letters) == sorted(
        [
            "not-json",
            "wrong-dimension",
            "not-finite",
            "missing-id",
            "id-out-of-range",
            "zero-vector",
            "unknown-version",
            "missing-vector",
            "bad-vector",
            "oversized",
        ]
    )
    for r in letters:
        assert set(r) >= {"reason", "stage", "source", "position", "raw"}
        assert r["stage"] == "decode" and r["source"] == str(data)
        line = r["position"]["line"]
        assert lines[line - 1] == r["raw"]
    # Again: nothing new, no new dead letters (positions advanced past them).
    cli(
        "ingest",
        str(data),
        "--index",
        str(tmp_path / "idx"),
        "--dead-letter",
        str(dl),
        "--normalize",
        "--max-payload-bytes",
        "1000",
    )
    assert len(dl.read_text().splitlines()) == 10


def test_search_and_inspect_while_another_process_ingests(tmp_path: Path) -> None:
    import os
    import threading
    import time

    fifo = tmp_path / "live.jsonl"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer() -> None:
        rng = np.random.default_rng(0)
        with open(fifo, "w") as f:
            i = 0
            while not stop.is_set() and i < 20000:
                for _ in range(200):
                    f.write(json.dumps({"id": i, "vector": rng.standard_normal(8).tolist()}) + "\n")
                    i += 1
                f.flush()
                time.sleep(0.02)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    idx = tmp_path / "idx"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.app.cli",
            "ingest",
            str(fifo),
            "--index",
            str(idx),
            "--metric",
            "l2",
            "--snapshot-every",
            "0.2",
            "--keep",
            "2",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    q = tmp_path / "q.npy"
    np.save(q, np.zeros((2, 8), np.float32))
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(seen) < 8 and time.monotonic() < deadline:
            if not (idx / "CURRENT").exists():
                time.sleep(0.05)
                continue
            out = cli("search", str(idx), "--queries", str(q), "-k", "3").stdout.splitlines()
            assert len(out) == 2 and all(len(json.loads(line)["ids"]) == 3 for line in out)
            seen.append(json.loads(cli("inspect", str(idx), "--json").stdout)["seq"])
    finally:
        stop.set()
        proc.send_signal(2)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert len(seen) == 8 and seen == sorted(seen) and seen[-1] > seen[0]


def test_inspect_reports_fallback_from_a_corrupt_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "a.npy"
    np.save(data, np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32))
    idx = tmp_path / "idx"
    cli("ingest", str(data), "--index", str(idx), "--metric", "l2")
    np.save(data, np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32))
    cli("ingest", str(data), "--index", str(idx))
    info = json.loads(cli("inspect", str(idx), "--json").stdout)
    assert info["seq"] == 2 and info["ntotal"] == 200
    newest = {s["object"] for s in info["shards"][0]["segments"]}
    first = json.loads((idx / "manifests" / "00000001.json").read_text())
    changed = newest - {s["object"] for s in first["shards"][0]["segments"]}
    victim = idx / "objects" / changed.pop()
    victim.write_bytes(victim.read_bytes()[:-10])  # torn
    info = json.loads(cli("inspect", str(idx), "--json").stdout)
    assert info["seq"] == 1 and info["ntotal"] == 100
    assert info["fallbacks"][0]["seq"] == 2 and "corrupt" in info["fallbacks"][0]["reason"]
    assert "fell back past snapshot 2" in cli("inspect", str(idx)).stdout
    q = tmp_path / "q.npy"
    np.save(q, np.zeros((1, 4), np.float32))
    assert len(json.loads(cli("search", str(idx), "--queries", str(q)).stdout)["ids"]) == 10


def test_poison_message_flood_is_counted_not_logged_10000_times(tmp_path: Path) -> None:
    data = tmp_path / "poison.jsonl"
    good = [json.dumps({"id": i, "vector": [1.0, float(i)]}) for i in range(10)]
    poison = ['{"id": 1, "vector": "poison"}'] * 10_000
    data.write_text("\n".join(good[:5] + poison + good[5:]) + "\n")
    dl = tmp_path / "dl.jsonl"
    proc = cli(
        "ingest",
        str(data),
        "--index",
        str(tmp_path / "idx"),
        "--dead-letter",
        str(dl),
        "--no-progress",
    )
    assert "10 records" in proc.stdout
    assert len(dl.read_text().splitlines()) == 10_000
    assert len(proc.stderr.splitlines()) <= 3, proc.stderr


def test_serve_follows_new_snapshots(tmp_path: Path) -> None:
    import signal
    import time

    from tests.streams.test_http import fetch, free_port

    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    data = tmp_path / "v.npy"
    np.save(data, x[:100])
    idx = tmp_path / "idx"
    cli("ingest", str(data), "--index", str(idx), "--metric", "l2")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.app.cli",
            "serve",
            str(idx),
            "--http",
            f"127.0.0.1:{port}",
            "--reload-every",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                code, body = fetch(f"{base}/stats")
                break
            except OSError:
                time.sleep(0.1)
        assert json.loads(body)["ntotal"] == 100
        code, body = fetch(f"{base}/search", {"vectors": [x[250].tolist()], "k": 1})
        assert code == 200 and json.loads(body)["results"][0]["ids"] != [250]
        np.save(data, x)  # grow the file; a second ingest publishes snapshot 2
        cli("ingest", str(data), "--index", str(idx))
        while time.monotonic() < deadline:
            if json.loads(fetch(f"{base}/stats")[1])["seq"] == 2:
                break
            time.sleep(0.05)
        code, body = fetch(f"{base}/search", {"vectors": [x[250].tolist()], "k": 1})
        assert json.loads(body)["results"][0]["ids"] == [250]
        code, text = fetch(f"{base}/metrics")
        assert b'embedstream_index_vectors{shard="files"} 300.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_payloads_from_jsonl_filtered_search_and_inspect(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    metas = [
        {"lang": ["en", "fr", "de"][i % 3], "year": 1990 + i % 40, "tags": ["a"]}
        for i in range(300)
    ]
    metas[10] = {"lang": "en", "year": "unknown"}  # another type than declared
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": i, "vector": x[i].tolist(), "metadata": metas[i]}) + "\n"
            for i in range(300)
        )
    )
    idx = tmp_path / "idx"
    cli("ingest", str(data), "--index", str(idx), "--metric", "l2", "--no-progress",
        "--payload-index", "lang", "--payload-index", "year:int")  # fmt: skip
    np.save(tmp_path / "q.npy", x[:3])
    where = '{"lang": "en", "year": {"gte": 2010}}'
    out = cli("search", str(idx), "--queries", str(tmp_path / "q.npy"), "-k", "4",
              "--filter", where, "--with-payload").stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert len(row["ids"]) == len(row["payloads"]) == 4
        for i, p in zip(row["ids"], row["payloads"], strict=True):
            assert p == metas[i] and p["lang"] == "en" and p["year"] >= 2010
    # The first query is vector 0 (lang en, year 1990): not in the filtered results.
    assert 0 not in rows[0]["ids"]
    bad = cli("search", str(idx), "--queries", str(tmp_path / "q.npy"),
              "--filter", '{"year": {"gte": "x"}}', check=False)  # fmt: skip
    assert bad.returncode == 2 and "$.year.gte" in bad.stderr and len(bad.stderr.splitlines()) == 1
    bad = cli("search", str(idx), "--queries", str(tmp_path / "q.npy"), "--filter", "{",
              check=False)  # fmt: skip
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    info = json.loads(cli("inspect", str(idx), "--json").stdout)
    assert info["payload_index"] == {"lang": "keyword", "year": "int"}
    assert info["payload_fields"]["year"] == {
        "type": "int", "count": 299, "indexed": True, "mismatched": 1
    }  # fmt: skip
    assert info["payload_fields"]["tags"]["indexed"] is False
    text = cli("inspect", str(idx)).stdout
    assert "payload field year: int, indexed, 299 vectors, 1 of another type" in text
