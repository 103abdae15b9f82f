"""The Kafka job done with the frameworks users would otherwise pick, one per
invocation, run with the peers' own interpreter (``benchmarks/peers-venv.sh``):

    .peers-venv/bin/python -m benchmarks.peer_contenders PEER BOOTSTRAP TOPIC N

Each consumes the topic from the start with a fresh consumer group, L2-normalises,
adds with ids to ``IDMap2,Flat`` (inner product) in batches as the framework hands
them over, and stops when all N are in. Prints ``RESULT {json}`` like
:mod:`benchmarks.kafka_contenders`. Only numpy and faiss besides the peer: nothing of
embedstream is imported here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from benchmarks.kafka_contenders import Progress


class Index:
    """The job's sink: normalise and add a batch; count as it goes (:class:`Progress`)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.index: Any = None
        self.got = 0
        self.progress = Progress(n)
        self.done = threading.Event()

    def mark(self) -> None:
        """The first record reached the user's code."""
        if not self.progress.first:
            self.progress.first = time.perf_counter()

    def add(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        import faiss
        import numpy as np

        if not values:
            return
        self.mark()
        x = np.frombuffer(b"".join(values), dtype="<f4").reshape(len(values), -1).copy()
        ids = np.array([int(k) for k in keys], dtype=np.int64)
        faiss.normalize_L2(x)
        if self.index is None:
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(x.shape[1]))
        self.index.add_with_ids(x, ids)
        self.got += len(values)
        self.progress.saw(self.got)
        if self.got >= self.n:
            self.done.set()


def bytewax_job(bootstrap: str, topic: str, n: int) -> None:
    """Bytewax's Kafka input into a batch sink (``write_batch`` gets what one poll
    of the input returned)."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    sink = Index(n)

    class Partition(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            sink.add([m.key for m in items], [m.value for m in items])

    class FaissOut(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Partition:
            return Partition()

    flow = Dataflow("embeddings")
    source = KafkaSource(
        [bootstrap],
        [topic],
        tail=False,
        batch_size=10_000,
        add_config={"group.id": uuid.uuid4().hex},
    )
    op.output("faiss", op.input("kafka", flow, source), FaissOut())
    sink.progress.t0 = time.perf_counter()
    run_main(flow)
    sink.progress.report()


def quix_job(bootstrap: str, topic: str, n: int) -> None:
    """Quix Streams with a BatchingSink (flushed at each checkpoint)."""
    from quixstreams import Application
    from quixstreams.sinks import BatchingSink, SinkBatch

    sink = Index(n)
    app = Application(
        broker_address=bootstrap,
        consumer_group=uuid.uuid4().hex,
        auto_offset_reset="earliest",
        commit_interval=0.5,
        loglevel="WARNING",
    )

    class FaissOut(BatchingSink):
        def add(self, *args: Any, **kwargs: Any) -> None:
            # Called per record as it arrives; write() only at checkpoints.
            sink.mark()
            super().add(*args, **kwargs)

        def write(self, batch: SinkBatch) -> None:
            items = list(batch)
            sink.add([i.key for i in items], [i.value for i in items])
            if sink.done.is_set():
                app.stop()

    t = app.topic(topic, key_deserializer="bytes", value_deserializer="bytes")
    app.dataframe(t).sink(FaissOut())
    sink.progress.t0 = time.perf_counter()
    app.run()
    sink.progress.report()


def pathway_job(bootstrap: str, topic: str, n: int) -> None:
    """Pathway's Kafka input; rows collected per ``on_change`` and added per
    Pathway time (``on_time_end``), its unit of consistency."""
    import pathway as pw

    sink = Index(n)
    keys: list[bytes] = []
    values: list[bytes] = []
    lock = threading.Lock()

    def on_change(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition:
            sink.mark()
            with lock:
                keys.append(row["key"])
                values.append(row["data"])

    def on_time_end(time: int) -> None:
        with lock:
            k, v = keys[:], values[:]
            keys.clear()
            values.clear()
        sink.add(k, v)

    table = pw.io.kafka.read(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": "6000",
        },
        topic=topic,
        format="raw",
        autocommit_duration_ms=50,
    )
    pw.io.subscribe(table, on_change=on_change, on_time_end=on_time_end)
    sink.progress.t0 = time.perf_counter()
    runner = threading.Thread(
        target=lambda: pw.run(monitoring_level=pw.MonitoringLevel.NONE), daemon=True
    )
    runner.start()
    # Pathway streams forever: stop the process once everything is in.
    sink.done.wait()
    sink.progress.report()
    sys.stdout.flush()
    os._exit(0)


PEERS = {"bytewax": bytewax_job, "quixstreams": quix_job, "pathway": pathway_job}


def main() -> None:
    peer, bootstrap, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if peer not in PEERS:
        raise SystemExit(f"unknown peer {peer}; one of {', '.join(PEERS)}")
    PEERS[peer](bootstrap, topic, n)


if __name__ == "__main__":
    main()
