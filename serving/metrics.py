"""The service's Prometheus metrics, in a registry of its own (one per app, so tests and several
apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest


class Metrics:
    def __init__(self, recommender):
        self.registry = CollectorRegistry()
        self.requests = Counter("g2rec_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("g2rec_request_seconds", "HTTP request latency (seconds)", ["endpoint"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.fallbacks = Counter("g2rec_fallbacks", "users answered by the popularity fallback", registry=self.registry)
        self.unknown_items = Counter("g2rec_unknown_items", "history items not in the catalogue, ignored",
                                     registry=self.registry)
        self.swaps = Counter("g2rec_model_swaps", "models swapped in while serving", registry=self.registry)
        self.model = Info("g2rec_model", "the model being served", registry=self.registry)
        self.model.info({"version": recommender.version, "items": str(recommender.n_items)})

    def set_model(self, recommender) -> None:
        """After a swap: the new model's info (`recommender` is a serving.recommender.Recommender)."""
        self.swaps.inc()
        self.model.info({"version": recommender.version, "items": str(recommender.n_items)})

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
