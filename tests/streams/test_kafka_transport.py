"""Fetch requests on a blocking socket in a thread (streams.kafka.transport): the
response parser against aiokafka's decoder on the same bytes, the receive buffers,
and a lane against a scripted broker on a real socket (the real broker is in
tests/integration, where every aiokafka source fetches this way)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

import pytest
from aiokafka import errors as kafka_errors
from aiokafka.protocol import fetch as fetch_protocol
from aiokafka.protocol.admin import ApiVersionResponse_v0
from aiokafka.protocol.fetch import FetchRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kafka.transport import (
    FetchLane,
    MalformedResponseError,
    ReceiveBuffers,
    ThreadedFetches,
    UnsupportedBrokerError,
    parse_fetch_response,
)

VERSIONS = range(4, 12)

aborted = st.one_of(
    st.none(),
    st.lists(st.tuples(st.integers(-1, 2**40), st.integers(0, 2**40)), max_size=3),
)
records = st.one_of(st.none(), st.binary(max_size=200))
partitions = st.lists(
    st.tuples(
        st.integers(0, 1000),
        st.sampled_from([0, 1, 3, 6]),
        st.integers(-1, 2**40),
        st.integers(-1, 2**40),
        st.integers(-1, 2**40),
        aborted,
        st.integers(-1, 5),
        records,
    ),
    max_size=4,
)
topics = st.lists(
    st.tuples(st.text(min_size=1, max_size=30), partitions),
    max_size=3,
)


def response_bytes(version: int, throttle: int, topics: list[Any]) -> bytes:
    """What a broker sends (after the response header) for ``version``."""
    cls = getattr(fetch_protocol, f"FetchResponse_v{version}")
    laid_out = []
    for topic, parts in topics:
        rows = []
        for p, err, high, stable, start, abort, replica, recs in parts:
            row: list[Any] = [p, err, high, stable]
            if version >= 5:
                row.append(start)
            row.append(abort)
            if version >= 11:
                row.append(replica)
            row.append(recs)
            rows.append(tuple(row))
        laid_out.append((topic, rows))
    if version >= 7:
        return bytes(cls(throttle, 0, 7, laid_out).encode())
    return bytes(cls(throttle, laid_out).encode())


def as_plain(topics: list[Any]) -> list[Any]:
    """Views as bytes, tuples as lists: comparable with aiokafka's decoding."""
    return [
        [
            topic,
            [[bytes(f) if isinstance(f, memoryview) else f for f in part] for part in parts],
        ]
        for topic, parts in topics
    ]


@settings(max_examples=60, deadline=None)
@given(version=st.sampled_from(VERSIONS), throttle=st.integers(0, 1000), topics=topics)
def test_a_response_reads_as_aiokafka_decodes_it(
    version: int, throttle: int, topics: list[Any]
) -> None:
    data = response_bytes(version, throttle, topics)
    cls = getattr(fetch_protocol, f"FetchResponse_v{version}")
    theirs = cls.decode(BytesIO(data))
    ours = parse_fetch_response(memoryview(data), version)
    assert version == ours.API_VERSION
    assert ours.throttle_time_ms == theirs.throttle_time_ms
    assert as_plain(ours.topics) == as_plain(
        [(t, [list(p) for p in parts]) for t, parts in theirs.topics]
    )
    if version >= 7:
        assert (ours.error_code, ours.session_id) == (0, 7)


@settings(max_examples=30, deadline=None)
@given(version=st.sampled_from(VERSIONS), topics=topics.filter(bool), cut=st.data())
def test_a_cut_response_is_an_error_not_a_crash(version: int, topics: list[Any], cut: Any) -> None:
    data = response_bytes(version, 0, topics)
    n = cut.draw(st.integers(0, len(data) - 1))
    with pytest.raises(MalformedResponseError, match=f"FetchResponse v{version}"):
        parse_fetch_response(memoryview(data)[:n], version)


def test_records_are_views_of_the_response_not_copies() -> None:
    data = bytearray(response_bytes(11, 0, [("t", [(0, 0, 9, 9, 0, None, -1, b"abcdef")])]))
    parsed = parse_fetch_response(memoryview(data), 11)
    records = parsed.topics[0][1][0][-1]
    assert isinstance(records, memoryview) and bytes(records) == b"abcdef"
    data[-6:] = b"ABCDEF"
    assert bytes(records) == b"ABCDEF"


def test_unknown_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="v3"):
        parse_fetch_response(memoryview(b""), 3)


def test_a_receive_buffer_is_used_again_once_nothing_views_it() -> None:
    buffers = ReceiveBuffers(keep=2)
    a = buffers.take(100)
    b = buffers.take(100)
    assert (buffers.allocated, buffers.reused) == (2, 0)
    del a
    c = buffers.take(60)
    assert (buffers.allocated, buffers.reused) == (2, 1) and len(c) == 60
    piece = c[10:20]  # a slice of a view still holds the buffer
    del c
    d = buffers.take(60)
    assert (buffers.allocated, buffers.reused) == (3, 1)
    del piece
    e = buffers.take(100)
    assert (buffers.allocated, buffers.reused) == (3, 2)
    del b, d, e
    f = buffers.take(500)  # bigger than any kept: a new one replaces a small one
    assert (buffers.allocated, buffers.reused) == (4, 2) and len(f) == 500


# A scripted broker: answers ApiVersions, then runs each connection's script.

Step = Callable[[socket.socket, int, bytes], bool]
"""(connection, correlation id, request body) -> keep the connection open."""


def _read_frame(conn: socket.socket) -> bytes | None:
    head = b""
    while len(head) < 4:
        got = conn.recv(4 - len(head))
        if not got:
            return None
        head += got
    (size,) = struct.unpack(">i", head)
    body = b""
    while len(body) < size:
        got = conn.recv(size - len(body))
        if not got:
            return None
        body += got
    return body


def _answer(conn: socket.socket, correlation: int, payload: bytes) -> None:
    frame = struct.pack(">i", correlation) + payload
    conn.sendall(struct.pack(">i", len(frame)) + frame)


@contextmanager
def scripted_broker(
    connections: list[list[Step]], fetch_versions: tuple[int, int] = (4, 11)
) -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    host, port = server.getsockname()[:2]

    def serve() -> None:
        for script in connections:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                versions = _read_frame(conn)
                assert versions is not None
                (correlation,) = struct.unpack_from(">i", versions, 4)
                api = ApiVersionResponse_v0(0, [(1, *fetch_versions), (18, 0, 0)])
                _answer(conn, correlation, bytes(api.encode()))
                for step in script:
                    body = _read_frame(conn)
                    if body is None:
                        break
                    (correlation,) = struct.unpack_from(">i", body, 4)
                    if not step(conn, correlation, body):
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield host, port
    finally:
        server.close()
        thread.join(timeout=5)


def _records_reply(payload: bytes) -> Step:
    def step(conn: socket.socket, correlation: int, body: bytes) -> bool:
        api_key, version = struct.unpack_from(">hh", body, 0)
        assert (api_key, version) == (1, 11)
        data = response_bytes(11, 0, [("t", [(0, 0, 50, 50, 0, None, -1, payload)])])
        _answer(conn, correlation, data)
        return True

    return step


def _hang_up_midway(conn: socket.socket, correlation: int, body: bytes) -> bool:
    conn.sendall(struct.pack(">ii", 1000, correlation) + b"\x00" * 10)
    return False


def _never_answer(conn: socket.socket, correlation: int, body: bytes) -> bool:
    conn.recv(1)  # until the client hangs up
    return False


def _request(offset: int = 0) -> FetchRequest:
    return FetchRequest(500, 1, 1 << 20, 0, [("t", [(0, offset, 1 << 20)])])


def test_a_lane_fetches_reconnects_after_a_broken_response_and_prepares_records() -> None:
    with scripted_broker(
        [
            [_records_reply(b"first"), _hang_up_midway],
            [_hang_up_midway],  # the retry on a new connection fails too
            [_records_reply(b"again")],
        ]
    ) as (host, port):
        lane = FetchLane(1, host, port, client_id="test", timeout=5)
        try:
            got = lane.submit(_request()).result(timeout=5)
            assert got.API_VERSION == 11
            assert [(t, [(p[0], bytes(p[-1])) for p in parts]) for t, parts in got.topics] == [
                ("t", [(0, b"first")])
            ]
            with pytest.raises(kafka_errors.KafkaConnectionError, match="fetch from broker 1"):
                lane.submit(_request()).result(timeout=5)
            # The next request connects again; prepare sees the records and offset.
            seen: list[tuple[bytes, int]] = []

            def prepare(view: memoryview, offset: int) -> str:
                seen.append((bytes(view), offset))
                return "prepared"

            again = lane.submit(_request(offset=42), prepare).result(timeout=5)
            assert again.topics[0][1][0][-1] == "prepared"
            assert seen == [(b"again", 42)]
        finally:
            lane.close()


def test_closing_a_lane_wakes_a_fetch_waiting_for_its_response() -> None:
    with scripted_broker([[_never_answer]]) as (host, port):
        lane = FetchLane(1, host, port, client_id="test", timeout=30)
        waiting = lane.submit(_request())
        time.sleep(0.3)  # the request is sent; the thread waits in recv
        started = time.monotonic()
        lane.close()
        with pytest.raises(kafka_errors.KafkaConnectionError, match="closed"):
            waiting.result(timeout=10)
        assert time.monotonic() - started < 10  # not the lane's 30 s timeout


def test_a_closed_lane_fails_requests_instead_of_holding_them() -> None:
    lane = FetchLane(1, "127.0.0.1", 9, client_id="test", timeout=5)
    lane.close()
    with pytest.raises(kafka_errors.KafkaConnectionError, match="closed"):
        lane.submit(_request()).result(timeout=5)


class _Broker:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class _Cluster:
    def __init__(self, host: str, port: int) -> None:
        self.broker = _Broker(host, port)

    def broker_metadata(self, node_id: int) -> _Broker | None:
        return self.broker if node_id == 1 else None


class _AiokafkaClient:
    """What ThreadedFetches uses of aiokafka's client; sends answer "aiokafka"."""

    _client_id = "test"
    _request_timeout_ms = 5000

    def __init__(self, host: str, port: int) -> None:
        self.cluster = _Cluster(host, port)
        self.sent: list[tuple[int, Any]] = []

    async def send(self, node_id: int, request: Any) -> str:
        self.sent.append((node_id, request))
        return "aiokafka"


@pytest.mark.asyncio
async def test_fetches_go_through_lanes_and_everything_else_through_aiokafka() -> None:
    with scripted_broker([[_records_reply(b"rows")]]) as (host, port):
        client = _AiokafkaClient(host, port)
        fetches = ThreadedFetches(client)
        try:
            got = await fetches.send(1, _request())
            assert bytes(got.topics[0][1][0][-1]) == b"rows" and client.sent == []
            assert await fetches.send(1, "metadata request") == "aiokafka"
            assert await fetches.send(2, _request()) == "aiokafka"  # a node not in metadata
            assert fetches.cluster is client.cluster  # the rest is the client's own
        finally:
            fetches.close()


@pytest.mark.asyncio
async def test_a_broker_without_fetch_v4_is_fetched_from_by_aiokafka() -> None:
    with scripted_broker([[]], fetch_versions=(0, 3)) as (host, port):
        lane = FetchLane(1, host, port, client_id="test", timeout=5)
        with pytest.raises(UnsupportedBrokerError, match="v3"):
            lane.submit(_request()).result(timeout=5)
        lane.close()
    with scripted_broker([[]], fetch_versions=(0, 3)) as (host, port):
        client = _AiokafkaClient(host, port)
        fetches = ThreadedFetches(client)
        try:
            assert await fetches.send(1, _request()) == "aiokafka"
            assert await fetches.send(1, _request()) == "aiokafka"
            assert len(client.sent) == 2
        finally:
            fetches.close()


def test_records_a_prepare_fails_on_are_handed_on_as_they_came() -> None:
    """The event loop then reads them again, where a corrupt batch reaches the
    consumer as aiokafka's error rather than killing the fetch thread's request."""

    def broken(view: memoryview, offset: int) -> Any:
        raise IndexError("a bug in prepare")

    with scripted_broker([[_records_reply(b"kept")]]) as (host, port):
        lane = FetchLane(1, host, port, client_id="test", timeout=5)
        try:
            got = lane.submit(_request(), broken).result(timeout=5)
            records = got.topics[0][1][0][-1]
            assert isinstance(records, memoryview) and bytes(records) == b"kept"
        finally:
            lane.close()


def test_a_kept_connection_the_broker_closed_is_replaced_without_an_error() -> None:
    """Brokers close connections idle for connections.max.idle.ms (a source that
    paused every partition sends no fetch): the next fetch goes on a new one."""
    with scripted_broker(
        [[_records_reply(b"first"), _hang_up_midway], [_records_reply(b"again")]]
    ) as (host, port):
        lane = FetchLane(1, host, port, client_id="test", timeout=5)
        try:
            assert bytes(lane.submit(_request()).result(timeout=5).topics[0][1][0][-1]) == (
                b"first"
            )
            again = lane.submit(_request()).result(timeout=5)
            assert bytes(again.topics[0][1][0][-1]) == b"again"
        finally:
            lane.close()


class _SubscriptionState:
    def register_fetch_waiters(self, waiters: Any) -> None:
        pass


@pytest.mark.asyncio
@pytest.mark.parametrize("isolation", ["read_uncommitted", "read_committed"])
async def test_a_marked_fetcher_scans_in_its_thread_as_its_partitions_will_ask(
    isolation: str,
) -> None:
    """The hook reads the fetcher's own parsed settings (aiokafka turns the isolation
    level's name into a number), so the scan made in the thread is the one its
    partitions take, not one they make again on the event loop."""
    import asyncio

    from aiokafka.consumer import fetcher as aiokafka_fetcher

    from streams.kafka.records import Scanned, raw_records_marker

    client = _AiokafkaClient("127.0.0.1", 9)
    client._loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
    client._metadata_max_age_ms = 300_000  # type: ignore[attr-defined]
    client._security_protocol = "PLAINTEXT"  # type: ignore[attr-defined]
    fetcher = aiokafka_fetcher.Fetcher(
        client,
        _SubscriptionState(),
        key_deserializer=raw_records_marker(),
        isolation_level=isolation,
        check_crcs=False,
    )
    try:
        fetches = fetcher._client
        assert isinstance(fetches, ThreadedFetches)
        scanned = fetches._prepare(memoryview(b""), 7)  # type: ignore[misc]
        assert isinstance(scanned, Scanned)
        assert scanned.answers(7, False, isolation == "read_committed")
    finally:
        await fetcher.close()
    assert fetches._lanes == {}
    # Without the fetch thread (and over TLS) the fetcher keeps aiokafka's client.
    plain = aiokafka_fetcher.Fetcher(
        client, _SubscriptionState(), key_deserializer=raw_records_marker(fetch_thread=False)
    )
    try:
        assert plain._client is client
    finally:
        await plain.close()
