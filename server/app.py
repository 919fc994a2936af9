"""The gRPC server factory: services, the error interceptor, standard health and reflection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aura.errors import AuraError
from aura.server.servicer import AdminService, DecisionService, ServerDeps
from aura.v1 import admin_service_pb2, admin_service_pb2_grpc, decision_service_pb2, decision_service_pb2_grpc

log = logging.getLogger(__name__)

DECISION_SERVICE = decision_service_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
MAX_MESSAGE_BYTES = 1 << 20


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps AuraError to its gRPC status and anything unexpected to INTERNAL, without leaking a trace."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except AuraError as exc:
                await context.abort(exc.grpc_code, str(exc))
            except Exception:
                log.exception("unhandled error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; the node logged the details.")

        wrapped = grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        if method.startswith(f"/{DECISION_SERVICE}/") or method.startswith(f"/{ADMIN_SERVICE}/"):
            self._wrapped[method] = wrapped
        return wrapped


async def create_server(address: str, deps: ServerDeps) -> tuple[grpc.aio.Server, int]:
    """Build the aio gRPC server bound to `address` ("host:port", port 0 picks one); return it and its port.

    Call it inside the event loop that will run the server, then `await server.start()`. Health
    reports NOT_SERVING until a bundle is loaded and SERVING after; SO_REUSEPORT lets several processes
    share the port.
    """
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", 4 * MAX_MESSAGE_BYTES),
        ],
    )
    decision_service_pb2_grpc.add_DecisionServiceServicer_to_server(DecisionService(deps), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(deps), server)

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
