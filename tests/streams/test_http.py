from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

import anyio
from anyio.abc import TaskGroup
from prometheus_client.parser import text_string_to_metric_families

from operators import batch, decode
from sinks import FaissSink
from streams import Batch, FileSource, Pipeline, Sink
from streams.http import Server, make_app, parse_hostport, stats_json
from streams.metrics import pipeline_registry
from streams.progress import summary_line
from streams.records import Positions


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


async def test_metrics_healthz_and_search(make_npy, tmp_path) -> None:
    path, x = make_npy(5000, 8)
    sink = FaissSink(tmp_path / "idx", metric="l2", snapshot_every=0.1)
    p = FileSource(path) | decode() | batch(1000) | sink
    base, server = await serve(p, sink.search)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        done = anyio.Event()

        async def run() -> None:
            await p.run()
            done.set()

        tg.start_soon(run)
        while not server.started or sink.ntotal < 5000 or sink.statistics()["snapshots"] < 1:
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
