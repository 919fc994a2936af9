"""How the gateway spreads calls over its connections to the decision processes."""

import asyncio
import collections
import contextlib

import grpc
import pytest

from aura.edge.gateway.grpc_wire import CallError
from aura.edge.gateway.upstream import DecisionConnections


class FakeChannel:
    """A connection to a process that answers after `delay` seconds, or fails with `code`."""

    def __init__(self, delay: float, code: grpc.StatusCode | None = None) -> None:
        self.delay, self.code, self.calls = delay, code, 0

    async def call(self, path: str, request: bytes, timeout: float, metadata=()) -> bytes:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.code is not None:
            raise CallError(self.code, "down", unreachable=True)
        return request

    def close(self) -> None:
        pass


async def _drive(stubs: list[FakeChannel], calls: int, concurrency: int = 4) -> None:
    connections = DecisionConnections("127.0.0.1:1", len(stubs))
    connections.channels = stubs
    pending = collections.deque(range(calls))

    async def worker() -> None:
        while pending:
            pending.popleft()
            with contextlib.suppress(CallError):
                await connections.call("/aura.v1.DecisionService/Rank", b"", timeout=1.0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    connections.close()


def test_calls_move_to_the_connections_of_the_faster_process() -> None:
    busy = [FakeChannel(0.004) for _ in range(6)]
    idle = [FakeChannel(0.001) for _ in range(2)]
    asyncio.run(_drive(busy + idle, 600))
    # By connection count the idle process would get a quarter; two random choices give it up to 46%.
    assert sum(stub.calls for stub in idle) > 0.4 * 600


def test_an_unavailable_connection_is_avoided_though_it_fails_fast() -> None:
    down = FakeChannel(0.0, grpc.StatusCode.UNAVAILABLE)
    healthy = [FakeChannel(0.001) for _ in range(3)]
    asyncio.run(_drive([down, *healthy], 400))
    assert down.calls < 0.1 * 400


def test_at_least_two_connections_are_needed() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        DecisionConnections("127.0.0.1:1", 1)
