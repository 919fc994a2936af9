"""The gateway's lean gRPC client against a real grpc.aio server on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from aura.edge.gateway.grpc_wire import CallError, Channel
from tests.conftest import free_port

SERVICE = "test.Wire"
Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def metadata(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return repr(sorted((key, value) for key, value in context.invocation_metadata() if key == "authorization")).encode()


async def fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no item 'x%y' here: ünïcode")


async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return b"late"


HANDLERS: dict[str, Handler] = {"Echo": echo, "Metadata": metadata, "Fail": fail, "Sleep": sleep}


@contextlib.asynccontextmanager
async def wire_server(port: int, name: str = "") -> AsyncIterator[grpc.aio.Server]:
    """A server of HANDLERS on 127.0.0.1:`port` (shared with other servers by SO_REUSEPORT); Who answers `name`."""

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return name.encode()

    server = grpc.aio.server(options=(("grpc.so_reuseport", 1),))
    handlers = {method: grpc.unary_unary_rpc_method_handler(handler) for method, handler in HANDLERS.items()}
    handlers["Who"] = grpc.unary_unary_rpc_method_handler(who)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


def run_with_server(test: Callable[[Channel, int], Awaitable[None]]) -> None:
    async def main() -> None:
        port = free_port()
        async with wire_server(port):
            channel = Channel("127.0.0.1", port)
            try:
                await test(channel, port)
            finally:
                channel.close()

    asyncio.run(main())


def test_replies_of_every_size_arrive_whole_also_past_the_flow_control_windows() -> None:
    async def test(channel: Channel, port: int) -> None:
        for size in (0, 1, 16_384, 16_385, 70_000, 3_000_000):
            message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            assert await channel.call(f"/{SERVICE}/Echo", message, 10.0) == message

    run_with_server(test)


def test_concurrent_calls_share_one_connection_and_each_gets_its_own_reply() -> None:
    async def test(channel: Channel, port: int) -> None:
        messages = [f"call {i}".encode() * (i + 1) for i in range(200)]
        replies = await asyncio.gather(*(channel.call(f"/{SERVICE}/Echo", m, 10.0) for m in messages))
        assert replies == messages

    run_with_server(test)


def test_metadata_reaches_the_server() -> None:
    async def test(channel: Channel, port: int) -> None:
        long_token = "Bearer " + "t" * 300  # longer than a one-byte HPACK length
        reply = await channel.call(f"/{SERVICE}/Metadata", b"", 5.0, [("Authorization", long_token)])
        assert reply == repr([("authorization", long_token)]).encode()

    run_with_server(test)


def test_a_status_and_its_percent_encoded_message_come_back_as_call_error() -> None:
    async def test(channel: Channel, port: int) -> None:
        with pytest.raises(CallError) as raised:
            await channel.call(f"/{SERVICE}/Fail", b"", 5.0)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert raised.value.details() == "no item 'x%y' here: ünïcode"
        assert not raised.value.unreachable
        with pytest.raises(CallError) as raised:
            await channel.call(f"/{SERVICE}/Missing", b"", 5.0)
        assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert await channel.call(f"/{SERVICE}/Echo", b"still fine", 5.0) == b"still fine"

    run_with_server(test)


def test_a_deadline_fails_the_call_and_resets_only_its_stream() -> None:
    async def test(channel: Channel, port: int) -> None:
        slow = asyncio.ensure_future(channel.call(f"/{SERVICE}/Sleep", b"5", 0.2))
        assert await channel.call(f"/{SERVICE}/Echo", b"quick", 5.0) == b"quick"
        with pytest.raises(CallError) as raised:
            await slow
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert await channel.call(f"/{SERVICE}/Sleep", b"0.01", 5.0) == b"late"

    run_with_server(test)


def test_a_cancelled_caller_leaves_the_connection_usable() -> None:
    async def test(channel: Channel, port: int) -> None:
        slow = asyncio.ensure_future(channel.call(f"/{SERVICE}/Sleep", b"5", 10.0))
        await asyncio.sleep(0.1)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await channel.call(f"/{SERVICE}/Echo", b"after", 5.0) == b"after"

    run_with_server(test)


def test_no_server_is_unavailable_and_unreachable_then_a_started_server_is_found() -> None:
    async def main() -> None:
        port = free_port()
        channel = Channel("127.0.0.1", port)
        with pytest.raises(CallError) as raised:
            await channel.call(f"/{SERVICE}/Echo", b"", 2.0)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert raised.value.unreachable
        async with wire_server(port):
            assert await channel.call(f"/{SERVICE}/Echo", b"up", 5.0) == b"up"
        with pytest.raises(CallError) as raised:  # the server stopped: its connection is gone
            await channel.call(f"/{SERVICE}/Echo", b"", 2.0)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        async with wire_server(port):  # and the next call reconnects
            assert await channel.call(f"/{SERVICE}/Echo", b"again", 5.0) == b"again"
        channel.close()

    asyncio.run(main())


def test_calls_in_flight_fail_unavailable_when_the_server_goes_away() -> None:
    async def main() -> None:
        port = free_port()
        channel = Channel("127.0.0.1", port)
        async with wire_server(port) as server:
            slow = asyncio.ensure_future(channel.call(f"/{SERVICE}/Sleep", b"5", 10.0))
            await asyncio.sleep(0.2)
            await server.stop(0)
            with pytest.raises(CallError) as raised:
                await slow
        assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        channel.close()

    asyncio.run(main())


def test_a_graceful_stop_goaway_lets_the_call_in_flight_finish_and_the_next_call_reconnects() -> None:
    async def main() -> None:
        port = free_port()
        channel = Channel("127.0.0.1", port)
        async with wire_server(port) as server:
            slow = asyncio.ensure_future(channel.call(f"/{SERVICE}/Sleep", b"0.5", 10.0))
            await asyncio.sleep(0.2)
            await server.stop(5.0)
            assert await slow == b"late"
        async with wire_server(port):
            assert await channel.call(f"/{SERVICE}/Echo", b"new", 5.0) == b"new"
        channel.close()

    asyncio.run(main())


def test_renewed_connections_reach_a_server_that_joined_the_port_later() -> None:
    async def main() -> None:
        port = free_port()
        async with wire_server(port, "first"):
            channel = Channel("127.0.0.1", port, max_age=0.05)
            assert await channel.call(f"/{SERVICE}/Who", b"", 5.0) == b"first"
            async with wire_server(port, "second"):
                answers = set()
                for _ in range(20):  # SO_REUSEPORT hashes each new connection: both servers get some
                    await asyncio.sleep(0.06)
                    answers.add(await channel.call(f"/{SERVICE}/Who", b"", 5.0))
                channel.close()
        assert answers == {b"first", b"second"}

    asyncio.run(main())


def test_a_retired_connection_answers_its_calls_in_flight_and_then_closes() -> None:
    async def main() -> None:
        port = free_port()
        async with wire_server(port):
            channel = Channel("127.0.0.1", port, max_age=0.2)
            slow = asyncio.ensure_future(channel.call(f"/{SERVICE}/Sleep", b"0.6", 5.0))
            await asyncio.sleep(0.3)
            old = channel._connection
            assert await channel.call(f"/{SERVICE}/Echo", b"new", 5.0) == b"new"
            assert channel._connection is not old
            assert await slow == b"late"
            await asyncio.sleep(0.1)
            assert old is not None and old._transport is None  # closed once its last call was answered
            channel.close()

    asyncio.run(main())
