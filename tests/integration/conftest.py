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


class Broker:
    """The broker the suite started, so a test can restart it (keeping its data)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(LAUNCHER), "stop"],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )

    def start(self) -> None:
        subprocess.run(
            ["bash", str(LAUNCHER), "start"],
            env={**self.env, "KAFKA_KEEP_DATA": "1"},
            capture_output=True,
            timeout=300,
            check=True,
        )


_broker: Broker | None = None


@pytest.fixture(scope="session")
def kafka_broker(kafka: str) -> Broker | None:
    """Control of the broker, or None when the tests use one given from outside."""
    return _broker


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    global _broker
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    port = _free_port_pair()
    env = {**os.environ, "KAFKA_PORT": str(port)}
    _broker = Broker(env)
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


@pytest.fixture(params=["aiokafka", "confluent"])
def kafka_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on each Kafka client: ``ingest_argv`` passes it as
    ``--kafka-client`` to every ``embedstream ingest`` the test starts."""
    monkeypatch.setenv("EMBEDSTREAM_TEST_KAFKA_CLIENT", request.param)
    return str(request.param)
