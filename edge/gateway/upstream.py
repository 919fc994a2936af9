"""The gateway's connections to the decision server processes, and how calls are spread over them."""

from __future__ import annotations

import grpc

from aura.v1 import decision_service_pb2_grpc as decision_grpc

CHANNEL_OPTIONS = (("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1))


class DecisionConnections:
    """Several connections to the decision server's port; each call goes to one with the fewest calls in flight.

    The decision processes share one port and SO_REUSEPORT balances connections, not calls; with a local
    subchannel pool each channel is its own connection, so with several of them every process is likely to
    hold some. Calls take turns over the connections, skipping one with more calls in flight than the
    least busy, which moves calls away from a process that falls behind instead of queueing them behind it.
    """

    def __init__(self, target: str, count: int) -> None:
        self.channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(count)]
        self._stubs = [decision_grpc.DecisionServiceStub(channel) for channel in self.channels]
        self._in_flight = [0] * count
        self._turn = 0

    async def call(self, method: str, request, timeout: float):
        """Call DecisionService `method` (Rank, Feedback, GetSegments or Search) with `request`."""
        in_flight = self._in_flight
        index = self._turn = (self._turn + 1) % len(in_flight)
        fewest = min(in_flight)
        if in_flight[index] > fewest:
            index = in_flight.index(fewest)
        in_flight[index] += 1
        try:
            return await getattr(self._stubs[index], method)(request, timeout=timeout)
        finally:
            in_flight[index] -= 1

    async def close(self) -> None:
        """Close every connection."""
        for channel in self.channels:
            await channel.close()
