"""The gRPC server factory: services with their error mapping, standard health and reflection."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aura.errors import AuraError, InvalidRequest
from aura.server.servicer import AdminService, DecisionService, ServerDeps
from aura.v1 import admin_service_pb2, decision_service_pb2

log = logging.getLogger(__name__)

DECISION_DESCRIPTOR = decision_service_pb2.DESCRIPTOR.services_by_name["DecisionService"]
ADMIN_DESCRIPTOR = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]
DECISION_SERVICE = DECISION_DESCRIPTOR.full_name
ADMIN_SERVICE = ADMIN_DESCRIPTOR.full_name
MAX_MESSAGE_BYTES = 1 << 20


def guarded(
    method: Callable[[Any, Any], Awaitable[Any]], name: str, request_type: type[Message] | None = None
) -> Callable[[Any, Any], Awaitable[Any]]:
    """Wrap an RPC method so AuraError becomes its gRPC status and anything unexpected INTERNAL, without a trace.

    With `request_type`, the wrapper takes the request's wire bytes and parses them itself, so bytes that are
    not such a message get INVALID_ARGUMENT (gRPC's own deserializer would answer UNKNOWN with its trace).
    A method that is not a coroutine function is called without a coroutine of its own (Rank: it never waits).
    """
    asynchronous = inspect.iscoroutinefunction(method)

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if request_type is not None:
                try:
                    request = request_type.FromString(request)
                except DecodeError:
                    raise InvalidRequest(f"The request is not a valid {request_type.DESCRIPTOR.full_name}.") from None
            return await method(request, context) if asynchronous else method(request, context)
        except AuraError as exc:
            await context.abort(exc.grpc_code, str(exc))
        except Exception:
            log.exception("unhandled error in %s", name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the node logged the details.")

    return call


def service_handler(
    service: ServiceDescriptor, servicer: object, raw_methods: frozenset[str] = frozenset()
) -> grpc.GenericRpcHandler:
    """The guarded unary handlers of every method of `service`; methods in `raw_methods` take and return wire bytes."""
    handlers = {}
    for method in service.methods:
        raw = method.name in raw_methods
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            guarded(
                getattr(servicer, method.name),
                method.full_name,
                request_type=None if raw else GetMessageClass(method.input_type),
            ),
            response_serializer=None if raw else GetMessageClass(method.output_type).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


async def create_server(address: str, deps: ServerDeps) -> tuple[grpc.aio.Server, int]:
    """Build the aio gRPC server bound to `address` ("host:port", port 0 picks one); return it and its port.

    Call it inside the event loop that will run the server, then `await server.start()`. Health
    reports NOT_SERVING until a bundle is loaded and SERVING after; SO_REUSEPORT lets several processes
    share the port.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        ],
    )
    server.add_generic_rpc_handlers(
        (
            service_handler(DECISION_DESCRIPTOR, DecisionService(deps), raw_methods=frozenset({"Rank"})),
            service_handler(ADMIN_DESCRIPTOR, AdminService(deps)),
        )
    )

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    loop = asyncio.get_running_loop()

    async def set_health(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", DECISION_SERVICE, ADMIN_SERVICE):
            await health_servicer.set(name, status)

    await set_health(deps.holder.current is not None)
    # Swaps happen on the bundle sync thread; health belongs to the server's loop.
    deps.holder.on_swap(lambda _serving: loop.call_soon_threadsafe(lambda: loop.create_task(set_health(True))))
    reflection.enable_server_reflection(
        (DECISION_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}.")
    return server, port
