"""Prometheus metrics of one gateway app, in its own registry so apps (and tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    """Request counts by route and status, latency by route, upstream gRPC errors, rate-limited requests."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "aura_gateway_requests",
            "HTTP requests answered, by route template and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "aura_gateway_request_duration_seconds",
            "Time from receiving an HTTP request to returning its response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._upstream_errors = Counter(
            "aura_gateway_upstream_errors",
            "gRPC calls to the decision server that failed, by gRPC status code.",
            ["code"],
            registry=self.registry,
        )
        self._rate_limited = Counter(
            "aura_gateway_rate_limited",
            "Requests refused with 429 by the gateway's per-client rate limit.",
            registry=self.registry,
        )
        # Children are cached because `labels()` takes a lock and builds a key on every call.
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and record its latency."""
        counter = self._request_children.get((route, status))
        if counter is None:
            counter = self._request_children[(route, status)] = self._requests.labels(route, str(status))
        counter.inc()
        histogram = self._latency_children.get(route)
        if histogram is None:
            histogram = self._latency_children[route] = self._latency.labels(route)
        histogram.observe(seconds)

    def upstream_error(self, code_name: str) -> None:
        """Count one failed gRPC call."""
        self._upstream_errors.labels(code_name).inc()

    def rate_limited(self) -> None:
        """Count one request refused by the rate limit."""
        self._rate_limited.inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
