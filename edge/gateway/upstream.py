"""The gateway's connections to the decision server processes, and how calls are spread over them."""

from __future__ import annotations

import random
import time

import grpc

from aura.v1 import decision_service_pb2_grpc as decision_grpc

CHANNEL_OPTIONS = (("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1))
LATENCY_SMOOTHING = 0.1
"""Weight of the newest call in a connection's moving average of latency."""
FAILED_CALL_SECONDS = 1.0
"""The latency a call counts for when its connection is unavailable or timed out, so calls move away from it."""
CONNECTION_TROUBLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class DecisionConnections:
    """Several connections to the decision server's port; each call goes to the less loaded of two at random.

    The decision processes share one port and SO_REUSEPORT spreads connections over them by a hash, not
    calls: with 8 connections one process often holds 5 or 6 of them. Each call therefore picks two
    connections at random and takes the one whose calls in flight times average latency is lower (the
    "power of two choices" over a moving average): a process that is busier answers more slowly, and calls
    move to the connections of the other.
    """

    def __init__(self, target: str, count: int) -> None:
        if count < 2:
            raise ValueError("DecisionConnections needs at least 2 connections.")
        self.channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(count)]
        self._stubs = [decision_grpc.DecisionServiceStub(channel) for channel in self.channels]
        self._in_flight = [0] * count
        self._latency = [0.0] * count
        self._random = random.Random()

    def _pick(self) -> int:
        n = len(self._in_flight)
        first = self._random.randrange(n)
        second = (first + 1 + self._random.randrange(n - 1)) % n
        in_flight, latency = self._in_flight, self._latency
        return first if (in_flight[first] + 1) * latency[first] <= (in_flight[second] + 1) * latency[second] else second

    async def call(self, method: str, request, timeout: float):
        """Call DecisionService `method` (Rank, Feedback, GetSegments or Search) with `request`."""
        index = self._pick()
        self._in_flight[index] += 1
        started = time.perf_counter()
        elapsed = None
        try:
            return await getattr(self._stubs[index], method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in CONNECTION_TROUBLE:
                elapsed = FAILED_CALL_SECONDS
            raise
        finally:
            self._in_flight[index] -= 1
            if elapsed is None:
                elapsed = time.perf_counter() - started
            self._latency[index] += LATENCY_SMOOTHING * (elapsed - self._latency[index])

    async def close(self) -> None:
        """Close every connection."""
        for channel in self.channels:
            await channel.close()
