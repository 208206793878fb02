"""Prometheus metrics of the consumer runtime, registered on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("group", "stream")
        self.processed = Counter(
            "eventbot_consumer_processed_total", "Entries handled and acked", labels, registry=registry
        )
        self.failed = Counter(
            "eventbot_consumer_failed_total", "Handler attempts that raised", labels, registry=registry
        )
        self.retried = Counter(
            "eventbot_consumer_retried_total", "Entries handled again after a failure", labels, registry=registry
        )
        self.dead_lettered = Counter(
            "eventbot_consumer_dead_lettered_total", "Entries moved to a dead-letter stream", labels, registry=registry
        )
        self.out_of_order = Counter(
            "eventbot_consumer_out_of_order_total",
            "Batches put back because earlier entries were still pending with another reader", labels, registry=registry,
        )
        self.unknown = Counter(
            "eventbot_consumer_unknown_total", "Entries of an unknown event type or version", labels, registry=registry
        )
        self.batch_seconds = Histogram(
            "eventbot_consumer_batch_seconds",
            "Time to handle one batch, acks included",
            ("group",),
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.lag = Gauge("eventbot_consumer_lag", "Entries not yet delivered to the group", labels, registry=registry)
        self.pending = Gauge(
            "eventbot_consumer_pending", "Entries delivered but not acked", labels, registry=registry
        )
        self.partitions_owned = Gauge(
            "eventbot_consumer_partitions_owned", "Partition leases this consumer holds", ("group",), registry=registry
        )
