"""Running a pipeline from the command line: signal handling, the live progress view,
the HTTP endpoints (``--serve``) with their request bounds and default search
parameters, and one-line errors with the documented exit codes (1 for a failed run,
2 for bad usage).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import anyio
import click

from sinks.params import parse_params
from streams.app.gc_tuning import tune_gc
from streams.app.memory import start_trimming
from streams.app.progress import watch
from streams.errors import ConfigError, EmbedstreamError, StageError
from streams.kafka import KafkaSource
from streams.pipeline import Pipeline, PipelineMetrics

__all__ = [
    "Serving",
    "fail",
    "listen",
    "params_option",
    "run_pipeline",
    "serve_options",
    "serving_from",
]

log = logging.getLogger("embedstream")


def fail(exc: BaseException, code: int = 1) -> NoReturn:
    msg = str(exc)
    if isinstance(exc, StageError) and isinstance(exc.cause, EmbedstreamError):
        msg = f"stage {exc.stage!r}: {exc.cause}"
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def serve_options(f: Any) -> Any:
    """The ``POST /search`` bounds, shared by every command that serves HTTP."""
    from streams.app.http import RequestLimits

    d = RequestLimits()
    options = [
        click.option(
            "--" + field.replace("_", "-"),
            default=getattr(d, field),
            show_default=True,
            type=click.IntRange(min=1),
            help=f"POST /search: {what}.",
        )
        for field, what in (
            ("max_k", "largest k"),
            ("max_queries", "most query vectors per request"),
            ("max_results", "most queries x k per request"),
            ("max_request_bytes", "largest request body"),
        )
    ]
    for option in reversed([*options, params_option]):
        f = option(f)
    return f


def _parseparams_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_params(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


params_option = click.option(
    "--params",
    default=None,
    metavar="NAME=VALUE[,...]",
    callback=_parseparams_option,
    help="Search-time parameters, FAISS ParameterSpace syntax: nprobe=32 (IVF), "
    "efSearch=128 (HNSW), max_codes, quantizer_efSearch, ht. [default: what "
    "`embedstream tune` stored with the index]",
)


@dataclass(frozen=True)
class Serving:
    """How the HTTP endpoints answer: request bounds and default search parameters."""

    limits: Any
    params: dict[str, int] | None


def serving_from(options: dict[str, Any]) -> Serving:
    from streams.app.http import RequestLimits

    limits = RequestLimits(
        max_k=options.pop("max_k"),
        max_queries=options.pop("max_queries"),
        max_results=options.pop("max_results"),
        max_request_bytes=options.pop("max_request_bytes"),
    )
    return Serving(limits, options.pop("params"))


def listen(hostport: str) -> tuple[str, int, Any]:
    """Parse ``HOST:PORT`` (exit 2 when it is not one) and bind it now (exit 1 when
    it cannot be bound), before anything else starts."""
    from streams.app.http import bind, parse_hostport

    try:
        host, port = parse_hostport(hostport)
    except EmbedstreamError as exc:
        fail(exc, 2)
    try:
        return host, port, bind(host, port)
    except EmbedstreamError as exc:
        fail(exc, 1)


async def _run(
    pipeline: Pipeline, *, progress: bool, serve: tuple[str, int, Any] | None, serving: Serving
) -> PipelineMetrics:
    error: EmbedstreamError | None = None
    metrics: PipelineMetrics | None = None
    async with anyio.create_task_group() as tg:
        if progress:
            tg.start_soon(watch, pipeline)
        if serve:
            tg.start_soon(_serve_pipeline, pipeline, serve, serving)
        try:
            metrics = await pipeline.run(handle_signals=True)
        except EmbedstreamError as exc:
            # Raised outside the task group, so it is not wrapped in a group.
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    assert metrics is not None
    return metrics


async def _serve_pipeline(
    pipeline: Pipeline, listener: tuple[str, int, Any], serving: Serving
) -> None:
    from streams.app.http import Server, make_app, stats_json
    from streams.app.metrics import pipeline_registry

    host, port, sock = listener
    search = getattr(pipeline.sink, "search", None)
    app = make_app(
        lambda: stats_json(pipeline.metrics()),
        pipeline_registry(pipeline),
        search,
        healthy=lambda: not pipeline.stopping,
        limits=serving.limits,
        params=serving.params,
    )
    server = Server.for_app(app, host, port)
    log.warning("serving /metrics, /healthz, /stats and POST /search on http://%s:%d", host, port)
    await server.serve(sockets=[sock])


def run_pipeline(
    pipeline: Pipeline,
    *,
    progress: bool = True,
    serve: str | None = None,
    serving: Serving | None = None,
) -> PipelineMetrics:
    """Run ``pipeline`` with signal handling, progress and (optionally) the HTTP
    endpoints; exit on error."""
    listener = listen(serve) if serve else None
    if isinstance(pipeline.source, KafkaSource):
        import aiokafka  # noqa: F401  (imported now, so that tune_gc freezes it too)
    # Everything imported and built: from here on the collector skips all of it.
    tune_gc()
    start_trimming()
    try:
        settings = serving or Serving(None, None)
        return anyio.run(
            lambda: _run(pipeline, progress=progress, serve=listener, serving=settings)
        )
    except EmbedstreamError as exc:
        fail(exc)
