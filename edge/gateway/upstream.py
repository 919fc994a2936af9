"""The gateway's connections to the decision server processes, how calls are spread over them, and the stubs."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aura.config import parse_host_port

from .grpc_wire import CallError, Channel

LATENCY_SMOOTHING = 0.1
"""Weight of the newest call in a connection's moving average of latency."""
FAILED_CALL_SECONDS = 1.0
"""The latency a call counts for when its connection is unavailable or timed out, so calls move away from it."""
CONNECTION_TROUBLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CONNECTION_MAX_AGE_SECONDS = 30.0
"""How long a connection takes new calls: renewing them spreads them again over the processes sharing the port."""


class DecisionConnections:
    """Several connections to the decision server's port; each call goes to the less loaded of two at random.

    The decision processes share one port and SO_REUSEPORT spreads connections over them by a hash, not
    calls: with 8 connections one process often holds 5 or 6 of them. Each call therefore picks two
    connections at random and takes the one whose calls in flight times average latency is lower (the
    "power of two choices" over a moving average): a process that is busier answers more slowly, and calls
    move to the connections of the other. Each connection is renewed after CONNECTION_MAX_AGE_SECONDS, so a
    process that joined the port later (a restarted one) gets connections too.
    """

    def __init__(self, target: str, count: int) -> None:
        if count < 2:
            raise ValueError("DecisionConnections needs at least 2 connections.")
        host, port = parse_host_port(target)
        self.channels = [Channel(host, port, CONNECTION_MAX_AGE_SECONDS) for _ in range(count)]
        self._in_flight = [0] * count
        self._latency = [0.0] * count
        self._random = random.Random()

    def _pick(self) -> int:
        n = len(self._in_flight)
        first = self._random.randrange(n)
        second = (first + 1 + self._random.randrange(n - 1)) % n
        in_flight, latency = self._in_flight, self._latency
        return first if (in_flight[first] + 1) * latency[first] <= (in_flight[second] + 1) * latency[second] else second

    async def call(self, path: str, request: bytes, timeout: float, metadata: Sequence[tuple[str, str]] = ()) -> bytes:
        """Call the unary method `path` with the serialized `request`; return the serialized reply."""
        index = self._pick()
        self._in_flight[index] += 1
        started = time.perf_counter()
        elapsed = None
        try:
            return await self.channels[index].call(path, request, timeout, metadata)
        except CallError as exc:
            if exc.code() in CONNECTION_TROUBLE:
                elapsed = FAILED_CALL_SECONDS
            raise
        finally:
            self._in_flight[index] -= 1
            if elapsed is None:
                elapsed = time.perf_counter() - started
            self._latency[index] += LATENCY_SMOOTHING * (elapsed - self._latency[index])

    def close(self) -> None:
        """Close every connection."""
        for channel in self.channels:
            channel.close()


class ServiceStub:
    """The unary methods of one gRPC service, called by name with protobuf messages over DecisionConnections."""

    def __init__(
        self, connections: DecisionConnections, service: ServiceDescriptor, metadata: Sequence[tuple[str, str]] = ()
    ) -> None:
        self._connections = connections
        self._metadata = tuple(metadata)
        self._methods = {
            method.name: (f"/{service.full_name}/{method.name}", GetMessageClass(method.output_type))
            for method in service.methods
        }

    async def call(self, method: str, request: Message, timeout: float) -> Any:
        """Call `method` with `request`; return the parsed reply or raise CallError."""
        path, reply_type = self._methods[method]
        reply = await self._connections.call(path, request.SerializeToString(), timeout, self._metadata)
        return reply_type.FromString(reply)
