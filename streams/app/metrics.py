"""Prometheus metrics of a pipeline, read at scrape time.

A :class:`PipelineCollector` turns :meth:`Pipeline.metrics` into Prometheus
families when ``/metrics`` is scraped, so the data path pays nothing for metrics
(the counters it keeps anyway are plain attributes). One registry per pipeline by
default; pass your own to :func:`pipeline_registry` to share one.

Families (labels in braces):

- ``embedstream_channel_depth{channel}``, ``embedstream_channel_capacity{channel}``,
  ``embedstream_channel_peak_depth{channel}`` (gauges),
  ``embedstream_channel_send_blocked_seconds_total{channel}`` (backpressure),
  ``embedstream_channel_receive_wait_seconds_total{channel}`` (starvation),
  ``embedstream_channel_items_total{channel}``, ``embedstream_channel_bytes{channel}``
  (bytes of the items waiting), ``embedstream_channel_max_bytes{channel}`` (its
  bound, when it has one)
- ``embedstream_stage_records_total{stage}``, ``embedstream_stage_busy_seconds_total{stage}``
- ``embedstream_kafka_consumer_lag{topic,partition}`` (records),
  ``embedstream_kafka_consumer_lag_seconds{topic,partition}``
- ``embedstream_index_vectors{shard}``, ``embedstream_segments{shard}``,
  ``embedstream_merges_total``
- ``embedstream_codec_generation``, ``embedstream_codec_drift`` (recent fit over
  the fit after training), ``embedstream_retrains_total``,
  ``embedstream_last_retrain_timestamp_seconds``, ``embedstream_reencoded_segments_total``
- ``embedstream_expired_total`` (vectors removed by ``--ttl``)
- ``embedstream_freshness_seconds`` (histogram: event time to searchable),
  ``embedstream_snapshot_duration_seconds`` (histogram),
  ``embedstream_last_snapshot_timestamp_seconds``, ``embedstream_snapshots_total``
- ``embedstream_dead_letters_total{reason}``
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from streams.histogram import Histogram
from streams.statistics import SinkStatistics

if TYPE_CHECKING:
    from streams.deadletters import Rejects
    from streams.pipeline import Pipeline

__all__ = ["PipelineCollector", "pipeline_registry"]


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [(("+Inf" if b == float("inf") else repr(b)), c) for b, c in h.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


class PipelineCollector(Collector):
    """Collects a pipeline's figures at scrape time."""

    def __init__(self, pipeline: Pipeline, rejects: Rejects | None = None) -> None:
        from streams.deadletters import Rejects

        self.pipeline = pipeline
        # The dead-letter policy: given, or the one the pipeline closes at the end.
        self.rejects = rejects or next(
            (r for r in pipeline.resources if isinstance(r, Rejects)), None
        )

    def collect(self) -> Iterator[Metric]:
        m = self.pipeline.metrics()
        ch: dict[str, Any] = {
            "depth": GaugeMetricFamily(
                "embedstream_channel_depth", "Items waiting in the channel", labels=["channel"]
            ),
            "capacity": GaugeMetricFamily(
                "embedstream_channel_capacity", "Items the channel can hold", labels=["channel"]
            ),
            "peak": GaugeMetricFamily(
                "embedstream_channel_peak_depth",
                "Most items ever waiting in the channel",
                labels=["channel"],
            ),
            "blocked": CounterMetricFamily(
                "embedstream_channel_send_blocked_seconds",
                "Seconds senders waited for room (backpressure)",
                labels=["channel"],
            ),
            "waited": CounterMetricFamily(
                "embedstream_channel_receive_wait_seconds",
                "Seconds receivers waited for items (starvation)",
                labels=["channel"],
            ),
            "items": CounterMetricFamily(
                "embedstream_channel_items", "Items sent through the channel", labels=["channel"]
            ),
            "bytes": GaugeMetricFamily(
                "embedstream_channel_bytes",
                "Bytes of the items waiting in the channel",
                labels=["channel"],
            ),
            "max_bytes": GaugeMetricFamily(
                "embedstream_channel_max_bytes",
                "Bytes of items the channel holds before senders wait",
                labels=["channel"],
            ),
        }
        for name, c in m.channels.items():
            ch["depth"].add_metric([name], c.depth)
            ch["capacity"].add_metric([name], c.capacity)
            ch["peak"].add_metric([name], c.peak_depth)
            ch["blocked"].add_metric([name], c.send_blocked_seconds)
            ch["waited"].add_metric([name], c.receive_wait_seconds)
            ch["items"].add_metric([name], c.items_in)
            ch["bytes"].add_metric([name], c.queued_bytes)
            if c.max_bytes is not None:
                ch["max_bytes"].add_metric([name], c.max_bytes)
        yield from ch.values()
        records = CounterMetricFamily(
            "embedstream_stage_records", "Records a stage emitted", labels=["stage"]
        )
        busy = CounterMetricFamily(
            "embedstream_stage_busy_seconds", "Seconds a stage spent working", labels=["stage"]
        )
        for name, s in m.stages.items():
            records.add_metric([name], s.records)
            busy.add_metric([name], s.busy_seconds)
        yield records
        yield busy
        lag = GaugeMetricFamily(
            "embedstream_kafka_consumer_lag",
            "Records behind the partition's end",
            labels=["topic", "partition"],
        )
        lag_s = GaugeMetricFamily(
            "embedstream_kafka_consumer_lag_seconds",
            "Seconds behind the partition's newest record",
            labels=["topic", "partition"],
        )
        for info in m.source.lag.values():
            labels = [info.topic, str(info.partition)]
            lag.add_metric(labels, info.records)
            lag_s.add_metric(labels, info.seconds)
        yield lag
        yield lag_s
        vectors = GaugeMetricFamily(
            "embedstream_index_vectors", "Vectors a shard holds", labels=["shard"]
        )
        segments = GaugeMetricFamily(
            "embedstream_segments", "Segments a shard searches", labels=["shard"]
        )
        for name, shard in m.sink.shards.items():
            vectors.add_metric([name], shard.ntotal)
            segments.add_metric([name], shard.segments)
        yield vectors
        yield segments
        merges = CounterMetricFamily("embedstream_merges", "Segment merges done")
        merges.add_metric([], m.sink.merges)
        yield merges
        yield from _codec_metrics(m.sink)
        hists = self.pipeline.sink.histograms()
        if "freshness_seconds" in hists:
            yield _histogram(
                "embedstream_freshness_seconds",
                "Seconds from a record's event time to searchable",
                hists["freshness_seconds"],
            )
        if "snapshot_duration_seconds" in hists:
            yield _histogram(
                "embedstream_snapshot_duration_seconds",
                "Seconds a snapshot took",
                hists["snapshot_duration_seconds"],
            )
        last = GaugeMetricFamily(
            "embedstream_last_snapshot_timestamp_seconds", "Unix time of the last durable snapshot"
        )
        last.add_metric([], m.sink.last_snapshot_time or 0.0)
        yield last
        snaps = CounterMetricFamily("embedstream_snapshots", "Snapshots written")
        snaps.add_metric([], m.sink.snapshots)
        yield snaps
        dead = CounterMetricFamily(
            "embedstream_dead_letters", "Records dead-lettered", labels=["reason"]
        )
        if self.rejects is not None:
            for reason, n in sorted(self.rejects.counts.items()):
                dead.add_metric([reason], n)
        yield dead


def pipeline_registry(
    pipeline: Pipeline, *, rejects: Rejects | None = None, registry: CollectorRegistry | None = None
) -> CollectorRegistry:
    """A registry (new, or ``registry``) collecting ``pipeline``'s metrics."""
    registry = registry or CollectorRegistry(auto_describe=True)
    registry.register(PipelineCollector(pipeline, rejects))
    return registry


def _one(kind: type[Any], name: str, doc: str, value: float) -> Any:
    """A metric family holding one unlabelled sample."""
    family = kind(name, doc)
    family.add_metric([], value)
    return family


def _codec_metrics(sink: SinkStatistics) -> Iterator[Any]:
    """Codec generations and drift (:mod:`sinks.retrain`), mapped bytes, expiry."""
    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    yield _one(
        gauge,
        "embedstream_codec_generation",
        "Codec generation of the index (0: first training)",
        sink.codec_generation,
    )
    if sink.codec_drift is not None:
        yield _one(
            gauge,
            "embedstream_codec_drift",
            "How much worse recent vectors fit the codec than those right after training",
            sink.codec_drift,
        )
    yield _one(counter, "embedstream_retrains", "Codec retrains on drift", sink.retrains)
    yield _one(
        counter,
        "embedstream_reencoded_segments",
        "Segments re-encoded into a newer codec generation",
        sink.reencoded_segments,
    )
    yield _one(
        gauge,
        "embedstream_index_mapped_bytes",
        "Bytes of snapshot objects searched in place (page cache, not process memory)",
        sink.mapped_bytes,
    )
    yield _one(counter, "embedstream_expired", "Vectors that expired (--ttl)", sink.expired)
    if sink.last_retrain_time is not None:
        yield _one(
            gauge,
            "embedstream_last_retrain_timestamp_seconds",
            "When the codec was last retrained",
            sink.last_retrain_time,
        )
