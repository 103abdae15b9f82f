"""The librdkafka client (``confluent-kafka``) behind the source's consumer protocol.

``pip install 'embedstream[fast]'`` and ``--kafka-client confluent`` (or
``KafkaSource(client="confluent")``). librdkafka fetches and parses record batches
in C threads of its own and hands over one small C object per message, where
aiokafka parses every record in Python; on this project's machine it consumed 2.5x
as many 768-d records a second. The source works the same on either client: it
sees a :class:`streams.kafka.source.Consumer`, which this module implements on top
of ``confluent_kafka.Consumer``:

- Blocking calls (``consume``, ``commit``, metadata and offset queries, ``close``)
  run in one thread of the consumer's own (:class:`_ConsumerThread`), so the event
  loop stays free. One thread, not any worker: confluent-kafka lets one thread at a
  time into a consumer anyway, and glibc gives each thread that allocates a malloc
  arena of its own, where the freed values of a ``consume`` stay cached (at 768-d,
  10 MB less peak RSS than on anyio's workers, at the same rate or better).
- The source's ``digest`` (its chunks of a partition's messages: values copied into
  the partition's slab) runs in that thread too, right after ``consume``. The
  values are copied while they are in that core's cache, and the messages are
  freed by the thread that made them; ``getmany`` returns chunks, not messages.
- A ``consume`` takes about :data:`CONSUME_BYTES` of message values, and the first
  one of a run (message size unknown yet) at most 1,024 messages: a first call of
  up to 100,000 768-d messages was a 300 MB burst whose freed memory stayed in its
  thread's arena, 128 MB of the peak RSS.
- Rebalances: librdkafka calls ``on_assign`` / ``on_revoke`` from inside
  ``consume`` (in the consumer's thread). The adapter runs the source's async listener
  in the event loop meanwhile (``anyio.from_thread.run``), collects the seeks it
  asks for, and then assigns the partitions at exactly those offsets: a partition is
  never fetched from anywhere else. Eager rebalancing, as with aiokafka.
- confluent-kafka lets one thread at a time into a consumer: a commit from another
  thread waits until ``consume`` returns, and for ever when ``consume`` is inside a
  rebalance callback whose hand-over waits for a snapshot that waits for that
  commit. So every commit is made by the consuming thread: right after its next
  ``consume``, or at the end of the rebalance callback (asynchronously, its result
  logged by ``on_commit``).
- Offsets are never reset silently (``auto.offset.reset=error``), and auto-commit is
  off: offsets are committed after a durable snapshot, as with aiokafka.
- Partitions are ``aiokafka.structs.TopicPartition`` tuples on the source's side,
  whichever client runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from operator import itemgetter, methodcaller
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import numpy as np

from streams.errors import ConfigError

__all__ = ["ConfluentConsumer", "confluent_available"]

log = logging.getLogger("embedstream.kafka")

T = TypeVar("T")

CONSUME_BYTES = 4 << 20
"""About how many value bytes one ``consume`` takes. confluent-kafka builds a
``consume``'s message objects in one C loop that holds the GIL, so other threads
(the FAISS writer, the event loop) wait for all of it, and its values are peak
memory: 4 MiB kept the rate of 8 with less peak RSS (figures in the README)."""

_offset = methodcaller("offset")
_value = methodcaller("value")
_key = methodcaller("key")
_headers = methodcaller("headers")


def _timestamp(m: Any) -> int:
    return int(m.timestamp()[1])


_error = methodcaller("error")
_topic = methodcaller("topic")
_partition = methodcaller("partition")
_timestamp_pair = methodcaller("timestamp")
_second = itemgetter(1)


def _by_partition(messages: list[Any]) -> tuple[dict[Any, list[Any]], list[Any]]:
    """``messages`` per partition (each partition's in order), and the error events
    among them. C-level passes: librdkafka returns each partition's messages in
    runs, so the lists are slices between the points where the partition changes."""
    from aiokafka.structs import TopicPartition

    out: dict[Any, list[Any]] = {}
    bad: list[Any] = []
    if not messages:
        return out, bad
    if any(map(_error, messages)):
        bad = [m for m in messages if m.error() is not None]
        messages = [m for m in messages if m.error() is None]
    if not messages:
        return out, bad
    topics = list(map(_topic, messages))
    partitions = np.fromiter(map(_partition, messages), dtype=np.int64, count=len(messages))
    change = partitions[1:] != partitions[:-1]
    if topics.count(topics[0]) != len(topics):  # several topics: compare names too
        names = np.asarray(topics, dtype=object)
        change |= names[1:] != names[:-1]
    starts = [0, *(np.flatnonzero(change) + 1).tolist()]
    for a, b in zip(starts, [*starts[1:], len(messages)], strict=True):
        out.setdefault(TopicPartition(topics[a], int(partitions[a])), []).extend(messages[a:b])
    return out, bad


def _committed(err: Any, partitions: list[Any]) -> None:
    if err is not None:
        # Commits only inform lag tools; the snapshot already holds the truth.
        log.warning("committing offsets failed: %s", err)


class _ConsumerThread:
    """One thread that makes every blocking call into the consumer, awaited from the
    event loop (asyncio: the Kafka clients run on it). A call runs to its end even
    when the awaiting task is cancelled (as ``anyio.to_thread.run_sync`` does):
    librdkafka cannot be interrupted."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="embedstream-confluent"
        )
        self.token: anyio.lowlevel.EventLoopToken | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` in the consumer's thread."""
        if self.token is None:
            self.token = anyio.lowlevel.current_token()
        future = asyncio.wrap_future(self._executor.submit(fn))
        with anyio.CancelScope(shield=True):
            await asyncio.wait([future])
        # A cancellation that came meanwhile is delivered now, as to_thread does.
        await anyio.lowlevel.checkpoint_if_cancelled()
        return future.result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)


def confluent_available() -> bool:
    """Whether ``confluent-kafka`` is installed (``embedstream[fast]``)."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


async def commit_outside_group(consumer: ConfluentConsumer, offsets: dict[Any, int]) -> None:
    """Commit ``offsets`` (partition -> next offset) for ``consumer``'s group with a
    librdkafka consumer that joins no group, and close it."""

    def commit() -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        made = Consumer({k: v for k, v in consumer.config.items() if k != "on_commit"})
        try:
            parts = [TopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
            for part in made.commit(offsets=parts, asynchronous=False) or []:
                if part.error is not None:
                    raise KafkaException(part.error)
        finally:
            made.close()

    await anyio.to_thread.run_sync(commit)


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """aiokafka-style option names (``max_partition_fetch_bytes``) as librdkafka's
    (``max.partition.fetch.bytes``); dotted names pass as they are."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key == "ssl_context":
            raise ConfigError(
                "--ssl-cafile/--ssl-certfile/--ssl-keyfile build an aiokafka SSL context; "
                "with --kafka-client confluent give librdkafka's options instead, e.g. "
                "--kafka-option security.protocol=SSL --kafka-option ssl.ca.location=FILE"
            )
        out[key.replace("_", ".") if "." not in key else key] = value
    return out


class ConfluentConsumer:
    """A ``confluent_kafka.Consumer`` with the source's consumer protocol.

    Args:
        bootstrap_servers: ``HOST:PORT[,...]``.
        group: the consumer group id.
        options: more librdkafka settings (``fetch.max.bytes``...; aiokafka-style
            names with underscores are translated).
        rebalance_timeout: seconds a rebalance may take (the hand-over of revoked
            partitions runs inside it): librdkafka's ``max.poll.interval.ms``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group: str,
        options: dict[str, Any] | None = None,
        rebalance_timeout: float = 300.0,
    ) -> None:
        self.config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            # Fetch in big steps: librdkafka prefetches into its own queue
            # (queued.max.messages.kbytes) while the pipeline works. When that queue
            # is full it postpones the next fetch by fetch.queue.backoff.ms, 1 s by
            # default: with a queue small enough to bound memory, that second
            # throttled a bare consume of 768-d vectors from ~400k to ~40k records/s.
            "fetch.max.bytes": 16 << 20,
            "max.partition.fetch.bytes": 4 << 20,
            "queued.max.messages.kbytes": 32 << 10,
            "fetch.queue.backoff.ms": 5,
            "max.poll.interval.ms": int(rebalance_timeout * 1000),
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 3_000,
            **_options(options or {}),
            # Never reset silently; commit only what a durable snapshot holds.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "enable.partition.eof": False,
            "on_commit": _committed,
        }
        self._consumer: Any = None
        self._listener: Any = None
        self._assigned: list[Any] = []
        # Seeks the listener asks for while a rebalance is being handled.
        self._pending: dict[Any, int] | None = None
        self._topics: dict[str, set[int]] = {}
        self._error: Exception | None = None
        # Value bytes of the last message seen: a consume takes about
        # CONSUME_BYTES of messages (50,000 768-d vectors would be 150 MB at once).
        self._message_bytes = 0
        # Commits asked for, made by the consuming thread (see commit()).
        self._deferred: dict[Any, int] = {}
        self._deferred_lock = threading.Lock()
        self._thread = _ConsumerThread()
        self.digest: Callable[[Any, list[Any]], list[Any]] | None = None
        """What the source makes of one partition's messages of a poll (its
        chunks), run in the consumer's thread right after ``consume``: the values
        are copied while they are in that core's cache, and the messages (and their
        values' memory) are freed by the thread that allocated them. ``getmany``
        then returns what it made instead of the messages."""

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        from confluent_kafka import Consumer, KafkaException

        try:
            self._consumer = Consumer(self.config)
        except KafkaException as exc:
            raise ConfigError(f"librdkafka refused the consumer settings: {exc}") from None
        # Fails when the broker cannot be reached at all (as aiokafka's start does).
        await self.topics()

    async def stop(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None

            def close() -> None:
                self._commit_deferred(consumer)
                consumer.close()

            try:
                await self._thread.run(close)
            finally:
                self._thread.shutdown()

    # -- group membership ---------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        self._listener = listener
        self._consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _tp(self, p: Any) -> Any:
        from aiokafka.structs import TopicPartition

        return TopicPartition(p.topic, p.partition)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        tps = [self._tp(p) for p in partitions]
        self._pending = {}
        try:
            if self._listener is not None:
                anyio.from_thread.run(
                    self._listener.on_partitions_assigned, tps, token=self._thread.token
                )
        except Exception as exc:  # the source fails from its poll loop
            self._error = exc
        finally:
            pending, self._pending = self._pending, None
            self._commit_deferred(consumer)
        consumer.assign(
            [
                TopicPartition(tp.topic, tp.partition, pending.get(tp, OFFSET_BEGINNING))
                for tp in tps
            ]
        )
        self._assigned = tps

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        tps = [self._tp(p) for p in partitions]
        try:
            if self._listener is not None and tps:
                anyio.from_thread.run(
                    self._listener.on_partitions_revoked, tps, token=self._thread.token
                )
        except Exception:
            log.exception("handing over %s failed", tps)
        finally:
            # The hand-over's snapshot commits while the partitions are still ours.
            self._commit_deferred(consumer)
        self._assigned = []
        consumer.unassign()

    def _commit_deferred(self, consumer: Any) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        with self._deferred_lock:
            offsets, self._deferred = self._deferred, {}
        if not offsets:
            return
        parts = [TopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        try:
            consumer.commit(offsets=parts, asynchronous=True)
        except KafkaException as exc:
            # Commits only inform lag tools; the snapshot already holds the truth.
            log.warning("committing offsets %s failed: %s", offsets, exc)

    def assignment(self) -> set[Any]:
        return set(self._assigned)

    # -- fetching -----------------------------------------------------------------------

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[Any]]:
        consumer = self._consumer
        wanted = max_records or 100_000
        if self._message_bytes:
            wanted = max(256, min(wanted, CONSUME_BYTES // self._message_bytes))
        else:
            wanted = min(wanted, 1024)

        def consume() -> tuple[dict[Any, list[Any]], list[Any]]:
            got: list[Any] = consumer.consume(num_messages=wanted, timeout=timeout_ms / 1000)
            self._commit_deferred(consumer)
            if got:
                self._message_bytes = max(1, len(got[-1]))
            # Sorting messages by partition is per-message work: done here, off the
            # event loop.
            out, bad = _by_partition(got)
            del got
            digest = self.digest
            if digest is not None:
                out = {tp: digest(tp, messages) for tp, messages in out.items()}
            return out, bad

        out, bad = await self._thread.run(consume)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if bad:
            self._raise(bad)
        return out

    def _raise(self, bad: list[Any]) -> None:
        from aiokafka.errors import KafkaError, OffsetOutOfRangeError
        from aiokafka.structs import TopicPartition
        from confluent_kafka import KafkaError as RdError

        for m in bad:
            err = m.error()
            if (
                err.code() == RdError._AUTO_OFFSET_RESET
                or err.code() == RdError.OFFSET_OUT_OF_RANGE
            ):
                tp = TopicPartition(m.topic() or "?", m.partition() or 0)
                raise OffsetOutOfRangeError({tp: m.offset()})
            if err.fatal() or not err.retriable():
                raise KafkaError(f"librdkafka: {err.str()}")
            log.warning("Kafka: %s; librdkafka retries", err.str())

    record_fields: tuple[Callable[[Any], Any], ...] = (_offset, _timestamp, _value, _key, _headers)
    """How the source reads a message: offset, timestamp (ms), value, key, headers."""

    @staticmethod
    def timestamps(messages: list[Any]) -> Any:
        """The messages' timestamps (ms), in C-level passes."""
        return map(_second, map(_timestamp_pair, messages))

    def seek(self, partition: Any, offset: int) -> None:
        if self._pending is not None:
            self._pending[partition] = int(offset)
            return
        from confluent_kafka import TopicPartition

        self._consumer.seek(TopicPartition(partition.topic, partition.partition, int(offset)))

    async def seek_to_beginning(self, *partitions: Any) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        for tp in partitions:
            self.seek(tp, OFFSET_BEGINNING)

    def pause(self, *partitions: Any) -> None:
        if partitions:
            self._consumer.pause(self._rd(partitions))

    def resume(self, *partitions: Any) -> None:
        if partitions:
            self._consumer.resume(self._rd(partitions))

    def _rd(self, partitions: Sequence[Any]) -> list[Any]:
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition) for tp in partitions]

    # -- offsets and metadata ---------------------------------------------------------

    def highwater(self, partition: Any) -> int | None:
        from confluent_kafka import TopicPartition

        try:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(partition.topic, partition.partition), cached=True
            )
        except Exception:
            return None
        return int(high) if high >= 0 else None

    async def commit(self, offsets: Any = None) -> None:
        """Commit ``offsets`` (partition -> next offset) from the consuming thread,
        right after its next ``consume`` (or at the end of a rebalance callback):
        confluent-kafka lets one thread at a time into a consumer, and a commit
        from another thread would wait for ``consume`` to return, or for ever when
        it is inside a rebalance callback waiting for this very commit."""
        with self._deferred_lock:
            self._deferred.update({tp: int(o) for tp, o in offsets.items()})

    async def end_offsets(self, partitions: Any) -> dict[Any, int]:
        from aiokafka.errors import KafkaError
        from confluent_kafka import KafkaException, TopicPartition

        consumer = self._consumer

        def ends() -> dict[Any, int]:
            out = {}
            for tp in partitions:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=10
                )
                out[tp] = int(high)
            return out

        try:
            return await self._thread.run(ends)
        except KafkaException as exc:
            raise KafkaError(f"librdkafka: {exc}") from None

    async def topics(self) -> set[str]:
        from aiokafka.errors import KafkaConnectionError
        from confluent_kafka import KafkaException

        consumer = self._consumer
        try:
            md = await self._thread.run(lambda: consumer.list_topics(timeout=10))
        except KafkaException as exc:
            raise KafkaConnectionError(f"librdkafka: {exc}") from None
        self._topics = {name: set(t.partitions) for name, t in md.topics.items() if t.error is None}
        return set(self._topics)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._topics.get(topic) or None

    async def committed(self, partition: Any) -> int | None:
        from confluent_kafka import TopicPartition

        consumer = self._consumer
        got = await self._thread.run(
            lambda: consumer.committed(
                [TopicPartition(partition.topic, partition.partition)], timeout=10
            )
        )
        offset = int(got[0].offset) if got else -1
        return offset if offset >= 0 else None
