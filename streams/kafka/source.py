"""KafkaSource: consume topics with a consumer group, effectively once.

Each topic partition is its own pipeline partition (``"<topic>-<n>"``, position
``{"offset": next}``) and so its own index shard. The snapshot is the source of
truth: on assignment every partition seeks to the offset its shard already holds
(the beginning when there is none); auto-commit is off, and offsets are committed to
Kafka only after a durable snapshot contains them, so lag tools see progress that a
crash cannot undo. Tombstones (null values) become deletes of the key's id.

Backpressure: when the next channel is full the source pauses every assigned
partition (so the fetcher stops fetching) and keeps polling, which keeps the
consumer inside ``max.poll.interval.ms``; heartbeats run in aiokafka's background
task all along. Memory stays bounded by the channel capacities and the fetch limits.

On aiokafka, the source reads fetch responses itself (:mod:`streams.kafka.records`,
:mod:`streams.kafka.wire`): fixed-size ``f32`` values with decimal keys become a
chunk of vectors and ids in a few vectorised passes over the response, without a
Python object per message. Other formats and records (nulls, headers, string keys)
take the per-record path, on librdkafka always. Over plaintext connections its fetch
requests are sent and their responses received (and scanned) in a thread per broker,
not on the event loop (:mod:`streams.kafka.transport`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, TypeVar

import anyio

from streams.channel import Outbox
from streams.errors import ConfigError, SourceError
from streams.formats import kafka_formats
from streams.kafka.chunks import chunk_of, fields_of, pieces
from streams.kafka.client import within
from streams.kafka.errors import map_kafka_errors, transient
from streams.kafka.records import raw_records_marker
from streams.kafka.topics import await_topics, unfinished_partitions
from streams.kafka.url import PartitionLag, partition_name
from streams.records import Chunk, Positions
from streams.sink import Sink
from streams.slabs import SPARE_BYTES, SlabPool
from streams.source import Source
from streams.statistics import PartitionLagStatistics, SourceStatistics

__all__ = ["KAFKA_FORMATS", "KafkaSource"]

log = logging.getLogger("embedstream.kafka")

T = TypeVar("T")

KAFKA_FORMATS = kafka_formats()


CLIENTS = ("aiokafka", "confluent", "auto")
"""The Kafka clients the source can consume with."""


def plaintext(consumer_options: dict[str, Any]) -> bool:
    """Whether a consumer made with these (aiokafka) options connects in
    plaintext, the connections a fetch thread serves."""
    protocol = consumer_options.get(
        "security_protocol", consumer_options.get("security.protocol", "PLAINTEXT")
    )
    return str(protocol).upper() == "PLAINTEXT" and "ssl_context" not in consumer_options


class Consumer(Protocol):
    """The part of ``aiokafka.AIOKafkaConsumer`` the source uses (fakes implement it
    for unit tests; integration tests use the real broker)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None: ...
    def assignment(self) -> Any: ...
    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, list[Any]]: ...
    def seek(self, partition: Any, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: Any) -> None: ...
    def pause(self, *partitions: Any) -> None: ...
    def resume(self, *partitions: Any) -> None: ...
    def highwater(self, partition: Any) -> int | None: ...
    async def commit(self, offsets: Any = None) -> None: ...
    async def end_offsets(self, partitions: Any) -> dict[Any, int]: ...
    async def topics(self) -> set[str]: ...
    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    async def committed(self, partition: Any) -> int | None: ...


class KafkaSource(Source):
    """Consume ``topics`` as group ``group``.

    Args:
        bootstrap_servers: ``HOST:PORT[,HOST:PORT...]``.
        topics: topic names.
        group: the consumer group id; processes with the same group share the
            partitions.
        format: value encoding: ``f32`` / ``f16`` (little-endian values, id in the
            key), ``json`` or ``msgpack`` (records like the JSONL format).
        until_idle: stop cleanly once the group has indexed every partition of the
            topics to its end and no new record came for this many seconds
            (``None``: run until stopped). A partition held by another member (or by
            one that died and whose session has not timed out yet) keeps this
            process waiting, with a message, until its offsets are committed. A
            missing topic is waited for this long, then is an error.
        max_records: most records per poll; a poll becomes one chunk per partition.
        poll_timeout: seconds one poll waits for records.
        consumer_options: passed to ``AIOKafkaConsumer`` as they are (SASL/SSL
            settings, fetch sizes, timeouts...).
        consumer_factory: makes the consumer; for tests with a fake one.
        raw_records: on aiokafka, read fetch responses whole instead of taking a
            ``ConsumerRecord`` per message (:mod:`streams.kafka.records`,
            :mod:`streams.kafka.wire`); ``False`` is aiokafka's own path.
        fetch_thread: with ``raw_records`` on aiokafka over plaintext connections,
            send fetch requests and receive their responses in a thread per broker
            instead of on the event loop (:mod:`streams.kafka.transport`).
        stall_timeout: when nothing arrived for this long, ask the broker whether
            records are waiting; if so (or if it cannot be asked), replace the
            consumer, which resumes at what was already emitted.
        client: ``"aiokafka"`` (the default), ``"confluent"``: librdkafka through
            ``confluent-kafka`` (``pip install 'embedstream[fast]'``), which parses
            records in C (:mod:`streams.kafka.confluent`), or ``"auto"`` (what
            ``embedstream ingest`` does): aiokafka with its fetch thread over
            plaintext connections, the fastest here; with SSL or SASL, confluent
            when it is installed, else aiokafka. Same semantics either way;
            :attr:`client` says which one runs.
        slab_bytes: ``f32`` vectors (read straight from aiokafka's fetch
            responses, or joined from librdkafka's messages) go to reusable slabs
            of this size, a partition's chunks one after another
            (:mod:`streams.slabs`): the ``batch`` stage then joins a batch of them
            as one view instead of a copy. The ``max_bytes`` of that stage is the
            size that lets every batch be one.
        name: the stage name.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        *,
        group: str,
        format: str = "f32",
        until_idle: float | None = None,
        max_records: int = 50_000,
        poll_timeout: float = 0.2,
        consumer_options: dict[str, Any] | None = None,
        consumer_factory: Any = None,
        raw_records: bool = True,
        fetch_thread: bool = True,
        stall_timeout: float = 10.0,
        client: str = "aiokafka",
        slab_bytes: int = 8 << 20,
        name: str = "kafka",
    ) -> None:
        if client not in CLIENTS:
            raise ConfigError(f"unknown Kafka client {client!r}; use one of {', '.join(CLIENTS)}")
        if client == "auto":
            from streams.kafka.confluent import confluent_available

            given = consumer_options or {}
            threaded = raw_records and fetch_thread and plaintext(given)
            # librdkafka's dotted option names (security.protocol=SSL...) are for it.
            dotted = any("." in key for key in given)
            wants_librdkafka = dotted or not threaded
            client = "confluent" if wants_librdkafka and confluent_available() else "aiokafka"
        if client == "confluent" and consumer_factory is None:
            from streams.kafka.confluent import confluent_available

            if not confluent_available():
                raise ConfigError(
                    "--kafka-client confluent needs confluent-kafka: "
                    "pip install 'embedstream[fast]'"
                )
        if format not in KAFKA_FORMATS:
            raise ConfigError(
                f"unknown Kafka value format {format!r}; use one of {', '.join(KAFKA_FORMATS)}"
            )
        if not topics:
            raise ConfigError("KafkaSource needs at least one topic")
        if not group:
            raise ConfigError("KafkaSource needs a consumer group id (--group)")
        self.bootstrap_servers = bootstrap_servers
        self.topics = list(topics)
        self.group = group
        self.format = format
        self.until_idle = until_idle
        self.max_records = max_records
        self.poll_timeout = poll_timeout
        self.consumer_options = dict(consumer_options or {})
        self._factory = consumer_factory
        self.raw_records = raw_records
        self.fetch_thread = fetch_thread
        self.stall_timeout = stall_timeout
        self.client = client
        self.slabs = SlabPool(slab_bytes, keep_bytes=max(slab_bytes, SPARE_BYTES))
        self.name = name
        self.consumer: Consumer | None = None
        self.lag: dict[str, PartitionLag] = {}
        self._start: Positions = {}
        # Next offset after what this process already emitted, per partition: a
        # partition assigned again after a rebalance resumes there, because those
        # records are on their way into this process's index.
        self._emitted: dict[str, int] = {}
        # A sink shared with other workers: partitions are claimed from it on
        # assignment and released to it on revocation (see hand_partitions_to).
        self._owner: Sink[Any] | None = None
        self._stopping = False
        # The partitions held when the consumer left the group (the final
        # snapshot, taken after that, commits them); None while it is a member.
        self._left: set[Any] | None = None
        self._claiming: set[str] = set()
        self._failure: Exception | None = None
        self._rebalances = 0
        self._polled = 0.0  # when the consumer was last polled (time.monotonic)
        self._commits = 0
        self._committed_seq = -1
        self._transient_errors = 0
        self._restarts = 0
        self._first_assignment_at: float | None = None

    def __repr__(self) -> str:
        return (
            f"<KafkaSource {self.bootstrap_servers}/{','.join(self.topics)} "
            f"group={self.group!r} format={self.format} partitions={len(self.lag)}>"
        )

    def hand_partitions_to(self, sink: Sink[Any]) -> None:
        """Claim assigned partitions from ``sink`` (it loads their newest shards from
        the shared directory and says where to resume) and release revoked ones to
        it (it waits for their emitted records, snapshots, and lets them go)."""
        self._owner = sink

    def chunks(self, start: Positions) -> AsyncIterator[Chunk]:  # pragma: no cover
        raise NotImplementedError("KafkaSource pushes through run()")

    def _make_consumer(self) -> Consumer:
        if self._factory is not None:
            consumer: Consumer = self._factory()
            return consumer
        if self.client == "confluent":
            from streams.kafka.confluent import ConfluentConsumer

            # A revoked partition's hand-over (drain + snapshot) runs inside the
            # rebalance: the same minute aiokafka gets below.
            made: Consumer = ConfluentConsumer(
                self.bootstrap_servers,
                self.group,
                self.consumer_options,
                rebalance_timeout=60.0 if self._owner is not None else 300.0,
            )
            return made
        from aiokafka import AIOKafkaConsumer

        threaded = self.raw_records and self.fetch_thread and plaintext(self.consumer_options)
        options: dict[str, Any] = {
            # On the event loop, 2/8 MiB was as fast as 4/32 on the benchmark job,
            # with ~20 MB less peak memory (a whole response, a copy, an object per
            # record). A fetch thread holds one buffer per response and takes
            # bigger ones at a better rate (README, "The fetch thread").
            "max_partition_fetch_bytes": (8 if threaded else 2) << 20,
            "fetch_max_bytes": (16 if threaded else 8) << 20,
            **self.consumer_options,
        }
        if self._owner is not None:
            # A revoked partition's hand-over (drain + snapshot) happens inside the
            # rebalance; give it time before the group gives up on this member.
            options.setdefault("rebalance_timeout_ms", 60_000)
        # Never reset silently: an offset the broker no longer has is an error.
        options["enable_auto_commit"] = False
        options["auto_offset_reset"] = "none"
        if self.raw_records and "key_deserializer" not in options:
            marker = raw_records_marker(self.fetch_thread)
            if marker is not None:
                options["key_deserializer"] = marker
        c: Consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, group_id=self.group, **options
        )
        return c

    async def run(self, start: Positions, outbox: Outbox[Chunk]) -> None:
        self._start = start
        while True:
            consumer = self.consumer = self._make_consumer()
            if hasattr(consumer, "digest"):
                consumer.digest = self._chunks
            # A member again (after a restart, the finally below had said otherwise).
            self._stopping = False
            self._left = None
            await self._start_consumer(consumer)
            try:
                await await_topics(
                    consumer, self.topics, f"kafka://{self.bootstrap_servers}", self.until_idle
                )
                consumer.subscribe(self.topics, listener=_listener(self))
                if not await self._consume(consumer, outbox):
                    return
                # The client stopped making progress while records wait on the
                # broker (aiokafka can stay stuck after the whole cluster was down):
                # start a new one. It seeks to what this process already emitted.
                self._restarts += 1
                log.warning(
                    "Kafka: the consumer made no progress for %ss; restarting it",
                    self.stall_timeout,
                )
            finally:
                with anyio.CancelScope(shield=True):
                    # Leaving the group is not a hand-over: the sink's final snapshot
                    # holds everything, and the partitions move on from there.
                    self._stopping = True
                    self._left = set(consumer.assignment())
                    try:
                        await within(30, consumer.stop())
                    except Exception as exc:  # pragma: no cover - best effort on shutdown
                        log.warning("stopping the Kafka consumer failed: %s", exc)

    async def _start_consumer(self, consumer: Consumer) -> None:
        where = f"kafka://{self.bootstrap_servers}"
        with map_kafka_errors(
            where, "cannot connect: ", "check the address and that the broker runs"
        ):
            await consumer.start()

    async def _consume(self, consumer: Consumer, outbox: Outbox[Chunk]) -> bool:
        """Poll and send until idle (False) or the client is stuck (True)."""
        from aiokafka.errors import KafkaError, OffsetOutOfRangeError

        last_record = last_probe = last_said = time.monotonic()
        while True:
            if self._failure is not None:
                raise self._failure
            try:
                self._polled = time.monotonic()
                fetched = await consumer.getmany(
                    timeout_ms=int(self.poll_timeout * 1000), max_records=self.max_records
                )
            except OffsetOutOfRangeError as exc:
                raise self._out_of_range(exc) from None
            except KafkaError as exc:
                if not transient(exc):
                    raise SourceError(f"kafka://{self.bootstrap_servers}", str(exc)) from exc
                # A broker restart or leader move: aiokafka reconnects; wait and poll
                # again (positions are unaffected, nothing is lost).
                self._transient_errors += 1
                log.warning("Kafka: %s; retrying", exc)
                await anyio.sleep(min(0.2 * self._transient_errors, 2.0))
                continue
            self._transient_errors = 0
            self._learn_ends(consumer)
            now = time.monotonic()
            if fetched:
                last_record = now
                digested = getattr(consumer, "digest", None) is not None
                for tp, messages in fetched.items():
                    if self._claiming and partition_name(tp.topic, tp.partition) in self._claiming:
                        continue
                    for chunk in messages if digested else self._chunks(tp, messages):
                        await self._send(consumer, outbox, self._noted(tp, chunk))
                continue
            # Nothing came: slabs in flight earlier are done with; keep one.
            self.slabs.trim(self.slabs.slab_bytes)
            if self.until_idle is not None and now - last_record >= self.until_idle:
                behind = await unfinished_partitions(consumer, self.topics, self._emitted)
                if not behind:
                    return False
                # Not done while any partition is unread, wherever it is held.
                last_record = now
                if now - last_said >= 5.0:
                    last_said = now
                    log.warning(
                        "--until-idle: waiting until the group has indexed %s (held by "
                        "another member, or by one that left and whose session has not "
                        "timed out yet)",
                        ", ".join(behind),
                    )
                mine = {partition_name(tp.topic, tp.partition) for tp in consumer.assignment()}
                snapshot = getattr(self._owner, "snapshot", None)
                if snapshot is not None and not mine & set(behind):
                    # Ours are done: commit them now (through the snapshot), so that
                    # workers waiting on them can finish too.
                    await snapshot()
                continue
            if not consumer.assignment():
                last_record = now  # a stall needs partitions to stall on
                continue
            if now - last_record >= self.stall_timeout and now - last_probe >= self.stall_timeout:
                last_probe = now
                if await self._stuck(consumer):
                    return True

    async def _stuck(self, consumer: Consumer) -> bool:
        """True when records wait on the broker but this client fetches none (or the
        broker cannot even be asked)."""
        from aiokafka.errors import KafkaError

        assigned = list(consumer.assignment())
        try:
            ends = await within(self.stall_timeout, consumer.end_offsets(assigned))
        except (KafkaError, TimeoutError):
            return True
        for tp in assigned:
            done = self._emitted.get(partition_name(tp.topic, tp.partition))
            if done is not None and ends.get(tp, 0) > done:
                return True
        return False

    def _chunks(self, tp: Any, messages: list[Any]) -> list[Chunk]:
        """The chunks of partition ``tp``'s messages of one poll. A consumer with a
        ``digest`` attribute (librdkafka's) runs this in its own thread, right after
        it fetched the messages: their values are copied into the slab while they
        are in that core's cache, and the messages are freed by the thread that
        made them (see :class:`streams.kafka.confluent.ConfluentConsumer`)."""
        fmt = self.format
        return [
            chunk_of(tp, piece, self.consumer, fmt, self.slabs)
            for piece in pieces(messages, self.max_records, fmt == "f32")
        ]

    def _noted(self, tp: Any, chunk: Chunk) -> Chunk:
        """``chunk``, noting that its records were read (the partition's position
        and lag)."""
        part = chunk.partition
        nxt = chunk.position["offset"]
        self._emitted[part] = nxt
        lag = self.lag.setdefault(part, PartitionLag(tp.topic, tp.partition))
        lag.position = nxt
        lag.end_known = True
        assert chunk.timestamps is not None
        lag.last_timestamp = float(chunk.timestamps[-1])
        hw = self.consumer.highwater(tp) if self.consumer is not None else None
        if hw is not None:
            lag.highwater = hw
        return chunk

    async def _send(self, consumer: Consumer, outbox: Outbox[Chunk], chunk: Chunk) -> None:
        if outbox.try_send(chunk):
            return
        # The channel is full: pause fetching, and keep polling so the group does
        # not consider this consumer dead, until the chunk is taken.
        sent = anyio.Event()

        async def send() -> None:
            await outbox.send(chunk)
            sent.set()

        paused: set[Any] = set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            while not sent.is_set():
                # A poll at least every second, counted from the last one whichever
                # chunk it was for: a wait counted from each blocked send let two
                # sends in a row leave two seconds between polls.
                with anyio.move_on_after(max(0.0, self._polled + 1.0 - time.monotonic())):
                    await sent.wait()
                if sent.is_set():
                    break
                # Pause what is assigned now (a rebalance may have assigned more).
                current = set(consumer.assignment())
                consumer.pause(*(current - paused))
                paused |= current
                self._polled = time.monotonic()
                got = await consumer.getmany(timeout_ms=0, max_records=1)
                for tp, messages in got.items():
                    # Assigned during this very poll, so not paused: read it again.
                    if messages:
                        consumer.seek(tp, fields_of(consumer)[0](messages[0]))
        if paused:
            still = set(consumer.assignment())
            consumer.resume(*[tp for tp in paused if tp in still])

    def _learn_ends(self, consumer: Consumer) -> None:
        """Take the end of each partition that has not said where it ends since it
        was assigned from the client's last fetch response (no request: a caught-up
        partition fetches nothing, yet its lag is known to be 0)."""
        for lag in self.lag.values():
            if not lag.end_known:
                from aiokafka.structs import TopicPartition

                hw = consumer.highwater(TopicPartition(lag.topic, lag.partition))
                if hw is not None:
                    lag.highwater = hw
                    lag.end_known = True

    def _out_of_range(self, exc: Exception) -> SourceError:
        detail = getattr(exc, "args", [None])[0]
        where = (
            ", ".join(
                f"{tp.topic}[{tp.partition}] offset {off}" for tp, off in (detail or {}).items()
            )
            if isinstance(detail, dict)
            else ""
        )
        return SourceError(
            f"kafka {where or self.topics}",
            "the offset the index holds is no longer on the broker (retention deleted "
            "those records, or the topic was recreated)",
            "re-ingest into a new index directory; offsets are never reset silently",
        )

    async def _assigned(self, partitions: list[Any]) -> None:
        consumer = self.consumer
        assert consumer is not None
        self._rebalances += 1
        if self._first_assignment_at is None and partitions:
            self._first_assignment_at = time.perf_counter()
        if self._owner is not None:
            await self._claim(consumer, partitions)
            return
        fresh = []
        for tp in partitions:
            part = partition_name(tp.topic, tp.partition)
            offset = self._emitted.get(part, self._start.get(part, {}).get("offset"))
            if offset is None:
                fresh.append(tp)
            else:
                consumer.seek(tp, int(offset))
                # Everything before it is in the index: as good as emitted.
                self._emitted[part] = int(offset)
            lag = self.lag.setdefault(part, PartitionLag(tp.topic, tp.partition))
            lag.position = self._emitted.get(part, 0)
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        log.info("assigned %s", sorted(partition_name(tp.topic, tp.partition) for tp in partitions))

    async def _claim(self, consumer: Consumer, partitions: list[Any]) -> None:
        """Take assigned partitions over from the shared sink and seek to where its
        newest state of each ends."""
        names = [partition_name(tp.topic, tp.partition) for tp in partitions]
        self._claiming.update(names)
        try:
            # Give every partition a valid position at once: the fetcher looks for
            # one while the sink loads shards, and with no committed offset it would
            # fail (offsets are never reset silently). Records fetched meanwhile are
            # dropped (see _consume) and read again from the claimed positions.
            if partitions:
                await consumer.seek_to_beginning(*partitions)
            claimed = await self._owner.claim(names) if self._owner is not None else {}
            fresh = []
            for tp, name in zip(partitions, names, strict=True):
                self._emitted.pop(name, None)
                offset = claimed.get(name, {}).get("offset")
                if offset is not None:
                    consumer.seek(tp, int(offset))
                    # The sink holds everything before it: as good as emitted.
                    self._emitted[name] = int(offset)
                else:
                    fresh.append(tp)
                lag = self.lag.setdefault(name, PartitionLag(tp.topic, tp.partition))
                lag.position = self._emitted.get(name, 0)
            if fresh:
                await consumer.seek_to_beginning(*fresh)
        except Exception as exc:
            # aiokafka only logs what a rebalance listener raises: fail the source
            # from its poll loop instead, and read nothing of these partitions.
            self._failure = exc
            raise
        self._claiming.difference_update(names)
        log.info("claimed %s", sorted(names))

    async def _revoked(self, partitions: list[Any]) -> None:
        names = [partition_name(tp.topic, tp.partition) for tp in partitions]
        if self._owner is not None and not self._stopping and names:
            upto = {n: {"offset": self._emitted[n]} for n in names if n in self._emitted}
            try:
                await self._owner.release(names, upto)
            except Exception:
                # aiokafka would only log it; the partitions move on either way, and
                # the next owner resumes from their last durable snapshot.
                log.exception("handing over %s failed", names)
            for n in names:
                self._emitted.pop(n, None)
        for tp in partitions:
            self.lag.pop(partition_name(tp.topic, tp.partition), None)
        log.info("revoked %s", sorted(partition_name(tp.topic, tp.partition) for tp in partitions))

    async def on_snapshot(self, seq: int, positions: Positions) -> None:
        """Commit the offsets a durable snapshot holds (for lag tools only); a
        snapshot older than one already committed is skipped (snapshots call their
        listeners outside their lock, so two may come close together)."""
        consumer = self.consumer
        if consumer is None or seq <= self._committed_seq:
            return
        self._committed_seq = seq
        from aiokafka.errors import KafkaError
        from aiokafka.structs import TopicPartition

        left = self._left
        assigned = set(consumer.assignment()) if left is None else left
        offsets = {}
        for tp in assigned:
            pos = positions.get(partition_name(tp.topic, tp.partition), {}).get("offset")
            if pos is not None:
                offsets[TopicPartition(tp.topic, tp.partition)] = int(pos)
        if not offsets:
            return
        try:
            if left is None:
                await consumer.commit(offsets)
            elif not await self._commit_as_former_member(offsets):
                return
            self._commits += 1
        except KafkaError as exc:
            # Commits only inform lag tools; the snapshot already holds the truth.
            log.warning("committing offsets of snapshot %s failed: %s", seq, exc)

    async def _commit_as_former_member(self, offsets: dict[Any, int]) -> bool:
        """Commit the final snapshot's offsets after this process left the group
        (the pipeline snapshots after its source has stopped): as a consumer that
        joins no group, which the broker takes while the group has no members.
        While it has some, those now own the partitions and commit for them."""
        if self._factory is not None:
            return False  # a fake consumer: nothing to commit to
        where = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in offsets)
        try:
            if self.client == "confluent":
                from streams.kafka.confluent import ConfluentConsumer, commit_outside_group

                made = self._make_consumer()
                assert isinstance(made, ConfluentConsumer)
                await within(30, commit_outside_group(made, offsets))
            else:
                from aiokafka import AIOKafkaConsumer

                consumer = self._make_consumer()
                assert isinstance(consumer, AIOKafkaConsumer)
                await within(30, consumer.start())
                try:
                    consumer.assign(list(offsets))
                    await within(30, consumer.commit(offsets))
                finally:
                    await within(30, consumer.stop())
        except Exception as exc:
            log.info("the final offsets of %s were not committed: %s", where, exc)
            return False
        return True

    def statistics(self) -> SourceStatistics:
        now = time.time()
        return SourceStatistics(
            rebalances=self._rebalances,
            commits=self._commits,
            consumer_restarts=self._restarts,
            # A partition's lag is known once a fetch said where its end is: one
            # just assigned is not "0 behind" before that.
            lag={
                name: PartitionLagStatistics(
                    lag.topic,
                    lag.partition,
                    lag.records,
                    lag.seconds(now),
                    lag.position,
                    lag.highwater,
                )
                for name, lag in self.lag.items()
                if lag.end_known
            },
            first_assignment_at=self._first_assignment_at,
            until_idle=self.until_idle,
        )


def _listener(source: KafkaSource) -> Any:
    """An aiokafka rebalance listener delegating to the source (aiokafka insists on
    its own base class, imported only where aiokafka is used)."""
    from aiokafka.abc import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            await source._revoked(list(revoked))

        async def on_partitions_assigned(self, assigned: Any) -> None:
            await source._assigned(list(assigned))

    return Listener()
