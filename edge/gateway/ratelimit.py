"""Per-client token buckets: `rate` tokens a second refill a bucket of `burst` tokens; a request takes one."""

from __future__ import annotations

import time
from collections.abc import Callable

from aura.errors import ConfigError


class RateLimiter:
    """Token-bucket rate limiter keyed by client address.

    >>> clock = iter([0.0, 0.0, 0.0]).__next__
    >>> limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    >>> [limiter.acquire("10.0.0.1") for _ in range(3)]
    [0.0, 0.0, 1.0]
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        if rate <= 0:
            raise ConfigError(f"environment: AURA_RATE_LIMIT_RPS must be positive, got {rate}.")
        if burst < 1:
            raise ConfigError(f"environment: AURA_RATE_LIMIT_BURST must be at least 1, got {burst}.")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, list[float]] = {}

    def acquire(self, client: str) -> float:
        """Take a token for `client`; return 0.0 if granted, else the seconds until a token is available."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self._evict_full(now)
            self._buckets[client] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _evict_full(self, now: float) -> None:
        """Forget clients whose bucket has refilled (they lose nothing), or all of them if none has."""
        refill = self.burst / self.rate
        idle = [client for client, (_, last) in self._buckets.items() if now - last >= refill]
        for client in idle or list(self._buckets):
            del self._buckets[client]
