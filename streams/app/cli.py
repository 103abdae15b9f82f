"""The ``embedstream`` command line; the composition root of sources, operators, sinks.

Commands: ``ingest``, ``search``, ``inspect``, ``run`` and ``demo``. Errors print one
line (``error: <where>: <what> (<what to do>)``) and exit non-zero: 1 for a failed
run, 2 for bad usage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import runpy
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import click
import numpy as np
from rich.console import Console
from rich.table import Table

from sinks import SnapshotStore, open_snapshot
from sinks.store import chain_names
from streams.app.ingest import IngestOptions, build_ingest_pipeline
from streams.app.ingest_options import ingest_options
from streams.app.jsonable import jsonable
from streams.app.logs import configure as configure_logging
from streams.app.memory import pin_mmap_threshold
from streams.app.progress import channel_table, summary_line
from streams.app.running import (
    fail,
    listen,
    params_option,
    run_pipeline,
    serve_options,
    serving_from,
)
from streams.errors import ConfigError, EmbedstreamError
from streams.pipeline import Pipeline

__all__ = ["main"]

log = logging.getLogger("embedstream")


class _Commands(click.Group):
    """Every error is one line: ours say where and what to do; anything else is
    named as a bug, with the traceback behind ``-vv``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except EmbedstreamError as exc:
            fail(exc)
        except Exception as exc:
            log.debug("unexpected error", exc_info=True)
            click.echo(
                f"error: unexpected {type(exc).__name__}: {exc} (a bug in embedstream: "
                "run with -vv for the traceback, and please report it)",
                err=True,
            )
            sys.exit(1)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="embedstream")
def main(verbose: int) -> None:
    """Keep FAISS indexes continuously fresh from streams of embeddings."""
    configure_logging(verbose)
    # Before the first big allocation: keeps peak memory flat over long streams.
    pin_mmap_threshold()


@main.command()
@ingest_options
@serve_options
@click.option("--progress/--no-progress", default=True, help="Live progress on a terminal.")
def ingest(
    sources: tuple[str, ...], index_dir: str, progress: bool, serve: str | None, **options: Any
) -> None:
    """Ingest files (JSONL, .npy, .fvecs, .bvecs) or Kafka topics
    (kafka://HOST:PORT/TOPIC[,TOPIC...]) into the index at DIR."""
    serving = serving_from(options)
    try:
        pipeline = build_ingest_pipeline(list(sources), index_dir, IngestOptions(**options))
    except EmbedstreamError as exc:
        fail(exc, 2)
    metrics = run_pipeline(pipeline, progress=progress, serve=serve, serving=serving)
    click.echo(summary_line(metrics))


def _load_queries(path: str) -> np.ndarray[Any, Any]:
    p = Path(path)
    try:
        if p.suffix == ".npy":
            q = np.load(p, allow_pickle=False)
        else:
            lines = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            q = np.array([x["vector"] if isinstance(x, dict) else x for x in lines])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.UsageError(f"{path}: cannot read queries ({exc})") from None
    return np.atleast_2d(q.astype(np.float32))


@main.command()
@click.argument("index_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option(
    "--queries",
    "-q",
    required=True,
    help='Queries: a .npy (rows x dim) or JSONL of vectors / {"vector": [...]}.',
)
@click.option(
    "-k", default=10, show_default=True, type=click.IntRange(min=1), help="Results per query."
)
@params_option
@click.option(
    "--positions",
    "show_positions",
    is_flag=True,
    help='First print one JSON line {"positions": {shard: position}, "snapshots": '
    "{shard: seq}}: up to where each shard was searched (a Kafka offset: every record "
    "before it is in the results).",
)
@click.option(
    "--filter",
    "where",
    metavar="JSON",
    help='Only vectors whose payload passes this filter, e.g. \'{"lang": "en", "year": '
    '{"gte": 2020}}\' (operators in, nin, ne, gt, gte, lt, lte, exists; $or, $and, $not).',
)
@click.option(
    "--with-payload", is_flag=True, help='Each result line carries "payloads" aligned with "ids".'
)
def search(
    index_dir: str,
    queries: str,
    k: int,
    params: dict[str, int] | None,
    show_positions: bool,
    where: str | None,
    with_payload: bool,
) -> None:
    """Search the latest complete snapshot in DIR; one JSON line per query."""
    q = _load_queries(queries)
    try:
        view = open_snapshot(index_dir)
    except EmbedstreamError as exc:
        fail(exc)
    try:
        results = view.search(q, k, params, filter=where, with_payload=with_payload)
    except ConfigError as exc:
        fail(exc, 2)  # parameters or queries that do not fit the index
    except EmbedstreamError as exc:
        fail(exc)
    out = sys.stdout
    if show_positions:
        out.write(json.dumps({"positions": results.positions, "snapshots": results.snapshots}))
        out.write("\n")
    for row in results.rows():
        out.write(json.dumps(jsonable(row)) + "\n")


@main.command()
@click.argument("index_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option(
    "--recall",
    "target",
    required=True,
    type=click.FloatRange(min=0, max=1, min_open=True),
    help="The recall@k to reach, e.g. 0.95.",
)
@click.option(
    "-k", default=10, show_default=True, type=click.IntRange(min=1), help="Results per query."
)
@click.option(
    "--sample",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Query vectors drawn from the index's own vectors.",
)
@click.option(
    "--queries",
    "-q",
    default=None,
    help="Use these queries (.npy or JSONL) instead of a sample of the index.",
)
@click.option("--dry-run", is_flag=True, help="Print the table; store nothing.")
def tune(
    index_dir: str, target: float, k: int, sample: int, queries: str | None, dry_run: bool
) -> None:
    """Find the cheapest search parameters (nprobe, efSearch) that reach --recall,
    and store them with the index: searches, serve and ingest then use them."""
    from sinks.tune import store_choice
    from sinks.tune import tune as run_tune

    q = _load_queries(queries) if queries else None
    try:
        view = open_snapshot(index_dir)
        result = run_tune(view, target, k=k, sample=sample, queries=q)
    except ConfigError as exc:
        fail(exc, 2)
    except EmbedstreamError as exc:
        fail(exc)
    console = Console()
    table = Table(title=f"recall@{result.k} over {result.queries:,} queries (target {target})")
    table.add_column("parameters")
    table.add_column("recall", justify="right")
    table.add_column("ms per query", justify="right")
    for t in result.trials:
        mark = " <- chosen" if t is result.chosen else ""
        shown = ",".join(f"{n}={v}" for n, v in t.params.items()) or "(none)"
        table.add_row(shown + mark, f"{t.recall:.4f}", f"{t.seconds_per_query * 1000:.3f}")
    console.print(table)
    if result.chosen is None:
        best = result.best
        assert best is not None
        fail(
            EmbedstreamError(
                f"no setting reached recall {target} (best {best.recall:.4f} with "
                f"{best.params or 'no parameters'}); build the index with more lists or "
                "links, or ask for less; nothing was stored"
            )
        )
    if dry_run:
        return
    try:
        seqs = store_choice(index_dir, result.chosen.params)
    except EmbedstreamError as exc:
        fail(exc)
    shown = ",".join(f"{n}={v}" for n, v in result.chosen.params.items()) or "(none)"
    click.echo(f"stored search parameters {shown} in snapshot {', '.join(map(str, seqs))}")


@main.command()
@click.argument("index_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="The manifest as JSON.")
@click.option("--history", is_flag=True, help="Every manifest on disk, newest first.")
@click.option(
    "--verify",
    "verify_all",
    is_flag=True,
    help="Hash every object, also those recorded as hashed and unchanged since (finds "
    "damage that left a file's size and time alone).",
)
def inspect(index_dir: str, as_json: bool, history: bool, verify_all: bool) -> None:
    """Show the snapshot DIR would load (verifying objects, falling back if needed)."""
    try:
        view = open_snapshot(index_dir, verify_all=verify_all)
    except EmbedstreamError as exc:
        fail(exc)
    info: dict[str, Any] = {"dir": index_dir, **view.manifest, "fallbacks": view.fallbacks}
    info["payload_fields"] = {
        name: dataclasses.asdict(stats) for name, stats in view.payload_fields().items()
    }
    if history:
        info["history"] = SnapshotStore(index_dir, readonly=True, verify_all=verify_all).history()
        workers = [c for c in chain_names(index_dir) if c is not None]
        if workers:
            info["worker_history"] = {
                c: SnapshotStore(index_dir, chain=c, readonly=True, verify_all=verify_all).history()
                for c in workers
            }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    shared = [w for w in info["workers"] if w != "-"]
    if shared:
        click.echo(f"{index_dir}: combined state of {len(info['workers'])} chain(s)")
    else:
        click.echo(f"{index_dir}: snapshot {info['seq']} of {info['created']}")
    click.echo(
        f"  {info['factory']} {info['metric']} dim {info['dim']}, {info['ntotal']:,} vectors"
        f" in {len(info['shards'])} shard(s)"
    )
    if info.get("search_params"):
        chosen = ",".join(f"{k}={v}" for k, v in info["search_params"].items())
        click.echo(f"  search parameters {chosen} (from tune)")
    retrain = info.get("last_retrain")
    if retrain:
        click.echo(
            f"  codec generation {info['generation']}: retrained {retrain['at']} on "
            f"{retrain['sample']:,} vectors in {retrain['seconds']:.1f} s ({retrain['reason']})"
        )
    if info.get("ttl"):
        expired = sum(s.get("expired", 0) for s in info["shards"])
        click.echo(
            f"  vectors expire {info['ttl']:g} s after their event time; {expired:,} expired"
        )
    for name, f in info["payload_fields"].items():
        how = "indexed" if f["indexed"] else "stored"
        odd = f", {f['mismatched']:,} of another type (not indexed)" if f["mismatched"] else ""
        click.echo(f"  payload field {name}: {f['type']}, {how}, {f['count']:,} vectors{odd}")
    for s in info["shards"]:
        owner = f", owner {s['owner']} (epoch {s['epoch']})" if shared else ""
        click.echo(f"  shard {s['name']}: {s['ntotal']:,} vectors, position {s['position']}{owner}")
    for fb in info["fallbacks"]:
        click.echo(f"  fell back past snapshot {fb['seq']}: {fb['reason']}")
    histories = {"-": info.get("history", []), **info.get("worker_history", {})}
    for name, entries in histories.items():
        if entries and shared:
            click.echo(f" worker {name}:")
        for h in entries:
            state = "ok" if h["ok"] else f"BROKEN: {h['error']}"
            mark = "*" if h["current"] else " "
            click.echo(f" {mark}{h['seq']}: {state}")


@main.command()
@click.argument("index_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option(
    "--http",
    "hostport",
    default="127.0.0.1:8000",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen.",
)
@click.option(
    "--reload-every",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds between checks for a new snapshot.",
)
@click.option(
    "--mmap/--no-mmap",
    default=True,
    show_default=True,
    help="Search segments in place from the snapshot's files (page cache), or read "
    "them into memory first.",
)
@serve_options
def serve(index_dir: str, hostport: str, reload_every: float, mmap: bool, **options: Any) -> None:
    """Serve POST /search, /stats, /healthz and /metrics over the snapshots in DIR,
    read-only, picking up each new snapshot as ingestion publishes it (and keeping
    the last good one when a new one does not load)."""
    from sinks.live import LiveView
    from streams.app.http import Server, make_app

    serving = serving_from(options)
    host, port, sock = listen(hostport)
    try:
        live = LiveView(index_dir, mmap=mmap)
    except EmbedstreamError as exc:
        fail(exc)

    async def main_() -> None:
        app = make_app(
            live.stats,
            live.registry(),
            live.search,
            limits=serving.limits,
            health=live.health,
            params=serving.params,
        )
        server = Server.for_app(app, host, port)

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    server.should_exit = True
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(live.follow, reload_every)
            tg.start_soon(stop_on_signal)
            click.echo(f"serving {index_dir} on http://{host}:{port}", err=True)
            await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()

    anyio.run(main_)


@main.command()
@click.argument("pipeline_file", metavar="PIPELINE.py", type=click.Path(dir_okay=False))
@click.option(
    "--serve",
    default=None,
    metavar="HOST:PORT",
    help="Serve /metrics, /healthz, /stats and POST /search while running "
    "(binds 127.0.0.1 unless a host is given).",
)
@serve_options
@click.option("--progress/--no-progress", default=True, help="Live progress on a terminal.")
def run(pipeline_file: str, progress: bool, serve: str | None, **options: Any) -> None:
    """Run the ``pipeline`` object that PIPELINE.py defines."""
    serving = serving_from(options)
    try:
        namespace = runpy.run_path(pipeline_file, run_name="__embedstream__")
    except FileNotFoundError:
        fail(click.UsageError(f"{pipeline_file}: no such file"), 2)
    pipeline = namespace.get("pipeline")
    if not isinstance(pipeline, Pipeline):
        fail(
            EmbedstreamError(
                f"{pipeline_file} defines no `pipeline` (a Pipeline made with source | ... | sink)"
            ),
            2,
        )
    metrics = run_pipeline(pipeline, progress=progress, serve=serve, serving=serving)
    click.echo(summary_line(metrics))


@main.command()
@click.option(
    "--rows",
    default=200_000,
    show_default=True,
    type=click.IntRange(min=100),
    help="How many embeddings to make.",
)
@click.option("--dim", default=128, show_default=True, type=click.IntRange(min=2))
def demo(rows: int, dim: int) -> None:
    """Make sample embeddings, ingest, snapshot and search them (no network)."""
    console = Console()
    with tempfile.TemporaryDirectory(prefix="embedstream-demo-") as tmp:
        data = Path(tmp) / "embeddings.npy"
        rng = np.random.default_rng(7)
        centers = rng.standard_normal((64, dim), dtype=np.float32)
        x = centers[rng.integers(0, 64, rows)] + 0.3 * rng.standard_normal(
            (rows, dim), dtype=np.float32
        )
        np.save(data, x)
        console.print(f"made {rows:,} x {dim} embeddings in 64 clusters")
        pipeline = build_ingest_pipeline(
            [str(data)],
            str(Path(tmp) / "index"),
            normalize=True,
            batch_size=8192,
            snapshot_every=0,
        )
        m = run_pipeline(pipeline, progress=False)
        console.print(channel_table(m, title="decode -> batch -> normalize -> faiss"))
        console.print(summary_line(m))
        view = open_snapshot(Path(tmp) / "index")
        picks = rng.choice(rows, 1000, replace=False)
        started = time.perf_counter()
        res = view.search(x[picks], 5)
        took = time.perf_counter() - started
        hit = float(np.mean(res.ids[:, 0] == picks))
        console.print(
            f"searched 1,000 queries in {took * 1000:.1f} ms; own id first for {hit:.1%}; "
            f"snapshot {view.manifest['seq']} holds {view.manifest['ntotal']:,} vectors"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
