"""aiokafka's fetch requests, sent and read on a blocking socket in a thread.

aiokafka reads every response on the event loop: asyncio's transport receives it in
pieces, its stream reader joins them into a buffer, ``readexactly`` copies the frame
out of that buffer, and the response decoder copies each partition's records out of
the frame. For a fetch response of 768-d vectors that is four copies of every value
on the event loop's thread, which also runs the pipeline's stages.

:class:`ThreadedFetches` stands in for aiokafka's client inside the fetcher of a
consumer made by :class:`streams.kafka.source.KafkaSource` (the hook is in
:mod:`streams.kafka.records`). It hands every ``FetchRequest`` to a
:class:`FetchLane`: one connection per broker, driven by a thread of its own, which
sends the request and receives the response with ``recv_into`` straight into one
buffer (the GIL released while it waits and copies; buffers are used again once
nothing views them, :class:`ReceiveBuffers`). :func:`parse_fetch_response` then
reads the response's fields in place: each partition's records stay a
``memoryview`` of that buffer, which the wire reader (:mod:`streams.kafka.wire`)
scans in the same thread without a copy (the ``prepare`` that
:mod:`streams.kafka.records` gives). Every other request (metadata, offsets, the group's
coordination) goes through aiokafka's client as before, and so does everything the
fetcher decides: which partitions, from which offset, errors, retries and resets.

Only plaintext connections take this path: with SSL or SASL the fetcher keeps
aiokafka's own connections (:func:`threaded_fetches` returns the client unchanged),
and so does a broker that answers no ``Fetch`` version from v4 on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import socket
import struct
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.protocol.admin import ApiVersionRequest
from aiokafka.protocol.fetch import FetchRequest

__all__ = [
    "FetchLane",
    "FetchResponse",
    "MalformedResponseError",
    "Prepare",
    "ReceiveBuffers",
    "ThreadedFetches",
    "UnsupportedBrokerError",
    "parse_fetch_response",
    "threaded_fetches",
]

log = logging.getLogger("embedstream.kafka")

_OLDEST, _NEWEST = 4, 11
"""The ``FetchResponse`` versions :func:`parse_fetch_response` reads (aiokafka asks
for at most v11; Kafka 4 answers v4 and later)."""

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_PARTITION = struct.Struct(">ihqq")
"""partition, error_code, high_watermark, last_stable_offset."""
_ABORTED = struct.Struct(">qq")
"""producer_id, first_offset."""


class MalformedResponseError(ValueError):
    """A fetch response whose fields run past its end."""


class UnsupportedBrokerError(Exception):
    """The broker speaks only ``Fetch`` versions older than v4 (before Kafka
    0.11): its fetches go through aiokafka's connection instead."""


@dataclass(frozen=True, slots=True)
class FetchResponse:
    """The parts of a ``FetchResponse`` aiokafka's fetcher reads, in the shape of
    aiokafka's own decoded response.

    Attributes:
        API_VERSION: the response's version.
        throttle_time_ms: how long the broker throttled the request.
        error_code: the top-level error (v7+; 0 before).
        session_id: the fetch session (v7+; 0 before).
        topics: ``(topic, partitions)`` pairs, each partition a tuple laid out as
            aiokafka decodes it: ``(partition, error_code, high_watermark,
            last_stable_offset, [log_start_offset (v5+)], aborted_transactions,
            [preferred_read_replica (v11)], records)`` where ``records`` is a
            ``memoryview`` of the response (``None`` when null).
    """

    API_VERSION: int
    throttle_time_ms: int
    error_code: int
    session_id: int
    topics: list[tuple[str, list[tuple[Any, ...]]]]


class _Reader:
    """Fields read one after another from a response, each checked against its end."""

    def __init__(self, frame: memoryview, version: int) -> None:
        self.frame = frame
        self.version = version
        self.pos = 0

    def view(self, n: int) -> memoryview:
        """The next ``n`` bytes, as a view."""
        if n < 0 or self.pos + n > len(self.frame):
            raise MalformedResponseError(
                f"FetchResponse v{self.version}: a field at byte {self.pos} needs {n} "
                f"bytes, the response has {len(self.frame) - self.pos} left"
            )
        self.pos += n
        return self.frame[self.pos - n : self.pos]

    def fields(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.view(layout.size))

    def int16(self) -> int:
        return int(self.fields(_I16)[0])

    def int32(self) -> int:
        return int(self.fields(_I32)[0])

    def int64(self) -> int:
        return int(self.fields(_I64)[0])


def parse_fetch_response(frame: memoryview, version: int) -> FetchResponse:
    """Read a ``FetchResponse`` of ``version`` (4 to 11) from ``frame``, the bytes
    after the response header, without copying any partition's records.

    Raises :class:`MalformedResponseError` when a field runs past the frame."""
    if not _OLDEST <= version <= _NEWEST:
        raise ValueError(f"FetchResponse v{version} is not read here (v4 to v11 are)")
    read = _Reader(frame, version)
    throttle = read.int32()
    error_code = session_id = 0
    if version >= 7:
        error_code, session_id = read.int16(), read.int32()
    topics: list[tuple[str, list[tuple[Any, ...]]]] = []
    for _ in range(read.int32()):
        name = read.view(read.int16())
        try:
            topic = bytes(name).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedResponseError(
                f"FetchResponse v{version}: a topic name that is not UTF-8"
            ) from None
        partitions: list[tuple[Any, ...]] = []
        for _ in range(read.int32()):
            fields: list[Any] = list(read.fields(_PARTITION))
            if version >= 5:
                fields.append(read.int64())  # log_start_offset
            aborted_count = read.int32()
            fields.append(
                None if aborted_count < 0 else [read.fields(_ABORTED) for _ in range(aborted_count)]
            )
            if version >= 11:
                fields.append(read.int32())  # preferred_read_replica
            size = read.int32()
            fields.append(None if size < 0 else read.view(size))
            partitions.append(tuple(fields))
        topics.append((topic, partitions))
    return FetchResponse(version, throttle, error_code, session_id, topics)


Prepare = Callable[[memoryview, int], Any]
"""``prepare(records, fetch_offset)``: what a partition's records become in the
response the fetcher gets, made in the fetch thread."""


_Work = tuple[Future[FetchResponse], Any, Prepare | None]
"""A request for a lane's thread: its future, the request, its ``prepare``."""


class FetchLane:
    """One broker's fetch connection, driven by a thread of its own.

    :meth:`roundtrip` runs in that thread: it connects when there is no connection
    (asking the broker which ``Fetch`` versions it speaks), sends the request and
    reads the response into a buffer of its exact size. A failure closes the
    connection and raises ``KafkaConnectionError``, which aiokafka's fetcher logs
    and retries after its backoff; the next request connects again.
    """

    def __init__(
        self, node_id: int, host: str, port: int, *, client_id: str, timeout: float
    ) -> None:
        self.node_id = node_id
        self.host = host
        self.port = port
        self._client_id = client_id
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._versions: dict[int, tuple[int, int]] = {}
        self._correlation = 0
        self._lock = threading.Lock()  # the socket, against close() from the loop
        self._buffers = ReceiveBuffers()
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.closed = False

    def submit(self, request: Any, prepare: Prepare | None = None) -> Future[FetchResponse]:
        """Run :meth:`roundtrip` for ``request`` in the lane's thread."""
        done: Future[FetchResponse] = Future()
        if self.closed:
            done.set_exception(self._closed_error())
            return done
        with self._lock:
            if self._thread is None:
                # A daemon: a lane nobody closed must not hold the interpreter's
                # exit for a request timeout.
                self._thread = threading.Thread(
                    target=self._serve, name=f"embedstream-fetch-{self.node_id}", daemon=True
                )
                self._thread.start()
        self._work.put((done, request, prepare))
        return done

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            done, request, prepare = work
            if not done.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                done.set_result(self.roundtrip(request, prepare))
            except BaseException as exc:  # handed to the waiting task
                done.set_exception(exc)
        # Closed: whatever is still queued fails.
        while True:
            try:
                left = self._work.get_nowait()
            except queue.Empty:
                return
            if left is not None and left[0].set_running_or_notify_cancel():
                left[0].set_exception(self._closed_error())

    def roundtrip(self, request: Any, prepare: Prepare | None = None) -> FetchResponse:
        """Send ``request`` (aiokafka's ``FetchRequest``) and read its response;
        with ``prepare``, each partition's records are what it makes of them."""
        response = self._roundtrip(request)
        if prepare is not None:
            asked = {
                (topic, partition): offset
                for topic, partitions in request.topics
                for partition, offset, *_ in partitions
            }
            for topic, partitions in response.topics:
                for i, fields in enumerate(partitions):
                    offset = asked.get((topic, fields[0]))
                    if fields[1] == 0 and fields[-1] is not None and offset is not None:
                        try:
                            prepared = prepare(fields[-1], offset)
                        except Exception:  # the records stay as they are: the event
                            # loop reads them again, where errors reach the consumer
                            log.debug("preparing %s[%s] failed", topic, fields[0], exc_info=True)
                            continue
                        partitions[i] = (*fields[:-1], prepared)
        return response

    def _roundtrip(self, request: Any) -> FetchResponse:
        retried = False
        while True:
            kept = self._sock is not None
            try:
                sock = self._connected()
                prepared = request.prepare(self._versions)
                if not _OLDEST <= prepared.API_VERSION <= _NEWEST:
                    raise UnsupportedBrokerError(
                        f"broker {self.host}:{self.port} answers FetchRequest "
                        f"v{prepared.API_VERSION}; the fetch thread reads "
                        f"v{_OLDEST}-v{_NEWEST}"
                    )
                frame = self._exchange(sock, prepared)
                return parse_fetch_response(frame, prepared.API_VERSION)
            except (OSError, MalformedResponseError) as exc:
                self._drop()
                if self.closed:
                    raise self._closed_error() from None
                if kept and not retried and isinstance(exc, OSError):
                    # A kept connection the broker may have closed while it was idle
                    # (connections.max.idle.ms, while every partition was paused): a
                    # fetch only reads, so it goes once more on a new connection.
                    retried = True
                    continue
                raise kafka_errors.KafkaConnectionError(
                    f"fetch from broker {self.node_id} at {self.host}:{self.port} failed: {exc}"
                ) from exc

    def close(self) -> None:
        """Close the connection (a thread waiting in ``recv`` wakes up) and let the
        thread end; requests still queued fail."""
        self.closed = True
        self._drop()
        self._work.put(None)

    def _closed_error(self) -> Exception:
        error: Exception = kafka_errors.KafkaConnectionError(
            f"fetch connection to {self.host}:{self.port} closed"
        )
        return error

    def _connected(self) -> socket.socket:
        with self._lock:
            if self.closed:
                raise OSError("the lane is closed")
            if self._sock is not None:
                return self._sock
        sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self.closed:
                sock.close()
                raise OSError("the lane is closed")
            self._sock = sock
        prepared = ApiVersionRequest().prepare({})
        frame = self._exchange(sock, prepared)
        answer = prepared.RESPONSE_TYPE.decode(BytesIO(bytes(frame)))
        self._versions = {key: (low, high) for key, low, high in answer.api_versions}
        return sock

    def _exchange(self, sock: socket.socket, prepared: Any) -> memoryview:
        self._correlation = (self._correlation + 1) % 2**31
        header = prepared.build_request_header(
            correlation_id=self._correlation, client_id=self._client_id
        )
        message = header.encode() + prepared.encode()
        sock.sendall(_I32.pack(len(message)) + message)
        size = _I32.unpack(_receive_into(sock, memoryview(bytearray(4))))[0]
        if size < 4:
            raise MalformedResponseError(f"a response frame of {size} bytes")
        frame = _receive_into(sock, self._buffers.take(size))
        (correlation,) = _I32.unpack_from(frame, 0)
        if correlation != self._correlation:
            raise MalformedResponseError(
                f"the response answers request {correlation}, not {self._correlation}"
            )
        # Fetch v4-v11 and ApiVersions v0 have the v0 response header: the id only.
        return frame[4:]

    def _drop(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _receive_into(sock: socket.socket, view: memoryview) -> memoryview:
    """``view`` filled from ``sock``."""
    got = 0
    size = len(view)
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionResetError("the broker closed the connection")
        got += n
    return view


class ReceiveBuffers:
    """Buffers that responses are received into, each used again once nothing
    views it any more.

    A response's records are handed on as views of its buffer, and live until the
    source has made chunks of them. A fresh buffer per response would cost a page
    fault per 4 KiB of every response (buffers this size come from ``mmap``, and
    go back to the system when freed); reused ones are already in memory.
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._buffers: list[bytearray] = []
        self.allocated = 0
        self.reused = 0

    def take(self, size: int) -> memoryview:
        """A view of ``size`` bytes of a buffer nothing else views."""
        # CPython: a buffer is referenced by this list and getrefcount's argument,
        # plus one reference while any view of it (or of a slice of it) lives.
        free = [b for b in self._buffers if sys.getrefcount(b) == 3]
        fits = [b for b in free if len(b) >= size]
        if fits:
            self.reused += 1
            return memoryview(min(fits, key=len))[:size]
        if len(self._buffers) >= self.keep and free:
            self._buffers.remove(min(free, key=len))  # too small: make room
        buffer = bytearray(size)
        self.allocated += 1
        if len(self._buffers) < self.keep:
            self._buffers.append(buffer)
        return memoryview(buffer)


class ThreadedFetches:
    """aiokafka's client, with ``FetchRequest`` sent through a :class:`FetchLane`
    per broker; every other attribute and request is the client's own.

    ``prepare``, when given, runs in the lane's thread on each partition's records
    (with the offset they were fetched from), and its result takes their place in
    the response."""

    def __init__(self, client: Any, prepare: Prepare | None = None) -> None:
        self._client = client
        self._prepare = prepare
        self._lanes: dict[int, FetchLane] = {}
        self._unsupported: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        """Send ``request`` to ``node_id``: a fetch through its lane, anything else
        through aiokafka."""
        if not isinstance(request, FetchRequest) or kwargs:
            return await self._client.send(node_id, request, **kwargs)
        lane = self._lane(node_id)
        if lane is None:
            return await self._client.send(node_id, request)
        try:
            return await asyncio.wrap_future(lane.submit(request, self._prepare))
        except UnsupportedBrokerError as exc:
            log.warning("%s: fetching from it on the event loop", exc)
            self._unsupported.add(node_id)
            lane.close()
            self._lanes.pop(node_id, None)
            return await self._client.send(node_id, request)

    def close(self) -> None:
        """Close every lane."""
        for lane in self._lanes.values():
            lane.close()
        self._lanes.clear()

    def _lane(self, node_id: int) -> FetchLane | None:
        broker = self._client.cluster.broker_metadata(node_id)
        if broker is None or node_id in self._unsupported:
            return None
        lane = self._lanes.get(node_id)
        if lane is not None and (lane.host, lane.port) != (broker.host, broker.port):
            lane.close()  # the broker moved
            lane = None
        if lane is None:
            lane = FetchLane(
                node_id,
                broker.host,
                broker.port,
                client_id=self._client._client_id,
                timeout=self._client._request_timeout_ms / 1000,
            )
            self._lanes[node_id] = lane
        return lane


def threaded_fetches(client: Any, prepare: Prepare | None = None) -> Any:
    """``client`` wrapped in :class:`ThreadedFetches` when its connections are
    plaintext, else ``client`` itself."""
    if getattr(client, "_security_protocol", None) != "PLAINTEXT":
        return client
    return ThreadedFetches(client, prepare)
