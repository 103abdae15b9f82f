"""A broker for the Kafka benchmarks: ``KAFKA_BOOTSTRAP_SERVERS`` or one started with
``compose/kafka-local.sh`` on a free port, and the benchmark topic."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from streams.kafka.admin import create_topic

LAUNCHER = Path(__file__).resolve().parents[1] / "compose" / "kafka-local.sh"


@contextmanager
def broker() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_HEAP": "1g"}
    subprocess.run(["bash", str(LAUNCHER), "start"], env=env, check=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(LAUNCHER), "stop"], env=env, check=False)


async def _fill(bootstrap: str, topic: str, n: int, dim: int, partitions: int) -> None:
    from aiokafka import AIOKafkaProducer

    await create_topic(bootstrap, topic, partitions)
    x = np.random.default_rng(0).standard_normal((n, dim)).astype("<f4")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1
    )
    await producer.start()
    try:
        pending = []
        for i in range(n):
            pending.append(await producer.send(topic, key=str(i).encode(), value=x[i].tobytes()))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def make_topic(bootstrap: str, topic: str, n: int, dim: int, partitions: int = 4) -> None:
    asyncio.run(_fill(bootstrap, topic, n, dim, partitions))


if __name__ == "__main__":
    import sys

    # python -m benchmarks.kafka_env create BOOTSTRAP TOPIC [PARTITIONS]: an empty topic
    if sys.argv[1:2] == ["create"]:
        asyncio.run(
            create_topic(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 4)
        )
