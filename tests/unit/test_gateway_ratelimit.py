"""Per-client token buckets with a fake clock."""

from __future__ import annotations

import pytest

from aura.edge.gateway.ratelimit import RateLimiter
from aura.errors import ConfigError


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    clock.now += 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)


def test_clients_have_separate_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=FakeClock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == 1.0
    assert limiter.acquire("b") == 0.0


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=2, clock=clock)
    limiter.acquire("a")
    clock.now += 3600
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_full_buckets_are_evicted_first_when_the_table_is_full() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock, max_clients=2)
    limiter.acquire("idle")
    clock.now += 5
    limiter.acquire("busy")
    limiter.acquire("new")
    assert limiter.acquire("busy") == 1.0
    assert set(limiter._buckets) == {"busy", "new"}


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0.0, 10, r"AURA_RATE_LIMIT_RPS must be positive, got 0\.0\."),
        (5.0, 0, r"AURA_RATE_LIMIT_BURST must be at least 1, got 0\."),
    ],
)
def test_invalid_limits_are_config_errors(rate: float, burst: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RateLimiter(rate=rate, burst=burst)
