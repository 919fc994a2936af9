"""The HTTP gateway: the seed's JSON API, validated at the boundary and translated to gRPC calls.

Each route handler decodes and validates its JSON body (`convert`), calls the decision server over
persistent HTTP/2 connections (`upstream`, with the lean gRPC client of `grpc_wire`) and encodes the
reply. One middleware answers every error in one shape,
``{"error": {"code": ..., "message": ..., "status": ...}}``, applies the per-client rate limit, sets
`X-Request-ID` and the CORS headers, and records the metrics.

Run it with ``run_gateway(load_settings())``; tests build it with ``create_app(settings, grpc_target=...)``.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import math
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from grpc_health.v1 import health_pb2

from aura.config import Settings
from aura.errors import AuraError, ConfigError, InvalidRequest, Unauthenticated, http_status_for
from aura.eventlog import EventLog, default_node_id
from aura.v1 import admin_service_pb2 as admin_pb
from aura.v1 import decision_service_pb2 as decision_pb

from . import convert
from .grpc_wire import CallError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import GatewayMetrics
from .openapi import build_openapi
from .ratelimit import RateLimiter
from .responses import error_response, json_response
from .upstream import DecisionConnections, ServiceStub

log = logging.getLogger(__name__)

DECISION_TIMEOUT = 2.0
DECISION_CONNECTIONS = 8
ADMIN_TIMEOUT = 60.0  # a refresh may download and verify a whole bundle
HEALTH_TIMEOUT = 1.0

BODY_READ_TIMEOUT = 10.0
"""Seconds a request body may take to arrive, counted from the start of its read; past them the answer is 408 and
the connection closes (aiohttp then drains what still trickles in for at most its lingering time, 10 s)."""
KEEPALIVE_TIMEOUT = 75.0
"""Seconds a connection may wait for its next request. aiohttp counts them from the connection's opening and from
each answer until a complete request head has arrived, so they also bound how long the head of a request may take:
aiohttp has no separate timeout for receiving request headers."""
SHUTDOWN_TIMEOUT = 3.0
"""Seconds the runner's cleanup waits for requests in flight, twice at most (aiohttp waits, cancels the request's
body read, waits again, then cancels the handler): 6 s, within the 10 s the edge node's Supervisor allows between
SIGTERM and SIGKILL (STOP_GRACE_SECONDS + 5), and longer than a decision call may take (DECISION_TIMEOUT)."""

CORS_ALLOW_HEADERS = "Content-Type, Authorization"
CORS_EXPOSE_HEADERS = "X-Request-ID, Retry-After"
CORS_MAX_AGE = "600"

_REQUEST_ID = re.compile(r"[\w.:-]{1,128}")
_ORIGIN = re.compile(r"https?://[^/\s?#]+")
_HEALTH_OK = orjson.dumps({"status": "ok"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GATEWAY_KEY: web.AppKey[Gateway] = web.AppKey("gateway")


def _client_errors_as_info(record: logging.LogRecord) -> bool:
    """Turn aiohttp's log of malformed HTTP it refused with a 4xx into one INFO line without a traceback.

    Such requests are the client's error, and on a public port mostly noise; aiohttp logs each as an ERROR.
    """
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError) and 400 <= error.code < 500:
        reason = error.message.splitlines()[0] if error.message else ""
        record.msg, record.args = f"{record.getMessage()}: {error.code} {reason}", ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = None
    return True


def _bundle_health(status: admin_pb.GetBundleStatusResponse) -> str:
    """The bundle component's status: missing if the answering process serves no bundle, degraded if another
    decision process serves none or the processes serve different versions, else ok.

    A process's last_error alone (say, an unreachable store) leaves it ok: the node still serves its bundle.
    """
    if not status.active_version:
        return "missing"
    versions = {process.active_version for process in status.processes}
    return "degraded" if len(versions) > 1 or "" in versions else "ok"


def _cors_origins(origins: tuple[str, ...]) -> frozenset[str]:
    normalized = set()
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin.rstrip("/")):
            raise ConfigError(
                f"environment: AURA_CORS_ORIGINS entries must be '*' or scheme://host[:port], got {origin!r}."
            )
        normalized.add(origin.rstrip("/").lower())
    return frozenset(normalized)


class Gateway:
    """Route handlers and middleware of one gateway app; the gRPC stubs exist between startup and cleanup."""

    def __init__(self, settings: Settings, grpc_target: str, event_log: EventLog | None) -> None:
        self.settings = settings
        self.grpc_target = grpc_target
        self.metrics = GatewayMetrics()
        self.limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        self.cors_origins = _cors_origins(settings.cors_origins)
        self._cors_any = "*" in self.cors_origins
        self.event_log = event_log
        self._owns_event_log = event_log is None
        self._admin_token = settings.admin_token.encode()
        self._admin_metadata = (("authorization", f"Bearer {settings.admin_token}"),) if settings.admin_token else ()
        self._scrub = settings.pii_scrubbing == "enabled"
        self._openapi = orjson.dumps(build_openapi())
        self._id_prefix = f"gw_{os.urandom(4).hex()}_"
        self._id_counter = itertools.count(1)
        self._methods: dict[str, str] = {}
        self.connections: DecisionConnections | None = None
        self.decisions: ServiceStub
        self.admin: ServiceStub
        self.health: ServiceStub

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path, handler) of every route; admin handlers check the bearer token first."""
        admin = self._admin_only
        return [
            ("POST", "/v1/rank", self.rank),
            ("POST", "/v1/feedback", self.feedback),
            ("GET", "/v1/segments/{user_id}", self.segments),
            ("POST", "/v1/search", self.search),
            ("POST", "/v1/events", self.events),
            ("GET", "/health", self.health_live),
            ("GET", "/v1/health/detailed", self.health_detailed),
            ("GET", "/metrics", self.metrics_text),
            ("GET", "/openapi.json", self.openapi),
            ("GET", "/v1/admin/indexer/status", admin(self.indexer_status)),
            ("POST", "/v1/admin/index/refresh", admin(self.index_refresh)),
            ("POST", "/v1/admin/segments/retrain", admin(self.segments_retrain)),
            ("GET", "/v1/admin/bundles", admin(self.bundles)),
            ("POST", "/v1/admin/bundles/{version}/activate", admin(self.bundle_activate)),
            ("POST", "/v1/admin/bundles/rollback", admin(self.bundle_rollback)),
            ("DELETE", "/v1/admin/users/{user_id}", admin(self.user_erase)),
        ]

    def install(self, app: web.Application) -> None:
        """Register the routes, a CORS preflight handler per path, and the startup and cleanup hooks."""
        by_path: dict[str, list[tuple[str, Handler]]] = {}
        for method, path, handler in self.routes():
            by_path.setdefault(path, []).append((method, handler))
        for path, handlers in by_path.items():
            resource = app.router.add_resource(path)
            methods = []
            for method, handler in handlers:
                resource.add_route(method, handler)
                methods.append(method)
                if method == "GET":  # HTTP semantics: HEAD answers as GET without the body
                    resource.add_route("HEAD", handler)
                    methods.append("HEAD")
            resource.add_route("OPTIONS", self.preflight)
            self._methods[path] = ", ".join(methods)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)

    async def start(self, app: web.Application) -> None:
        """Set up the connections to the decision server (and the event log, unless one was given)."""
        self.connections = DecisionConnections(self.grpc_target, DECISION_CONNECTIONS)
        self.decisions = ServiceStub(self.connections, decision_pb.DESCRIPTOR.services_by_name["DecisionService"])
        self.admin = ServiceStub(
            self.connections, admin_pb.DESCRIPTOR.services_by_name["AdminService"], self._admin_metadata
        )
        self.health = ServiceStub(self.connections, health_pb2.DESCRIPTOR.services_by_name["Health"])
        if self.event_log is None:
            root = Path(self.settings.state_dir) / "logs"
            self.event_log = await asyncio.to_thread(
                EventLog,
                root,
                "events",
                node_id=default_node_id(),
                flush_interval=self.settings.event_flush_interval,
                batch_size=self.settings.event_batch_size,
            )

    async def stop(self, app: web.Application) -> None:
        """Close the connections and the event log this gateway opened."""
        if self.connections is not None:
            self.connections.close()
        self.connections = None
        if self._owns_event_log and self.event_log is not None:
            await asyncio.to_thread(self.event_log.close)
            self.event_log = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Rate limit, error mapping, X-Request-ID, CORS and metrics around every handler."""
        start = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if route.startswith("/v1/") and request.method != "OPTIONS":
            wait = self.limiter.acquire(request.remote or "")
        else:
            wait = 0.0
        if wait:
            self.metrics.rate_limited()
            response: web.StreamResponse = error_response(
                429, f"Rate limit exceeded: at most {self.settings.rate_limit_rps:g} requests a second per client."
            )
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        else:
            response = await self._answer(request, handler)
        headers = response.headers
        if "X-Request-ID" not in headers:
            incoming = request.headers.get("X-Request-ID")
            if incoming is None or not _REQUEST_ID.fullmatch(incoming):
                incoming = f"{self._id_prefix}{next(self._id_counter):x}"
            headers["X-Request-ID"] = incoming
        if self.cors_origins:
            origin = request.headers.get("Origin")
            if origin is not None and self._origin_allowed(origin):
                headers["Access-Control-Allow-Origin"] = "*" if self._cors_any else origin
                headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
            if not self._cors_any:
                headers["Vary"] = "Origin"
        self.metrics.observe(route, response.status, time.perf_counter() - start)
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run the handler and turn every failure into the gateway's error shape."""
        try:
            return await handler(request)
        except AuraError as exc:
            response = error_response(exc.http_status, str(exc))
            if exc.http_status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="aura-admin"'
            return response
        except CallError as exc:
            return self._upstream_error(exc)
        except web.HTTPException as exc:
            response = error_response(exc.status, self._http_error_message(request, exc))
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            if exc.status == 408:  # the rest of a slow body is not worth waiting for on this connection
                response.force_close()
            return response
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, request.path)
            return error_response(500, "Internal error in the gateway.")

    def _http_error_message(self, request: web.Request, exc: web.HTTPException) -> str:
        if exc.status == 404:
            return f"No route matches {request.method} {request.path}."
        if exc.status == 405:
            return f"{request.method} is not allowed on {request.path}; allowed: {exc.headers.get('Allow', '')}."
        if exc.status == 413:
            return f"The request body exceeds the limit of {self.settings.max_body_bytes} bytes."
        return exc.text or exc.reason

    def _upstream_error(self, exc: CallError) -> web.Response:
        """Map a failed gRPC call to HTTP: the server's message passes through, internal details do not."""
        code = exc.code()
        self.metrics.upstream_error(code.name)
        status = http_status_for(code)
        if status == 500:
            log.warning("decision server failed: %s: %s", code.name, exc.details())
            return error_response(500, "Internal error in the decision server.")
        if exc.unreachable:
            return error_response(503, "The decision server is unreachable; retry later.")
        return error_response(status, exc.details() or code.name.replace("_", " ").capitalize() + ".")

    def _origin_allowed(self, origin: str) -> bool:
        return self._cors_any or origin.lower() in self.cors_origins

    def _admin_only(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self._authorize(request)
            return await handler(request)

        return guarded

    def _authorize(self, request: web.Request) -> None:
        if not self._admin_token:
            raise Unauthenticated("The admin API is disabled: set AURA_ADMIN_TOKEN to enable it.")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("The admin API needs an 'Authorization: Bearer <token>' header.")
        # aiohttp decodes header bytes that are not UTF-8 into surrogates; such a token matches nothing.
        if not hmac.compare_digest(token.strip().encode(errors="surrogatepass"), self._admin_token):
            raise Unauthenticated("The admin token is not valid.")

    async def _json(self, request: web.Request, *, optional: bool = False) -> Any:
        """The decoded JSON body; None for an empty body when `optional`."""
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=self.settings.max_body_bytes, actual_size=length)
        try:
            async with asyncio.timeout(BODY_READ_TIMEOUT):
                raw = await request.read()
        except TimeoutError:
            log.info("request body of %s %s too slow: 408", request.method, request.path)
            raise web.HTTPRequestTimeout(
                text=f"The request body did not arrive within {BODY_READ_TIMEOUT:g} s."
            ) from None
        except web.RequestPayloadError as exc:
            # aiohttp keeps the parser's own error, such as "Can not decode content-encoding: gzip", as the cause.
            reason = getattr(exc.__cause__, "message", "") or "it is truncated or badly encoded"
            raise InvalidRequest(f"The request body cannot be read: {reason}.") from None
        except ConnectionError:
            # aiohttp fails the body read with ConnectionResetError("Connection lost") when the client closes the
            # connection mid-body: the client's doing, answered (to nobody) and counted as a 400.
            log.info("client closed the connection during the request body of %s %s", request.method, request.path)
            expected = "Content-Length bytes" if length is not None else "its last chunk"
            raise InvalidRequest(f"The request body was cut off before {expected} arrived.") from None
        if not raw:
            if optional:
                return None
            raise InvalidRequest("The request body is empty; expected a JSON object.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None

    async def preflight(self, request: web.Request) -> web.Response:
        """Answer a CORS preflight for an allowed origin with the path's methods and allowed headers."""
        origin = request.headers.get("Origin")
        if origin is None or "Access-Control-Request-Method" not in request.headers:
            raise InvalidRequest(
                "OPTIONS is answered only as a CORS preflight (Origin, Access-Control-Request-Method)."
            )
        if not self._origin_allowed(origin):
            raise web.HTTPForbidden(text=f"Origin {origin} is not allowed to call this API.")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": self._methods[request.match_info.route.resource.canonical],
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE,
            },
        )

    async def rank(self, request: web.Request) -> web.Response:
        """POST /v1/rank."""
        message = convert.rank_request_from_json(await self._json(request))
        reply = await self.decisions.call("Rank", message, DECISION_TIMEOUT)
        response = json_response(convert.rank_response_to_json(reply))
        response.headers["X-Request-ID"] = reply.request_id
        return response

    async def feedback(self, request: web.Request) -> web.Response:
        """POST /v1/feedback."""
        message = convert.feedback_request_from_json(await self._json(request))
        reply = await self.decisions.call("Feedback", message, DECISION_TIMEOUT)
        return json_response(convert.feedback_response_to_json(reply))

    async def segments(self, request: web.Request) -> web.Response:
        """GET /v1/segments/{user_id}."""
        user_id = convert.path_id(request.match_info["user_id"], "user_id")
        reply = await self.decisions.call(
            "GetSegments", decision_pb.GetSegmentsRequest(user_id=user_id), DECISION_TIMEOUT
        )
        return json_response(convert.segments_response_to_json(reply))

    async def search(self, request: web.Request) -> web.Response:
        """POST /v1/search."""
        message = convert.search_request_from_json(await self._json(request))
        reply = await self.decisions.call("Search", message, DECISION_TIMEOUT)
        return json_response(convert.search_response_to_json(reply))

    async def events(self, request: web.Request) -> web.Response:
        """POST /v1/events: validate, scrub and durably log a batch of SDK events; 202 once on disk."""
        records = convert.events_from_json(
            await self._json(request), received_at_ms=int(time.time() * 1000), scrub=self._scrub
        )
        # A failed write raises LogUnavailable: 503, and nothing of the batch is acknowledged.
        await self.event_log.append_durable([self.event_log.record(**record) for record in records])
        return json_response({"accepted": len(records)}, status=202)

    async def health_live(self, request: web.Request) -> web.Response:
        """GET /health: the gateway process answers."""
        return web.Response(body=_HEALTH_OK, content_type="application/json")

    async def health_detailed(self, request: web.Request) -> web.Response:
        """GET /v1/health/detailed: gateway, decision server and serving bundle; 503 unless all serve."""
        health, bundle = await asyncio.gather(
            self.health.call("Check", health_pb2.HealthCheckRequest(service=""), HEALTH_TIMEOUT),
            self.admin.call("GetBundleStatus", admin_pb.GetBundleStatusRequest(), HEALTH_TIMEOUT),
            return_exceptions=True,
        )
        if isinstance(health, CallError):
            message = f"The decision server did not answer the health check ({health.code().name})."
            server = {"status": "unreachable", "serving_status": "UNKNOWN", "message": message}
        elif isinstance(health, BaseException):
            raise health
        else:
            serving = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
            server = {
                "status": "ok" if serving == "SERVING" else "not_serving",
                "serving_status": serving,
                "message": "",
            }
        if isinstance(bundle, CallError):
            bundle_part = {
                "status": "unknown",
                "version": "",
                "age_seconds": 0.0,
                "loaded_at": "",
                "last_error": bundle.details() or bundle.code().name,
                "processes": [],
            }
        elif isinstance(bundle, BaseException):
            raise bundle
        else:
            bundle_part = {
                "status": _bundle_health(bundle),
                "version": bundle.active_version,
                "age_seconds": bundle.age_seconds,
                "loaded_at": bundle.loaded_at,
                "last_error": bundle.last_error,
                "processes": [convert.admin_response_to_json(process) for process in bundle.processes],
            }
        serving_all = server["status"] == "ok" and bundle_part["status"] == "ok"
        body = {
            "status": "ok" if serving_all else "degraded",
            "components": {"gateway": {"status": "ok"}, "decision_server": server, "bundle": bundle_part},
        }
        return json_response(body, 200 if serving_all else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        """GET /metrics in the Prometheus text format."""
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        """GET /openapi.json."""
        return web.Response(body=self._openapi, content_type="application/json")

    async def _admin_call(self, method: str, message: Any, status: int = 200) -> web.Response:
        reply = await self.admin.call(method, message, ADMIN_TIMEOUT)
        return json_response(convert.admin_response_to_json(reply), status)

    async def indexer_status(self, request: web.Request) -> web.Response:
        """GET /v1/admin/indexer/status."""
        return await self._admin_call("GetIndexerStatus", admin_pb.GetIndexerStatusRequest())

    async def index_refresh(self, request: web.Request) -> web.Response:
        """POST /v1/admin/index/refresh."""
        convert.empty_body(await self._json(request, optional=True))
        return await self._admin_call("RefreshContentIndex", admin_pb.RefreshContentIndexRequest())

    async def segments_retrain(self, request: web.Request) -> web.Response:
        """POST /v1/admin/segments/retrain: 202 with the queued job."""
        message = convert.retrain_request_from_json(await self._json(request, optional=True))
        return await self._admin_call("TriggerRetraining", message, status=202)

    async def bundles(self, request: web.Request) -> web.Response:
        """GET /v1/admin/bundles."""
        return await self._admin_call("GetBundleStatus", admin_pb.GetBundleStatusRequest())

    async def bundle_activate(self, request: web.Request) -> web.Response:
        """POST /v1/admin/bundles/{version}/activate."""
        convert.empty_body(await self._json(request, optional=True))
        version = convert.path_id(request.match_info["version"], "version")
        return await self._admin_call("ActivateBundle", admin_pb.ActivateBundleRequest(version=version))

    async def bundle_rollback(self, request: web.Request) -> web.Response:
        """POST /v1/admin/bundles/rollback."""
        convert.empty_body(await self._json(request, optional=True))
        return await self._admin_call("RollbackBundle", admin_pb.RollbackBundleRequest())

    async def user_erase(self, request: web.Request) -> web.Response:
        """DELETE /v1/admin/users/{user_id}."""
        user_id = convert.path_id(request.match_info["user_id"], "user_id")
        return await self._admin_call("EraseUser", admin_pb.EraseUserRequest(user_id=user_id))


def create_app(
    settings: Settings, *, grpc_target: str | None = None, event_log: EventLog | None = None
) -> web.Application:
    """Build the gateway app for the decision server at `grpc_target` (default `settings.grpc_address`).

    `event_log` is where /v1/events appends; by default the app opens the `events` stream under
    `<state_dir>/logs` (beside the decision logs) on startup and closes it on cleanup.
    """
    logging.getLogger("aiohttp.server").addFilter(_client_errors_as_info)
    gateway = Gateway(settings, grpc_target or settings.grpc_address, event_log)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[gateway.middleware])
    app[GATEWAY_KEY] = gateway
    gateway.install(app)
    return app


async def start_gateway(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (port 0 picks a free one) with SO_REUSEPORT; return the runner and bound port.

    Idle connections close after KEEPALIVE_TIMEOUT; cleanup waits at most SHUTDOWN_TIMEOUT (twice) for requests.
    """
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=True, backlog=1024)
    await site.start()
    return runner, runner.addresses[0][1]


def run_gateway(settings: Settings, *, grpc_target: str | None = None) -> None:
    """Run the gateway on settings.api_host:api_port until SIGINT or SIGTERM, on a uvloop event loop."""

    async def serve() -> None:
        runner, port = await start_gateway(
            create_app(settings, grpc_target=grpc_target), settings.api_host, settings.api_port
        )
        log.info("gateway listening on %s:%d", settings.api_host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    uvloop.run(serve())
