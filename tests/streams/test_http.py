from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from anyio.abc import TaskGroup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from operators import batch, decode
from sinks import FaissSink
from sinks.live import LiveView
from streams import Batch, FileSource, Pipeline, Sink
from streams.app.http import RequestLimits, Server, make_app, parse_hostport, stats_json
from streams.app.metrics import pipeline_registry
from streams.app.progress import summary_line
from streams.records import Positions
from tests.helpers import memory_capped, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class SlowSink(Sink[Batch]):
    name = "slow-sink"

    async def open(self, task_group: TaskGroup) -> Positions:
        return {}

    async def write(self, item: Batch) -> None:
        await anyio.sleep(0.03)

    async def close(self, *, ok: bool) -> None:
        pass


async def serve(pipeline: Pipeline, search: Any = None) -> tuple[str, Server]:
    port = free_port()
    app = make_app(lambda: stats_json(pipeline.metrics()), pipeline_registry(pipeline), search)
    server = Server.for_app(app, "127.0.0.1", port)
    return f"http://127.0.0.1:{port}", server


@pytest.mark.asyncio
async def test_slow_sink_is_named_the_bottleneck_and_blocks_upstream(make_npy) -> None:
    path, _ = make_npy(60_000, 8)
    p = FileSource(path, chunk_bytes=8 * 4 * 500) | decode() | batch(500) | SlowSink()
    base, server = await serve(p)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        tg.start_soon(p.run)
        while not server.started:
            await anyio.sleep(0.01)
        await anyio.sleep(1.0)
        first = json.loads((await anyio.to_thread.run_sync(fetch, f"{base}/stats"))[1])
        await anyio.sleep(0.5)
        code, body = await anyio.to_thread.run_sync(fetch, f"{base}/stats")
        second = json.loads(body)
        p.stop()
        server.should_exit = True
    assert code == 200
    assert second["bottleneck"] == "slow-sink"
    for name in ("source->decode", "decode->batch", "batch->slow-sink"):
        assert (
            second["channels"][name]["send_blocked_seconds"]
            > first["channels"][name]["send_blocked_seconds"]
        ), name
    assert second["channels"]["batch->slow-sink"]["fill"] == 1.0
    assert "bottleneck slow-sink" in summary_line(p.metrics())


@pytest.mark.asyncio
async def test_metrics_healthz_and_search(make_npy, tmp_path) -> None:
    path, x = make_npy(5000, 8)
    sink = FaissSink(tmp_path / "idx", metric="l2", snapshot_every=0.1)
    p = FileSource(path) | decode() | batch(1000) | sink
    p.channel_bytes = 1 << 20
    base, server = await serve(p, sink.search)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        done = anyio.Event()

        async def run() -> None:
            await p.run()
            done.set()

        tg.start_soon(run)
        while not server.started or sink.ntotal < 5000 or sink.statistics().snapshots < 1:
            await anyio.sleep(0.02)
        code, text = await anyio.to_thread.run_sync(fetch, f"{base}/metrics")
        health = await anyio.to_thread.run_sync(fetch, f"{base}/healthz")
        found = await anyio.to_thread.run_sync(
            fetch, f"{base}/search", {"vectors": x[[7, 4000]].tolist(), "k": 3}
        )
        bad = await anyio.to_thread.run_sync(fetch, f"{base}/search", {"vectors": [[1, 2]]})
        await done.wait()
        server.should_exit = True
    assert code == 200 and health[0] == 200
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    for name in (
        "embedstream_channel_depth",
        "embedstream_channel_capacity",
        "embedstream_channel_peak_depth",
        "embedstream_channel_send_blocked_seconds",
        "embedstream_channel_receive_wait_seconds",
        "embedstream_channel_bytes",
        "embedstream_channel_max_bytes",
        "embedstream_stage_records",
        "embedstream_stage_busy_seconds",
        "embedstream_kafka_consumer_lag",
        "embedstream_index_vectors",
        "embedstream_freshness_seconds",
        "embedstream_snapshot_duration_seconds",
        "embedstream_last_snapshot_timestamp_seconds",
        "embedstream_dead_letters",
    ):
        assert name in families, name
    vectors = {s.labels["shard"]: s.value for s in families["embedstream_index_vectors"].samples}
    assert vectors == {"files": 5000.0}
    cap = {s.labels["channel"]: s.value for s in families["embedstream_channel_capacity"].samples}
    assert cap == {"source->decode": 4.0, "decode->batch": 4.0, "batch->faiss": 4.0}
    bound = {
        s.labels["channel"]: s.value for s in families["embedstream_channel_max_bytes"].samples
    }
    assert bound == {name: float(1 << 20) for name in cap}
    fresh = {
        s.name: s.value
        for s in families["embedstream_freshness_seconds"].samples
        if s.name.endswith(("_count", "_sum"))
    }
    assert fresh["embedstream_freshness_seconds_count"] == 5000
    records = {s.labels["stage"]: s.value for s in families["embedstream_stage_records"].samples}
    assert records["faiss"] == 5000
    assert families["embedstream_last_snapshot_timestamp_seconds"].samples[0].value > 1e9
    assert found[0] == 200
    results = json.loads(found[1])["results"]
    assert [r["ids"][0] for r in results] == [7, 4000]
    assert bad[0] == 400 and b"dimension" in bad[1]


def test_parse_hostport() -> None:
    assert parse_hostport("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_hostport(":9000") == ("127.0.0.1", 9000)
    assert parse_hostport("9000") == ("127.0.0.1", 9000)


def test_grafana_dashboard_uses_only_exported_metrics(make_npy, tmp_path) -> None:
    import re
    from pathlib import Path

    from prometheus_client import generate_latest

    path, _ = make_npy(100, 4)
    sink = FaissSink(tmp_path / "idx")
    p = FileSource(path) | decode() | batch(10) | sink
    anyio.run(p.run)
    exported = {
        f.name
        for f in text_string_to_metric_families(generate_latest(pipeline_registry(p)).decode())
    }
    dashboard = Path(__file__).resolve().parents[2] / "compose/grafana/dashboards/embedstream.json"
    used = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for name in re.findall(r"embedstream_[a-z_]+", dashboard.read_text())
    }
    assert used and used <= exported, used - exported


# -- bounded, validated search requests ------------------------------------------------


async def _asgi_post(
    app: Any, body: bytes, content_type: str = "application/json", path: str = "/search"
) -> tuple[int, bytes]:
    """One request straight into the ASGI app (no socket): fast enough to fuzz."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    status = 0
    out = bytearray()

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            out.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, bytes(out)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("http")
    x = np.random.default_rng(3).standard_normal((500, 4)).astype(np.float32)
    np.save(d / "x.npy", x)
    p = run_cli("ingest", str(d / "x.npy"), "--index", str(d / "idx"), "--no-progress")
    assert p.returncode == 0, p.stderr
    return d / "idx"


def _app(index: Path, limits: RequestLimits | None = None) -> Any:
    live = LiveView(index)
    return make_app(live.stats, live.registry(), live.search, limits=limits)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        ({"vectors": [[1, 2, 3, 4]], "k": 10**9}, None, 400, "--max-k"),
        ({"vectors": [[1, 2, 3, 4]] * 11, "k": 1}, None, 400, "--max-queries"),
        ({"vectors": [[1, 2, 3, 4]] * 5, "k": 30}, None, 400, "--max-results"),
        ({"vectors": [[1, 2, 3, 4]] * 9, "k": 1, "pad": "x" * 5000}, None, 413, "--max-request"),
        ({"vectors": [[1, 2, 3, 4]], "k": 1}, "text/plain", 415, "application/json"),
        ({"vectors": [[1, 2, "x", 4]], "k": 1}, None, 400, "$.vectors[0][2]"),
        ({"vectors": [[1, 2, 3, 4], [1, 2]], "k": 1}, None, 400, "vector 1 has 2 values"),
        ({"vectors": [[[[[1]]]]], "k": 1}, None, 400, "Expected `float`"),
        ({"vectors": [[1, 2, 3, 4]], "k": 1.5}, None, 400, "Expected `int`"),
        ({"vectors": [[1, 2, 3, 4]], "k": 0}, None, 400, ">= 1"),
        ({"vectors": [[1e39, 2, 3, 4]], "k": 1}, None, 400, "beyond float32"),
        ({"vectors": [[1, 2, 3]], "k": 1}, None, 400, "dimension 4"),
        ({"vectors": [], "k": 1}, None, 400, "empty"),
    ],
)
@pytest.mark.asyncio
async def test_bad_and_oversized_search_requests_get_a_4xx_naming_the_problem(
    small_index: Path, body: Any, content_type: str | None, status: int, says: str
) -> None:
    limits = RequestLimits(max_k=100, max_queries=10, max_results=100, max_request_bytes=4096)
    app = _app(small_index, limits)
    got, text = await _asgi_post(app, json.dumps(body).encode(), content_type or "application/json")
    assert got == status, text
    assert says in json.loads(text)["error"]
    ok, text = await _asgi_post(app, json.dumps({"vectors": [[1, 2, 3, 4]], "k": 3}).encode())
    assert ok == 200 and len(json.loads(text)["results"][0]["ids"]) == 3


@pytest.mark.asyncio
async def test_nan_literals_and_deep_nesting_are_400(small_index: Path) -> None:
    app = _app(small_index)
    for body in (b'{"vectors": [[NaN, 1, 2, 3]]}', b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe"):
        status, text = await _asgi_post(app, body)
        assert status == 400, text


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)
_bodies = st.one_of(
    _json,
    st.fixed_dictionaries(
        {"vectors": st.lists(st.lists(_json | st.floats(), max_size=5), max_size=4)},
        optional={"k": _json, "extra": _json},
    ),
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@pytest.mark.asyncio
@given(body=_bodies, raw=st.binary(max_size=64))
async def test_fuzzed_search_bodies_never_get_a_5xx(
    small_index: Path, body: Any, raw: bytes
) -> None:
    app = _app(small_index)
    for data in (json.dumps(body).encode(), raw):
        status, text = await _asgi_post(app, data)
        assert status < 500, (data, text)
        assert "error" in json.loads(text) or status == 200


def test_one_request_cannot_take_down_ingest_serve(tmp_path: Path) -> None:
    """A search asking for k=10^8 (and a 6 MB body) against `ingest --serve`, run
    under a 1 GiB address-space cap: refused with 4xx, and the process goes on."""
    data = tmp_path / "x.jsonl"
    data.write_text("".join(f'{{"id": {i}, "vector": [{i}, 1, 2, 3]}}\n' for i in range(100)))
    fifo = tmp_path / "more.jsonl"
    os.mkfifo(fifo)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.app.cli", "ingest", str(data), str(fifo), "--index",
         str(tmp_path / "idx"), "--serve", f"127.0.0.1:{port}", "--no-progress",
         "--max-latency", "0.01", "--max-request-bytes", "1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=memory_capped(1 << 30),
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/search"
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _ = fetch(url, {"vectors": [[1, 1, 2, 3]], "k": 1})
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.2)
        status, text = fetch(url, {"vectors": [[1, 1, 2, 3]], "k": 10**8})
        assert status == 400 and b"--max-k" in text
        # A 6 MB body is refused from its Content-Length, before it is read.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.putrequest("POST", "/search")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(6_000_000))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and b"--max-request-bytes" in response.read()
        conn.close()
        status, text = fetch(url, {"vectors": [[1, 1, 2, 3]], "k": 10_000})
        assert status == 200 and len(json.loads(text)["results"][0]["ids"]) == 100
        assert proc.poll() is None
    finally:
        with open(fifo, "wb"):
            pass  # the FIFO's writer closes: ingestion ends
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("100 records")


def test_serve_usage_errors_are_one_line(tmp_path: Path, small_index: Path) -> None:
    p = run_cli("serve", str(small_index), "--http", "abc")
    assert p.returncode == 2 and p.stderr.startswith("error: 'abc': expected HOST:PORT")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        p = run_cli("serve", str(small_index), "--http", f"127.0.0.1:{port}")
        assert p.returncode == 1 and "cannot listen on" in p.stderr, p.stderr
        data = tmp_path / "x.npy"
        np.save(data, np.ones((10, 4), np.float32))
        p = run_cli("ingest", str(data), "--index", str(tmp_path / "i"), "--serve", f":{port}")
        assert p.returncode == 1 and "cannot listen on" in p.stderr, p.stderr
        p = run_cli("ingest", str(data), "--index", str(tmp_path / "i"), "--serve", "abc")
        assert p.returncode == 2 and "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def payload_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("http-payloads")
    x = np.random.default_rng(5).standard_normal((200, 4)).astype(np.float32)
    lines = [
        json.dumps({"id": i, "vector": x[i].tolist(), "metadata": {"lang": ["en", "fr"][i % 2]}})
        for i in range(200)
    ]
    (d / "d.jsonl").write_text("\n".join(lines) + "\n")
    p = run_cli("ingest", str(d / "d.jsonl"), "--index", str(d / "idx"), "--no-progress",
                "--payload-index", "lang")  # fmt: skip
    assert p.returncode == 0, p.stderr
    return d / "idx"


@pytest.mark.asyncio
async def test_search_with_a_filter_and_payloads(payload_index: Path) -> None:
    app = _app(payload_index)
    body = {"vectors": [[1, 2, 3, 4]], "k": 5, "filter": {"lang": "fr"}, "with_payload": True}
    ok, text = await _asgi_post(app, json.dumps(body).encode())
    assert ok == 200, text
    (row,) = json.loads(text)["results"]
    assert len(row["ids"]) == 5 and all(i % 2 for i in row["ids"])
    assert row["payloads"] == [{"lang": "fr"}] * 5
    for bad, says in (
        ({"lang": {"gt": 1}}, "$.lang.gt: field 'lang' is declared keyword"),
        ({"lang": {"near": 1}}, "$.lang.near: unknown operator"),
        ([1], "Expected `object | null`, got `array` - at `$.filter`"),
        ({"$or": {"lang": "en"}}, "$.$or: takes a non-empty list"),
    ):
        status, text = await _asgi_post(app, json.dumps({**body, "filter": bad}).encode())
        assert status == 400 and says in json.loads(text)["error"], (bad, text)


def test_answers_are_strict_json() -> None:
    """NaN scores become null and bytes in msgpack payloads base64, in HTTP answers
    and in what `embedstream search` prints."""
    from streams.app.jsonable import jsonable

    got = jsonable({"scores": [float("nan"), 0.5], "payloads": [{"blob": b"\x00\x01"}, None]})
    assert got == {"scores": [None, 0.5], "payloads": [{"blob": {"base64": "AAE="}}, None]}
    json.dumps(got, allow_nan=False)
