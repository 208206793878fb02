"""Prometheus metrics of ingest, registered on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.updates = Counter(
            "eventbot_ingest_updates_total",
            "Telegram updates by outcome: recorded, not_recorded (store down: left with Telegram), rejected (kept aside)",
            ("outcome",), registry=registry,
        )
        self.webhook = Counter(
            "eventbot_ingest_webhook_responses_total", "Webhook answers by HTTP status", ("status",), registry=registry
        )
