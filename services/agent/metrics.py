"""Prometheus metrics of the agent, registered on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SLOW = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ttft = Histogram(
            "bot_ttft_seconds",
            "Time to the first text in Telegram: from the model's first token (span=model) "
            "or from the message being received (span=message)",
            ("span",),
            buckets=_FAST,
            registry=registry,
        )
        self.generation = Histogram(
            "bot_generation_seconds", "From the request to Claude to the final message", ("outcome",),
            buckets=_SLOW, registry=registry,
        )
        self.tokens = Counter("bot_tokens_total", "Tokens used, by kind", ("model", "kind"), registry=registry)
        self.cost = Counter("bot_cost_micro_usd_total", "Charged to users, micro-USD", ("model",), registry=registry)
        self.responses = Counter("bot_responses_total", "Responses by outcome", ("outcome",), registry=registry)
        self.retries = Counter(
            "bot_model_retries_total", "Calls to Claude retried before the first token, by cause", ("cause",),
            registry=registry,
        )
        self.active = Gauge("bot_active_generations", "Generations streaming now", registry=registry)
        self.holds = Gauge("bot_holds_outstanding", "Holds placed and not yet settled by this process", registry=registry)
        self.holds_amount = Gauge(
            "bot_holds_outstanding_micro_usd", "Amount held and not yet settled by this process", registry=registry
        )
        self.refused = Counter(
            "bot_refused_total", "Messages not answered, by reason", ("reason",), registry=registry
        )
        self.telegram_retry_after = Counter(
            "bot_telegram_retry_after_total", "Telegram 429 answers met while sending", registry=registry
        )
