"""The HTTP side of a running pipeline (``--serve HOST:PORT``).

- ``GET /metrics``: Prometheus text format.
- ``GET /healthz``: ``{"status": "ok"}`` while the pipeline runs.
- ``GET /stats``: the figures of :meth:`Pipeline.metrics` as JSON, with the
  bottleneck stage named.
- ``POST /search``: ``{"vectors": [[...], ...], "k": 10}`` answered from the live
  index as ``{"results": [{"ids": [...], "scores": [...]}, ...], "positions":
  {shard: position}, "snapshots": {shard: seq}}``; with ``"after": {"emb-0":
  1234}`` it first waits (up to ``"timeout_ms"``, default 1000) until that record
  is searchable, and answers 504 with the positions reached if it is not. With
  ``"filter": {...}`` only vectors whose payload passes it are searched
  (:mod:`sinks.filters`; a bad filter gets 400 naming the bad part), and with
  ``"with_payload": true`` each result carries ``"payloads"`` aligned with ``"ids"``.

Served by uvicorn inside the pipeline's own event loop; binds 127.0.0.1 unless told
otherwise. The endpoints are unauthenticated plain HTTP (see the README's
"Security"). Every search request is bounded (:class:`RequestLimits`): body size,
queries, ``k`` and queries x k, each refused with a 4xx naming the limit; only
``application/json`` bodies are read (a web page cannot send one cross-origin
without a CORS preflight, which this server never grants); every malformed body
gets a 4xx that says what is wrong, and nothing a request does can stop the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any

import anyio
import msgspec
import numpy as np
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sinks.filters import FilterError, parse_filter
from sinks.freshness import SearchTimeout
from sinks.params import parse_params
from streams.app.jsonable import jsonable
from streams.errors import ConfigError, EmbedstreamError
from streams.pipeline import PipelineMetrics

__all__ = ["RequestLimits", "Server", "bind", "make_app", "parse_hostport", "stats_json"]

log = logging.getLogger("embedstream.http")

SearchFn = Callable[..., Awaitable[Any]]
"""``await search(vectors, k, params, after=..., timeout=...)`` -> search results."""


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Bounds on one ``POST /search`` request; what a single request may cost.

    Attributes:
        max_k: largest ``k`` (results per query).
        max_queries: most query vectors in one request.
        max_results: most ``queries x k``: what the response and FAISS's result
            arrays hold.
        max_request_bytes: largest request body; larger is refused with 413 before
            it is read whole.
        read_timeout: seconds a client may take to send its body (408 after).
    """

    max_k: int = 10_000
    max_queries: int = 1_000
    max_results: int = 1_000_000
    max_request_bytes: int = 16 << 20
    read_timeout: float = 30.0


Offset = Annotated[int, msgspec.Meta(ge=0)]


class _SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    vectors: list[list[float]]
    k: Annotated[int, msgspec.Meta(ge=1)] = 10
    params: dict[str, int] | None = None
    # Only vectors whose payload passes this filter (sinks.filters), and payloads back.
    filter: dict[str, Any] | None = None
    with_payload: bool = False
    # Read-your-writes: per shard, a record that must be searchable first.
    after: dict[str, Offset | dict[str, Offset]] | None = None
    timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 1000


@dataclasses.dataclass(frozen=True)
class _Search:
    """A parsed ``POST /search`` body."""

    queries: np.ndarray[Any, Any]
    k: int
    params: dict[str, int] | None
    after: dict[str, Any] | None
    timeout: float
    filter: dict[str, Any] | None = None
    with_payload: bool = False


_decode_request = msgspec.json.Decoder(_SearchRequest)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limits: RequestLimits) -> bytes:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise _Refused(415, f"Content-Type must be application/json (got {kind or 'none'!r})")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise _Refused(
            413,
            f"the body is {int(declared):,} bytes; the limit is {limits.max_request_bytes:,} "
            "(--max-request-bytes)",
        )
    body = bytearray()
    try:
        with anyio.fail_after(limits.read_timeout):
            async for part in request.stream():
                body += part
                if len(body) > limits.max_request_bytes:
                    raise _Refused(
                        413,
                        f"the body is over the limit of {limits.max_request_bytes:,} bytes "
                        "(--max-request-bytes)",
                    )
    except TimeoutError:
        raise _Refused(
            408, f"the body took longer than {limits.read_timeout:g}s to arrive"
        ) from None
    return bytes(body)


def _parse_search(body: bytes, limits: RequestLimits) -> _Search:
    usage = 'send {"vectors": [[...], ...], "k": 10}'
    try:
        req = _decode_request.decode(body)
    except msgspec.ValidationError as exc:
        raise _Refused(400, f"bad request: {exc}; {usage}") from None
    except msgspec.DecodeError as exc:
        raise _Refused(400, f"bad request: not valid JSON ({exc}); {usage}") from None
    n, k = len(req.vectors), req.k
    if not n:
        raise _Refused(400, f"bad request: `vectors` is empty; {usage}")
    if k > limits.max_k:
        raise _Refused(400, f"k={k:,} is over the limit of {limits.max_k:,} (--max-k)")
    if n > limits.max_queries:
        raise _Refused(
            400, f"{n:,} queries is over the limit of {limits.max_queries:,} (--max-queries)"
        )
    if n * k > limits.max_results:
        raise _Refused(
            400,
            f"{n:,} queries x k={k:,} is over the limit of {limits.max_results:,} results "
            "(--max-results)",
        )
    width = len(req.vectors[0])
    for i, v in enumerate(req.vectors):
        if len(v) != width:
            raise _Refused(
                400, f"bad request: vector {i} has {len(v)} values, vector 0 has {width}"
            )
    with np.errstate(over="ignore"):
        q = np.array(req.vectors, dtype=np.float32).reshape(n, width)
    if not np.isfinite(q).all():
        row = int(np.flatnonzero(~np.isfinite(q).all(axis=1))[0])
        raise _Refused(400, f"bad request: vector {row} holds NaN, Inf or a value beyond float32")
    if req.params is not None:
        try:
            parse_params(req.params)
        except ConfigError as exc:
            raise _Refused(400, f"bad request: {exc}") from None
    if req.filter is not None:
        try:
            # Checked here for its form; the search checks it against the index's
            # declared field types.
            parse_filter(req.filter)
        except FilterError as exc:
            raise _Refused(400, f"bad request: filter {exc}") from None
    return _Search(q, k, req.params, req.after, req.timeout_ms / 1000, req.filter, req.with_payload)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound now so that a port in use is an
    error before anything starts.

    Raises:
        ConfigError: the address cannot be bound (in use, not local, no permission).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            " (another process uses the port? give another with HOST:PORT)"
        ) from None
    sock.set_inheritable(True)
    return sock


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


def stats_json(m: PipelineMetrics) -> dict[str, Any]:
    """The JSON body of ``/stats``."""
    body: dict[str, Any] = jsonable(
        {
            "elapsed_seconds": m.elapsed_seconds,
            "bottleneck": m.bottleneck(),
            "stages": {k: dataclasses.asdict(v) for k, v in m.stages.items()},
            "channels": {
                k: dataclasses.asdict(v) | {"fill": v.fill} for k, v in m.channels.items()
            },
            "source": dataclasses.asdict(m.source),
            "sink": dataclasses.asdict(m.sink),
        }
    )
    return body


def make_app(
    stats: Callable[[], dict[str, Any]],
    registry: CollectorRegistry,
    search: SearchFn | None,
    healthy: Callable[[], bool] = lambda: True,
    limits: RequestLimits | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
    params: dict[str, int] | None = None,
) -> Starlette:
    """The Starlette app serving a pipeline (or, for ``serve``, a snapshot view).

    Args:
        stats: the JSON body of ``/stats``.
        registry: what ``/metrics`` exports.
        search: ``await search(vectors, k, params)`` returning search results
            (``params``: the request's search-time parameters, else ``params``).
        healthy: ``/healthz`` answers 503 when this is false.
        limits: bounds on search requests (defaults: :class:`RequestLimits`).
        health: more fields for the ``/healthz`` body (e.g. a snapshot that failed
            to load while the last good one is served).
    """
    bounds = limits or RequestLimits()

    async def get_metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def get_health(_: Request) -> Response:
        ok = healthy()
        body = {"status": "ok" if ok else "stopping", **(health() if health else {})}
        return JSONResponse(jsonable(body), status_code=200 if ok else 503)

    async def get_stats(_: Request) -> Response:
        return JSONResponse(stats())

    async def post_search(request: Request) -> Response:
        if search is None:
            return _error(501, "this pipeline's sink cannot search")
        try:
            req = _parse_search(await _read_body(request, bounds), bounds)
        except _Refused as exc:
            return _error(exc.status, str(exc))
        try:
            results = await search(
                req.queries,
                req.k,
                req.params if req.params is not None else params,
                filter=req.filter,
                with_payload=req.with_payload,
                after=req.after,
                timeout=req.timeout,
            )
        except SearchTimeout as exc:
            body = {"error": str(exc), "positions": exc.positions, "waiting_for": exc.waiting_for}
            return JSONResponse(body, status_code=504)
        except EmbedstreamError as exc:
            return _error(400, str(exc))
        except MemoryError:
            return _error(503, "not enough memory for this search now; ask for fewer results")
        except Exception as exc:
            # A search must never take the pipeline down with it.
            log.exception("search failed")
            return _error(500, f"search failed: {type(exc).__name__}: {exc}")
        return JSONResponse(
            {
                "results": jsonable(results.rows()),
                "positions": results.positions,
                "snapshots": results.snapshots,
            }
        )

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
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            # Idle connections close after 5 s; at most 64 requests at once (503
            # beyond), so slow or many clients cannot pile up memory.
            timeout_keep_alive=5,
            limit_concurrency=64,
        )
        return cls(config)
