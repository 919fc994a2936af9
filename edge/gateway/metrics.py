"""Prometheus metrics of one gateway app: plain counters on the hot path, rendered only when scraped.

Each app has its own registry, so apps (and tests) never share counters. Counting a request is a few
dict and list updates (no locks: the gateway is one event loop); the scrape builds the metric families.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BUCKET_LABELS = [repr(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]


class _RouteLatency:
    """One route's latency histogram: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class GatewayMetrics(Collector):
    """Request counts by route and status, latency by route, upstream gRPC errors, rate-limited requests."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, _RouteLatency] = {}
        self._upstream_errors: dict[str, int] = {}
        self._rate_limited = 0
        self.registry.register(self)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and record its latency."""
        key = (route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = _RouteLatency()
        latency.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total += seconds

    def upstream_error(self, code_name: str) -> None:
        """Count one failed gRPC call."""
        self._upstream_errors[code_name] = self._upstream_errors.get(code_name, 0) + 1

    def rate_limited(self) -> None:
        """Count one request refused by the rate limit."""
        self._rate_limited += 1

    def collect(self) -> Iterator[Metric]:
        """The metric families, built from the counters (called by the registry on a scrape)."""
        requests = CounterMetricFamily(
            "aura_gateway_requests",
            "HTTP requests answered, by route template and status code.",
            labels=["route", "status"],
        )
        for (route, status), count in self._requests.items():
            requests.add_metric([route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "aura_gateway_request_duration_seconds",
            "Time from receiving an HTTP request to returning its response, by route template.",
            labels=["route"],
        )
        for route, histogram in self._latency.items():
            cumulative, buckets = 0, []
            for label, count in zip(_BUCKET_LABELS, histogram.counts, strict=True):
                cumulative += count
                buckets.append((label, cumulative))
            latency.add_metric([route], buckets, histogram.total)
        yield latency
        errors = CounterMetricFamily(
            "aura_gateway_upstream_errors",
            "gRPC calls to the decision server that failed, by gRPC status code.",
            labels=["code"],
        )
        for code_name, count in self._upstream_errors.items():
            errors.add_metric([code_name], count)
        yield errors
        yield CounterMetricFamily(
            "aura_gateway_rate_limited",
            "Requests refused with 429 by the gateway's per-client rate limit.",
            value=self._rate_limited,
        )

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
