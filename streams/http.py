"""The HTTP side of a running pipeline (``--serve HOST:PORT``).

- ``GET /metrics``: Prometheus text format.
- ``GET /healthz``: ``{"status": "ok"}`` while the pipeline runs.
- ``GET /stats``: the figures of :meth:`Pipeline.metrics` as JSON, with the
  bottleneck stage named.
- ``POST /search``: ``{"vectors": [[...], ...], "k": 10}`` answered from the live
  index as ``{"results": [{"ids": [...], "scores": [...]}, ...]}``.

Served by uvicorn inside the pipeline's own event loop; binds 127.0.0.1 unless told
otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from streams.errors import ConfigError, EmbedstreamError
from streams.pipeline import PipelineMetrics

__all__ = ["Server", "make_app", "parse_hostport", "stats_json"]

SearchFn = Callable[[Any, int], Awaitable[Any]]


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` or ``PORT``.

    Raises:
        ConfigError: no valid port.
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{text!r}: expected HOST:PORT")
    return host or default_host, int(port)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def stats_json(m: PipelineMetrics) -> dict[str, Any]:
    """The JSON body of ``/stats``."""
    body: dict[str, Any] = _clean(
        {
            "elapsed_seconds": m.elapsed_seconds,
            "bottleneck": m.bottleneck(),
            "stages": {k: dataclasses.asdict(v) for k, v in m.stages.items()},
            "channels": {
                k: dataclasses.asdict(v) | {"fill": v.fill} for k, v in m.channels.items()
            },
            "source": m.source,
            "sink": m.sink,
        }
    )
    return body


def make_app(
    stats: Callable[[], dict[str, Any]],
    registry: CollectorRegistry,
    search: SearchFn | None,
    healthy: Callable[[], bool] = lambda: True,
) -> Starlette:
    """The Starlette app serving a pipeline (or, for ``serve``, a snapshot view).

    Args:
        stats: the JSON body of ``/stats``.
        registry: what ``/metrics`` exports.
        search: ``await search(vectors, k)`` returning search results.
        healthy: ``/healthz`` answers 503 when this is false.
    """

    async def get_metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def get_health(_: Request) -> Response:
        ok = healthy()
        return JSONResponse({"status": "ok" if ok else "stopping"}, status_code=200 if ok else 503)

    async def get_stats(_: Request) -> Response:
        return JSONResponse(stats())

    async def post_search(request: Request) -> Response:
        if search is None:
            return JSONResponse({"error": "this pipeline's sink cannot search"}, status_code=501)
        try:
            body = await request.json()
            vectors = body["vectors"]
            k = int(body.get("k", 10))
            if not isinstance(vectors, list) or not vectors:
                raise ValueError("vectors must be a non-empty list of vectors")
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse(
                {"error": f'bad request: {exc}; send {{"vectors": [[...], ...], "k": 10}}'},
                status_code=400,
            )
        try:
            results = await search(vectors, k)
        except EmbedstreamError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"results": _clean(results.rows())})

    return Starlette(
        routes=[
            Route("/metrics", get_metrics),
            Route("/healthz", get_health),
            Route("/stats", get_stats),
            Route("/search", post_search, methods=["POST"]),
        ]
    )


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: the pipeline owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @classmethod
    def for_app(cls, app: Starlette, host: str, port: int) -> Server:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
        return cls(config)
