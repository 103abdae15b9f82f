"""What exists on the broker and what the group has indexed of it.

Two questions the Kafka source asks about whole topics, not just its own
assignment:

- :func:`await_topics`: do the topics exist? A missing topic is waited for with a
  message every few seconds (a pipeline may well start before its topic is
  created), and with ``--until-idle`` it becomes an error naming the topic once
  that long has passed.
- :func:`unfinished_partitions`: has the consumer group indexed every partition up
  to its end? For the partitions this process holds that is what it emitted; for
  the others it is the group's committed offset, which a worker commits only after a
  durable snapshot. A partition still held by a member that was killed a moment ago
  stays unfinished until the group hands it to a live member, so ``--until-idle``
  never ends a run with records unread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from streams.errors import SourceError
from streams.kafka.client import within
from streams.kafka.url import partition_name

__all__ = ["await_topics", "unfinished_partitions"]

log = logging.getLogger("embedstream.kafka")

LOG_EVERY_SECONDS = 5.0


async def await_topics(
    consumer: Any, topics: Sequence[str], where: str, until: float | None
) -> None:
    """Return once every topic exists; log what is missing every few seconds.

    Raises:
        SourceError: a topic is still missing after ``until`` seconds (``None``:
            wait as long as it takes), or the broker cannot be asked.
    """
    from aiokafka.errors import KafkaError

    started = time.monotonic()
    logged = 0.0
    while True:
        try:
            known = await within(30, consumer.topics())
        except (KafkaError, TimeoutError) as exc:
            raise SourceError(where, f"cannot list the broker's topics: {exc}") from exc
        missing = [t for t in topics if t not in known]
        if not missing:
            return
        now = time.monotonic()
        names = ", ".join(repr(t) for t in missing)
        if until is not None and now - started >= until:
            raise SourceError(
                where,
                f"topic {names} does not exist (waited {until:g}s, --until-idle)",
                "create it first, or check the name in kafka://HOST:PORT/TOPIC",
            )
        if now - logged >= LOG_EVERY_SECONDS:
            logged = now
            log.warning("Kafka: topic %s does not exist on %s yet; waiting for it", names, where)
        await anyio.sleep(0.5)


async def unfinished_partitions(
    consumer: Any, topics: Sequence[str], emitted: Mapping[str, int]
) -> list[str]:
    """The partitions of ``topics`` the group has not indexed to their end yet.

    ``emitted`` is, per partition this process holds, the next offset it has read
    (the final snapshot commits it). Partitions whose metadata or offsets cannot be
    had right now count as unfinished.
    """
    from aiokafka.errors import KafkaError
    from aiokafka.structs import TopicPartition

    parts: list[Any] = []
    unknown: list[str] = []
    for topic in topics:
        ids = consumer.partitions_for_topic(topic)
        if not ids:
            unknown.append(f"{topic} (no partition metadata yet)")
            continue
        parts.extend(TopicPartition(topic, p) for p in sorted(ids))
    if unknown or not parts:
        return unknown or [", ".join(topics)]
    try:
        ends = await within(30, consumer.end_offsets(parts))
    except (KafkaError, TimeoutError):
        return [partition_name(tp.topic, tp.partition) for tp in parts]
    mine = set(consumer.assignment())
    out = []
    for tp in parts:
        end = int(ends.get(tp, 0))
        if end == 0:
            continue
        name = partition_name(tp.topic, tp.partition)
        if tp in mine:
            done = emitted.get(name, 0)
        else:
            try:
                done = await within(30, consumer.committed(tp)) or 0
            except (KafkaError, TimeoutError):
                done = 0
        if done < end:
            out.append(name)
    return out
