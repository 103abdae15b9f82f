"""A real Apache Kafka broker for the integration tests.

When ``KAFKA_BOOTSTRAP_SERVERS`` is set, the tests use that broker. Otherwise the
suite starts one itself with ``compose/kafka-local.sh`` on a free port (jars cached
in ``compose/.kafka``) and stops it at the end. The tests never skip: a broker that
cannot start is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "compose" / "kafka-local.sh"


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return int(port)
    raise RuntimeError("no free pair of ports for the broker")


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    port = _free_port_pair()
    env = {**os.environ, "KAFKA_PORT": str(port)}
    proc = subprocess.run(
        ["bash", str(LAUNCHER), "start"], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        pytest.fail(f"the Kafka broker did not start:\n{proc.stdout}\n{proc.stderr}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(LAUNCHER), "stop"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
