"""The gateway app through its factory and aiohttp's test client, against a fake gRPC decision server.

The fake server answers every RPC with a canned reply; a request whose key field is ``raise:<CODE>``
makes it fail with that gRPC status instead. Every reply the gateway gives is checked against the
OpenAPI document (status documented, body valid against the schema, X-Request-ID present).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aura.config import Settings
from aura.edge.gateway import convert, create_app
from aura.edge.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from aura.edge.gateway.openapi import build_openapi
from aura.eventlog import RECORD_TYPES, LogUnavailable, read_log
from aura.v1 import admin_service_pb2 as admin_pb
from aura.v1 import admin_service_pb2_grpc as admin_grpc
from aura.v1 import decision_service_pb2 as decision_pb
from aura.v1 import decision_service_pb2_grpc as decision_grpc
from tests.unit.test_gateway_convert import RANK_BODY, RANK_REPLY, SEED_FEEDBACK, SEED_RANK_REQUEST, SEED_SEARCH

ADMIN_TOKEN = "s3cret-token"
ORIGIN = "https://shop.example.com"
DOC = build_openapi()
BUNDLE_STATUS = admin_pb.GetBundleStatusResponse(
    active_version="20260101T000000Z-aaaaaa",
    loaded_at="2026-01-01T00:05:00Z",
    age_seconds=300.0,
    store_version="20260101T000000Z-aaaaaa",
    bundles=[admin_pb.BundleInfo(version="20260101T000000Z-aaaaaa", created_at="2026-01-01T00:00:00Z", active=True)],
    processes=[
        admin_pb.ProcessStatus(pid=pid, active_version="20260101T000000Z-aaaaaa", loaded_at="2026-01-01T00:05:00Z")
        for pid in (101, 102)
    ],
)
EXPLANATION = decision_pb.Explanation(
    removed=[decision_pb.RemovedCandidate(content_id="c5", rule="consent")],
    scores=[decision_pb.ScoreExplanation(content_id="c123", posterior_alpha=3.0, posterior_beta=7.0)],
    segment_source="cold_start",
    exploration_rate=0.08,
)


class FakeBackend:
    """A gRPC server with DecisionService, AdminService and grpc.health.v1 on 127.0.0.1:0."""

    def __init__(self) -> None:
        self.requests: dict[str, Any] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.bundle_status = BUNDLE_STATUS
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.target = ""

    async def start(self) -> str:
        """Start serving; return the target address."""
        self.server = grpc.aio.server()
        decision_grpc.add_DecisionServiceServicer_to_server(_Decision(self), self.server)
        admin_grpc.add_AdminServiceServicer_to_server(_Admin(self), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.target = f"127.0.0.1:{port}"
        return self.target

    async def stop(self) -> None:
        """Stop at once."""
        if self.server is not None:
            await self.server.stop(None)

    async def record(self, method: str, request: Any, context: grpc.aio.ServicerContext, key: str) -> None:
        """Remember the call; abort with the status named by a ``raise:<CODE>`` key."""
        self.requests[method] = request
        self.metadata[method] = {m.key: m.value for m in context.invocation_metadata()}
        if key.startswith("raise:"):
            code = grpc.StatusCode[key.removeprefix("raise:")]
            await context.abort(code, f"server says {code.name}")


class _Decision(decision_grpc.DecisionServiceServicer):
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    async def Rank(self, request, context):
        await self.backend.record("Rank", request, context, request.surface_id)
        reply = decision_pb.RankResponse()
        reply.CopyFrom(RANK_REPLY)
        if request.explain:
            reply.explanation.CopyFrom(EXPLANATION)
        return reply

    async def Feedback(self, request, context):
        await self.backend.record("Feedback", request, context, request.request_id)
        return decision_pb.FeedbackResponse(status="accepted", feedback_id="fb_xyz789")

    async def GetSegments(self, request, context):
        await self.backend.record("GetSegments", request, context, request.user_id)
        return decision_pb.GetSegmentsResponse(
            user_id=request.user_id,
            segments=[
                decision_pb.SegmentAssignment(
                    id="seg_learn_mobile_new",
                    name="Learning-focused Mobile Users (New)",
                    confidence=0.85,
                    features={"intent": "learn", "device_class": "mobile"},
                    assigned_at="2025-10-09T14:25:00Z",
                )
            ],
        )

    async def Search(self, request, context):
        await self.backend.record("Search", request, context, request.query)
        return decision_pb.SearchResponse(
            results=[
                decision_pb.SearchResult(
                    content_id="c456", title="CRO Guide", url="/guides/cro", similarity=0.89, topics=["marketing"]
                )
            ]
        )


class _Admin(admin_grpc.AdminServiceServicer):
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    async def GetBundleStatus(self, request, context):
        await self.backend.record("GetBundleStatus", request, context, "")
        return self.backend.bundle_status

    async def ActivateBundle(self, request, context):
        await self.backend.record("ActivateBundle", request, context, request.version)
        return admin_pb.ActivateBundleResponse(active_version=request.version, previous_version="v1")

    async def RollbackBundle(self, request, context):
        await self.backend.record("RollbackBundle", request, context, "")
        return admin_pb.RollbackBundleResponse(active_version="v1", previous_version="v2")

    async def RefreshContentIndex(self, request, context):
        await self.backend.record("RefreshContentIndex", request, context, "")
        return admin_pb.RefreshContentIndexResponse(active_version="v2", changed=True)

    async def GetIndexerStatus(self, request, context):
        await self.backend.record("GetIndexerStatus", request, context, "")
        return admin_pb.GetIndexerStatusResponse(
            bundle_version="v2", content_items=120, embedding_dim=384, embedding_model="all-MiniLM-L6-v2"
        )

    async def TriggerRetraining(self, request, context):
        await self.backend.record("TriggerRetraining", request, context, request.reason)
        return admin_pb.TriggerRetrainingResponse(job_id="job_1", status="queued")

    async def EraseUser(self, request, context):
        await self.backend.record("EraseUser", request, context, request.user_id)
        return admin_pb.EraseUserResponse(user_id=request.user_id, status="erased", erasure_id="er_1")


_TEMPLATES = [
    (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path) for path in sorted(DOC["paths"], key=len)
]


def assert_documented(method: str, path: str, status: int, headers: Any, body: Any) -> None:
    """Fail unless the reply is documented for the route and its JSON body matches the documented schema."""
    assert headers.get("X-Request-ID"), f"{method} {path} answered without X-Request-ID"
    templates = [template for pattern, template in _TEMPLATES if pattern.match(path)]
    operation = DOC["paths"][templates[0]].get(method.lower()) if templates else None
    if operation is None:
        return
    reply = operation["responses"].get(str(status))
    if reply is None and status >= 400:
        reply = operation["responses"].get("default")
    assert reply is not None, f"{status} is not documented for {method} {templates[0]}"
    if "$ref" in reply:
        reply = DOC["components"]["responses"][reply["$ref"].rsplit("/", 1)[1]]
    schema = reply["content"].get("application/json", {}).get("schema")
    if schema is not None:
        jsonschema.Draft202012Validator({**schema, "components": DOC["components"]}).validate(body)


@dataclass
class Reply:
    """One HTTP exchange's outcome."""

    status: int
    headers: Any
    body: Any

    def error(self) -> dict[str, Any]:
        """The error object of an error body, after checking its shape."""
        assert set(self.body) == {"error"}
        assert self.body["error"]["status"] == self.status
        return self.body["error"]


class GatewayClient:
    """A gateway app behind aiohttp's test client, driven synchronously on the module's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: web.Application) -> None:
        self.loop = loop
        self.client = loop.run_until_complete(self._start(app))

    @staticmethod
    async def _start(app: web.Application) -> TestClient:
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    def call(self, method: str, path: str, body: Any = None, *, data: Any = None, headers: Any = None) -> Reply:
        """Send a request (`body` as JSON, or raw `data`) and return the checked reply."""
        if body is not None:
            data = orjson.dumps(body)
        return self.loop.run_until_complete(self._call(method, path, data, headers or {}))

    async def _call(self, method: str, path: str, data: Any, headers: dict[str, str]) -> Reply:
        async with self.client.request(method, path, data=data, headers=headers) as response:
            raw = await response.read()
            is_json = response.content_type == "application/json"
            reply = Reply(response.status, response.headers, orjson.loads(raw) if is_json else raw.decode())
        assert_documented(method, path, reply.status, reply.headers, reply.body)
        return reply

    def close(self) -> None:
        """Stop the test server and run the app's cleanup."""
        self.loop.run_until_complete(self.client.close())


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for the fake backend and every gateway of the module."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture(scope="module")
def backend(loop: asyncio.AbstractEventLoop) -> Iterator[FakeBackend]:
    """The fake decision server."""
    fake = FakeBackend()
    loop.run_until_complete(fake.start())
    yield fake
    loop.run_until_complete(fake.stop())


def settings_for(state_dir: Path, **overrides: Any) -> Settings:
    """Test settings: generous rate limit, an admin token, one CORS origin, 4 KiB bodies."""
    values: dict[str, Any] = {
        "state_dir": str(state_dir),
        "admin_token": ADMIN_TOKEN,
        "rate_limit_rps": 1e6,
        "rate_limit_burst": 1_000_000,
        "max_body_bytes": 4096,
        "cors_origins": (ORIGIN,),
    }
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="module")
def gateway(
    loop: asyncio.AbstractEventLoop, backend: FakeBackend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayClient]:
    """The default gateway, shared by the module's read-only tests."""
    gw = GatewayClient(loop, create_app(settings_for(tmp_path_factory.mktemp("gw")), grpc_target=backend.target))
    yield gw
    gw.close()


@pytest.fixture
def make_gateway(
    loop: asyncio.AbstractEventLoop, backend: FakeBackend, tmp_path: Path
) -> Iterator[Callable[..., GatewayClient]]:
    """A factory of fresh gateways with settings overrides (and optionally another gRPC target or event log)."""
    made: list[GatewayClient] = []

    def make(grpc_target: str | None = None, event_log: Any = None, **overrides: Any) -> GatewayClient:
        app = create_app(
            settings_for(tmp_path, **overrides), grpc_target=grpc_target or backend.target, event_log=event_log
        )
        made.append(GatewayClient(loop, app))
        return made[-1]

    yield make
    for gw in made:
        gw.close()


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_rank_round_trip_speaks_the_seed_shape(gateway: GatewayClient, backend: FakeBackend) -> None:
    reply = gateway.call("POST", "/v1/rank", SEED_RANK_REQUEST)
    assert reply.status == 200
    assert reply.body == RANK_BODY
    assert reply.headers["X-Request-ID"] == "req_a1b2c3"
    assert reply.headers["Content-Type"] == "application/json"
    assert backend.requests["Rank"] == convert.rank_request_from_json(SEED_RANK_REQUEST)


def test_rank_with_explain_returns_the_explanation(gateway: GatewayClient) -> None:
    reply = gateway.call("POST", "/v1/rank", {**SEED_RANK_REQUEST, "explain": True})
    assert reply.status == 200
    assert reply.body["explanation"] == {
        "removed": [{"content_id": "c5", "rule": "consent"}],
        "scores": [
            {
                "content_id": "c123",
                "posterior_alpha": 3.0,
                "posterior_beta": 7.0,
                "posterior_mean": 0.0,
                "sampled_value": 0.0,
                "freshness_multiplier": 0.0,
            }
        ],
        "segment_source": "cold_start",
        "exploration_rate": 0.08,
    }


def test_feedback_segments_and_search_round_trips(gateway: GatewayClient, backend: FakeBackend) -> None:
    feedback = gateway.call("POST", "/v1/feedback", SEED_FEEDBACK)
    assert (feedback.status, feedback.body) == (200, {"status": "accepted", "feedback_id": "fb_xyz789"})
    assert backend.requests["Feedback"] == convert.feedback_request_from_json(SEED_FEEDBACK)

    segments = gateway.call("GET", "/v1/segments/anon_abc123")
    assert segments.status == 200
    assert segments.body == {
        "user_id": "anon_abc123",
        "segments": [
            {
                "id": "seg_learn_mobile_new",
                "name": "Learning-focused Mobile Users (New)",
                "confidence": 0.85,
                "features": {"intent": "learn", "device_class": "mobile"},
                "assigned_at": "2025-10-09T14:25:00Z",
            }
        ],
    }

    search = gateway.call("POST", "/v1/search", SEED_SEARCH)
    assert search.status == 200
    assert search.body == {
        "results": [
            {
                "content_id": "c456",
                "title": "CRO Guide",
                "url": "/guides/cro",
                "similarity": 0.89,
                "topics": ["marketing"],
                "freshness_score": 0.0,
            }
        ]
    }
    assert backend.requests["Search"] == convert.search_request_from_json(SEED_SEARCH)


GENERIC_500 = "Internal error in the decision server."


@pytest.mark.parametrize(
    ("code", "status", "error_code", "message"),
    [
        ("INVALID_ARGUMENT", 400, "invalid_request", "server says INVALID_ARGUMENT"),
        ("OUT_OF_RANGE", 400, "invalid_request", "server says OUT_OF_RANGE"),
        ("UNAUTHENTICATED", 401, "unauthenticated", "server says UNAUTHENTICATED"),
        ("PERMISSION_DENIED", 403, "permission_denied", "server says PERMISSION_DENIED"),
        ("NOT_FOUND", 404, "not_found", "server says NOT_FOUND"),
        ("ALREADY_EXISTS", 409, "conflict", "server says ALREADY_EXISTS"),
        ("FAILED_PRECONDITION", 409, "conflict", "server says FAILED_PRECONDITION"),
        ("ABORTED", 409, "conflict", "server says ABORTED"),
        ("RESOURCE_EXHAUSTED", 429, "rate_limited", "server says RESOURCE_EXHAUSTED"),
        ("CANCELLED", 499, "cancelled", "server says CANCELLED"),
        ("UNIMPLEMENTED", 501, "not_implemented", "server says UNIMPLEMENTED"),
        ("UNAVAILABLE", 503, "unavailable", "server says UNAVAILABLE"),
        ("DEADLINE_EXCEEDED", 504, "deadline_exceeded", "server says DEADLINE_EXCEEDED"),
        ("INTERNAL", 500, "internal", GENERIC_500),
        ("UNKNOWN", 500, "internal", GENERIC_500),
        ("DATA_LOSS", 500, "internal", GENERIC_500),
    ],
)
def test_grpc_status_maps_to_http(
    gateway: GatewayClient, code: str, status: int, error_code: str, message: str
) -> None:
    reply = gateway.call("POST", "/v1/rank", {**SEED_RANK_REQUEST, "surface_id": f"raise:{code}"})
    assert reply.status == status
    assert reply.error() == {"code": error_code, "message": message, "status": status}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/feedback", {**SEED_FEEDBACK, "request_id": "raise:NOT_FOUND"}),
        ("GET", "/v1/segments/raise:NOT_FOUND", None),
        ("POST", "/v1/search", {"query": "raise:NOT_FOUND"}),
    ],
)
def test_grpc_errors_map_on_every_decision_route(gateway: GatewayClient, method: str, path: str, body: Any) -> None:
    reply = gateway.call(method, path, body)
    assert reply.status == 404
    assert reply.error()["message"] == "server says NOT_FOUND"


def test_unreachable_server_is_503(make_gateway: Callable[..., GatewayClient]) -> None:
    gw = make_gateway(grpc_target="127.0.0.1:1")
    reply = gw.call("POST", "/v1/rank", SEED_RANK_REQUEST)
    assert reply.status == 503
    assert reply.error() == {
        "code": "unavailable",
        "message": "The decision server is unreachable; retry later.",
        "status": 503,
    }
    detailed = gw.call("GET", "/v1/health/detailed")
    assert detailed.status == 503
    assert detailed.body["status"] == "degraded"
    assert detailed.body["components"]["decision_server"]["status"] == "unreachable"
    assert detailed.body["components"]["bundle"]["status"] == "unknown"


VALIDATION = [
    # (method, path, raw body, expected message fragment)
    ("POST", "/v1/rank", b"{not json", "The request body is not valid JSON"),
    ("POST", "/v1/rank", b"", "The request body is empty; expected a JSON object."),
    ("POST", "/v1/rank", b"[1, 2]", "The request body must be a JSON object, got array."),
    ("POST", "/v1/rank", b'"\\ud800"', "The request body is not valid JSON"),
    ("POST", "/v1/rank", b"[" * 3000, "The request body is not valid JSON"),
    (
        "POST",
        "/v1/rank",
        b'{"surface_id": "x", "user_ctx": {"anon_id": "a"}, "limit": "five"}',
        "limit must be an integer",
    ),
    (
        "POST",
        "/v1/rank",
        b'{"surface_id": "x", "user_ctx": {"anon_id": "a", "consent": "all"}}',
        "user_ctx.consent must be",
    ),
    ("POST", "/v1/rank", b'{"surface_id": "x", "user_ctx": {"anon_id": "a"}, "foo": 1}', "foo is not a known field"),
    ("POST", "/v1/rank", b'{"user_ctx": {"anon_id": "a"}}', "surface_id is required."),
    ("POST", "/v1/rank", b'{"surface_id": "x", "user_ctx": {"anon_id": "a"}, "limit": 1e400}', "not valid JSON"),
    (
        "POST",
        "/v1/rank",
        b'{"surface_id": "x", "user_ctx": {"anon_id": "a"}, "limit": 99999999999999999999999}',
        "limit must be an integer, got number.",
    ),
    (
        "POST",
        "/v1/feedback",
        b'{"request_id": "r", "item_id": "c", "reward": {"type": "like", "value": 1}}',
        "reward.type",
    ),
    ("POST", "/v1/search", b"{}", "query is required."),
    ("POST", "/v1/events", b'{"events": []}', "events must hold 1 to 500 events, got 0."),
    ("GET", "/v1/segments/" + "u" * 300, None, "user_id must be 1 to 256 characters long."),
]


@pytest.mark.parametrize(("method", "path", "raw", "message"), VALIDATION)
def test_bad_input_is_400_naming_the_problem(
    gateway: GatewayClient, method: str, path: str, raw: bytes, message: str
) -> None:
    reply = gateway.call(method, path, data=raw)
    assert reply.status == 400
    error = reply.error()
    assert error["code"] == "invalid_request"
    assert message in error["message"]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    keys = [*convert.RANK_FIELDS, *convert.FEEDBACK_FIELDS, *convert.USER_CTX_FIELDS, "events", "query", "type", "zz"]
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 5, 2**31, 2**63 - 1, -(2**63)])
    if kind == 3:
        return rng.choice([0.0, 0.5, -1.5, 1e300, 3.14])
    if kind == 4:
        return rng.choice(["", "click", "homepage.hero", "raise:INTERNAL", "x" * 300, "é✓", "2025-10-09T14:30:00Z"])
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_random_bodies_never_cause_a_server_error(gateway: GatewayClient) -> None:
    rng = random.Random(20251009)
    paths = ["/v1/rank", "/v1/feedback", "/v1/search", "/v1/events", "/v1/admin/segments/retrain"]
    for _ in range(300):
        path = rng.choice(paths)
        body = _random_json(rng)
        if path == "/v1/rank" and isinstance(body, dict):
            body = {"surface_id": "homepage.hero", "user_ctx": {"anon_id": "a"}, **body}
        reply = gateway.call("POST", path, data=orjson.dumps(body), headers=admin_headers())
        assert reply.status < 500 or reply.body["error"]["message"] == GENERIC_500, (path, body, reply)


def test_oversized_body_is_413_in_the_error_shape(gateway: GatewayClient) -> None:
    big = {**SEED_RANK_REQUEST, "context": {"pad": "x" * 5000}}
    reply = gateway.call("POST", "/v1/rank", big)
    assert reply.status == 413
    assert reply.error() == {
        "code": "payload_too_large",
        "message": "The request body exceeds the limit of 4096 bytes.",
        "status": 413,
    }


def test_oversized_chunked_body_is_413(gateway: GatewayClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    reply = gateway.call("POST", "/v1/rank", data=chunks())
    assert reply.status == 413
    assert reply.error()["code"] == "payload_too_large"


def test_rate_limit_is_429_with_retry_after(make_gateway: Callable[..., GatewayClient]) -> None:
    gw = make_gateway(rate_limit_rps=0.001, rate_limit_burst=2)
    statuses = [gw.call("POST", "/v1/rank", SEED_RANK_REQUEST).status for _ in range(2)]
    limited = gw.call("POST", "/v1/rank", SEED_RANK_REQUEST)
    assert statuses == [200, 200]
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "1000"
    assert limited.error() == {
        "code": "rate_limited",
        "message": "Rate limit exceeded: at most 0.001 requests a second per client.",
        "status": 429,
    }
    assert gw.call("GET", "/health").status == 200
    assert "aura_gateway_rate_limited_total 1.0" in gw.call("GET", "/metrics").body


def test_cors_preflight_for_an_allowed_origin(gateway: GatewayClient) -> None:
    reply = gateway.call(
        "OPTIONS",
        "/v1/rank",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert reply.headers["Access-Control-Allow-Methods"] == "POST"
    assert reply.headers["Access-Control-Allow-Headers"] == "Content-Type, Authorization"
    assert reply.headers["Access-Control-Max-Age"] == "600"
    assert reply.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in reply.headers


def test_cors_preflight_for_another_origin_is_refused(gateway: GatewayClient) -> None:
    reply = gateway.call(
        "OPTIONS", "/v1/rank", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert reply.status == 403
    assert reply.error()["message"] == "Origin https://evil.example is not allowed to call this API."
    assert "Access-Control-Allow-Origin" not in reply.headers


def test_options_without_preflight_headers_is_400(gateway: GatewayClient) -> None:
    reply = gateway.call("OPTIONS", "/v1/rank")
    assert reply.status == 400
    assert "CORS preflight" in reply.error()["message"]


def test_cors_headers_on_actual_requests(gateway: GatewayClient) -> None:
    allowed = gateway.call("POST", "/v1/rank", SEED_RANK_REQUEST, headers={"Origin": ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Expose-Headers"] == "X-Request-ID, Retry-After"
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    other = gateway.call("POST", "/v1/rank", SEED_RANK_REQUEST, headers={"Origin": "https://evil.example"})
    assert other.status == 200
    assert "Access-Control-Allow-Origin" not in other.headers
    assert other.headers["Vary"] == "Origin"


def test_cors_wildcard_and_disabled(make_gateway: Callable[..., GatewayClient]) -> None:
    wildcard = make_gateway(cors_origins=("*",))
    reply = wildcard.call("GET", "/health", headers={"Origin": "https://any.example"})
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in reply.headers
    disabled = make_gateway(cors_origins=())
    preflight = disabled.call(
        "OPTIONS", "/v1/rank", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in disabled.call("GET", "/health", headers={"Origin": ORIGIN}).headers


ADMIN_ROUTES = [
    # (method, path, body, status, expected body)
    (
        "GET",
        "/v1/admin/indexer/status",
        None,
        200,
        {
            "bundle_version": "v2",
            "content_items": 120,
            "embedding_dim": 384,
            "embedding_model": "all-MiniLM-L6-v2",
            "built_at": "",
            "newest_content_at": "",
        },
    ),
    ("POST", "/v1/admin/index/refresh", None, 200, {"active_version": "v2", "changed": True}),
    ("POST", "/v1/admin/segments/retrain", {"reason": "drift"}, 202, {"job_id": "job_1", "status": "queued"}),
    ("POST", "/v1/admin/segments/retrain", None, 202, {"job_id": "job_1", "status": "queued"}),
    ("GET", "/v1/admin/bundles", None, 200, convert.admin_response_to_json(BUNDLE_STATUS)),
    ("POST", "/v1/admin/bundles/v2/activate", {}, 200, {"active_version": "v2", "previous_version": "v1"}),
    ("POST", "/v1/admin/bundles/rollback", None, 200, {"active_version": "v1", "previous_version": "v2"}),
    ("DELETE", "/v1/admin/users/anon_1", None, 200, {"user_id": "anon_1", "status": "erased", "erasure_id": "er_1"}),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "expected"), ADMIN_ROUTES)
def test_admin_routes_with_the_right_token(
    gateway: GatewayClient, backend: FakeBackend, method: str, path: str, body: Any, status: int, expected: Any
) -> None:
    reply = gateway.call(method, path, body, headers=admin_headers())
    assert (reply.status, reply.body) == (status, expected)


def test_admin_calls_reach_the_server_with_their_arguments(gateway: GatewayClient, backend: FakeBackend) -> None:
    gateway.call("POST", "/v1/admin/segments/retrain", {"reason": "drift"}, headers=admin_headers())
    assert backend.requests["TriggerRetraining"] == admin_pb.TriggerRetrainingRequest(reason="drift")
    gateway.call("POST", "/v1/admin/bundles/20260102T000000Z-bbbbbb/activate", headers=admin_headers())
    assert backend.requests["ActivateBundle"] == admin_pb.ActivateBundleRequest(version="20260102T000000Z-bbbbbb")
    assert backend.metadata["ActivateBundle"]["authorization"] == f"Bearer {ADMIN_TOKEN}"
    gateway.call("DELETE", "/v1/admin/users/anon_9", headers=admin_headers())
    assert backend.requests["EraseUser"] == admin_pb.EraseUserRequest(user_id="anon_9")


@pytest.mark.parametrize(("method", "path", "_body", "_status", "_expected"), ADMIN_ROUTES)
@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "The admin API needs an 'Authorization: Bearer <token>' header."),
        ({"Authorization": ADMIN_TOKEN}, "The admin API needs an 'Authorization: Bearer <token>' header."),
        ({"Authorization": "Bearer "}, "The admin API needs an 'Authorization: Bearer <token>' header."),
        ({"Authorization": "Bearer wrong-token"}, "The admin token is not valid."),
        ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, "The admin token is not valid."),
    ],
)
def test_admin_routes_refuse_missing_or_wrong_tokens(
    gateway: GatewayClient, method: str, path: str, _body: Any, _status: int, _expected: Any, headers: Any, message: str
) -> None:
    reply = gateway.call(method, path, headers=headers)
    assert reply.status == 401
    assert reply.error() == {"code": "unauthenticated", "message": message, "status": 401}
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="aura-admin"'


def test_admin_api_is_disabled_without_a_token(make_gateway: Callable[..., GatewayClient]) -> None:
    gw = make_gateway(admin_token="")
    reply = gw.call("GET", "/v1/admin/bundles", headers=admin_headers(""))
    assert reply.status == 401
    assert reply.error()["message"] == "The admin API is disabled: set AURA_ADMIN_TOKEN to enable it."


def test_admin_errors_pass_through(gateway: GatewayClient) -> None:
    reply = gateway.call("POST", "/v1/admin/bundles/raise:FAILED_PRECONDITION/activate", headers=admin_headers())
    assert reply.status == 409
    assert reply.error()["message"] == "server says FAILED_PRECONDITION"
    bad_body = gateway.call("POST", "/v1/admin/bundles/rollback", {"to": "v1"}, headers=admin_headers())
    assert bad_body.status == 400
    assert bad_body.error()["message"] == "to is not a known field (known fields: none)."


def test_health_endpoints(
    make_gateway: Callable[..., GatewayClient], backend: FakeBackend, loop: asyncio.AbstractEventLoop
) -> None:
    gw = make_gateway()
    live = gw.call("GET", "/health")
    assert (live.status, live.body) == (200, {"status": "ok"})
    detailed = gw.call("GET", "/v1/health/detailed")
    assert detailed.status == 200
    assert detailed.body == {
        "status": "ok",
        "components": {
            "gateway": {"status": "ok"},
            "decision_server": {"status": "ok", "serving_status": "SERVING", "message": ""},
            "bundle": {
                "status": "ok",
                "version": "20260101T000000Z-aaaaaa",
                "age_seconds": 300.0,
                "loaded_at": "2026-01-01T00:05:00Z",
                "last_error": "",
                "processes": [convert.admin_response_to_json(process) for process in BUNDLE_STATUS.processes],
            },
        },
    }
    loop.run_until_complete(backend.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING))
    backend.bundle_status = admin_pb.GetBundleStatusResponse(last_error="store unreachable")
    try:
        degraded = gw.call("GET", "/v1/health/detailed")
    finally:
        loop.run_until_complete(backend.health.set("", health_pb2.HealthCheckResponse.SERVING))
        backend.bundle_status = BUNDLE_STATUS
    assert degraded.status == 503
    assert degraded.body["status"] == "degraded"
    assert degraded.body["components"]["decision_server"] == {
        "status": "not_serving",
        "serving_status": "NOT_SERVING",
        "message": "",
    }
    assert degraded.body["components"]["bundle"]["status"] == "missing"
    assert degraded.body["components"]["bundle"]["last_error"] == "store unreachable"


@pytest.mark.parametrize(
    "sibling",
    [
        admin_pb.ProcessStatus(pid=102),
        admin_pb.ProcessStatus(pid=102, active_version="20260102T000000Z-bbbbbb", loaded_at="2026-01-02T00:05:00Z"),
    ],
    ids=["serves-none", "other-version"],
)
def test_a_process_out_of_step_degrades_the_bundle_health(
    make_gateway: Callable[..., GatewayClient], backend: FakeBackend, sibling: admin_pb.ProcessStatus
) -> None:
    gw = make_gateway()
    backend.bundle_status = admin_pb.GetBundleStatusResponse()
    backend.bundle_status.CopyFrom(BUNDLE_STATUS)
    backend.bundle_status.processes[1].CopyFrom(sibling)
    try:
        detailed = gw.call("GET", "/v1/health/detailed")
    finally:
        backend.bundle_status = BUNDLE_STATUS
    assert detailed.status == 503
    assert detailed.body["status"] == "degraded"
    assert detailed.body["components"]["decision_server"]["status"] == "ok"
    bundle = detailed.body["components"]["bundle"]
    assert (bundle["status"], bundle["version"], bundle["last_error"]) == ("degraded", "20260101T000000Z-aaaaaa", "")
    assert bundle["processes"][1] == convert.admin_response_to_json(sibling)


def test_a_process_with_an_error_but_the_same_bundle_keeps_the_health_ok(
    make_gateway: Callable[..., GatewayClient], backend: FakeBackend
) -> None:
    gw = make_gateway()
    backend.bundle_status = admin_pb.GetBundleStatusResponse()
    backend.bundle_status.CopyFrom(BUNDLE_STATUS)
    backend.bundle_status.processes[1].last_error = "bundle store var/bundle-store is unreachable"
    try:
        detailed = gw.call("GET", "/v1/health/detailed")
    finally:
        backend.bundle_status = BUNDLE_STATUS
    assert (detailed.status, detailed.body["status"]) == (200, "ok")
    processes = detailed.body["components"]["bundle"]["processes"]
    assert processes[1]["last_error"] == "bundle store var/bundle-store is unreachable"


def test_metrics_count_requests_latency_and_upstream_errors(make_gateway: Callable[..., GatewayClient]) -> None:
    gw = make_gateway()
    gw.call("POST", "/v1/rank", SEED_RANK_REQUEST)
    gw.call("POST", "/v1/rank", SEED_RANK_REQUEST)
    gw.call("POST", "/v1/rank", {**SEED_RANK_REQUEST, "surface_id": "raise:NOT_FOUND"})
    gw.call("GET", "/v1/segments/u1")
    gw.call("GET", "/nowhere")
    reply = gw.call("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == METRICS_CONTENT_TYPE
    text = reply.body
    assert 'aura_gateway_requests_total{route="/v1/rank",status="200"} 2.0' in text
    assert 'aura_gateway_requests_total{route="/v1/rank",status="404"} 1.0' in text
    assert 'aura_gateway_requests_total{route="/v1/segments/{user_id}",status="200"} 1.0' in text
    assert 'aura_gateway_requests_total{route="unmatched",status="404"} 1.0' in text
    assert 'aura_gateway_request_duration_seconds_count{route="/v1/rank"} 3.0' in text
    assert 'aura_gateway_upstream_errors_total{code="NOT_FOUND"} 1.0' in text
    assert "aura_gateway_rate_limited_total 0.0" in text


def test_openapi_json_is_served(gateway: GatewayClient) -> None:
    reply = gateway.call("GET", "/openapi.json")
    assert reply.status == 200
    assert reply.body == orjson.loads(orjson.dumps(DOC))


def test_unknown_routes_and_methods_answer_in_the_error_shape(gateway: GatewayClient) -> None:
    missing = gateway.call("GET", "/v2/rank")
    assert missing.status == 404
    assert missing.error() == {"code": "not_found", "message": "No route matches GET /v2/rank.", "status": 404}
    wrong = gateway.call("GET", "/v1/rank")
    assert wrong.status == 405
    assert wrong.error()["code"] == "method_not_allowed"
    assert "allowed: " in wrong.error()["message"]
    assert "POST" in wrong.headers["Allow"]


def test_request_ids_are_generated_or_taken_from_the_caller(gateway: GatewayClient) -> None:
    first = gateway.call("GET", "/health").headers["X-Request-ID"]
    second = gateway.call("GET", "/health").headers["X-Request-ID"]
    assert re.fullmatch(r"gw_[0-9a-f]{8}_[0-9a-f]+", first)
    assert first != second
    assert gateway.call("GET", "/health", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
    replaced = gateway.call("GET", "/health", headers={"X-Request-ID": "bad id\twith spaces"}).headers["X-Request-ID"]
    assert replaced.startswith("gw_")
    error = gateway.call("POST", "/v1/rank", data=b"nope")
    assert error.headers["X-Request-ID"].startswith("gw_")


def test_events_are_scrubbed_and_durably_logged(make_gateway: Callable[..., GatewayClient], tmp_path: Path) -> None:
    gw = make_gateway()
    body = {
        "events": [
            {
                "event_id": "e1",
                "type": "page_view",
                "ts": "2025-10-09T14:30:00Z",
                "anon_id": "anon_1",
                "session_id": "sess_1",
                "url": "https://shop.example.com/p?email=jane@example.com",
                "props": {"q": "call me at +1 415 555 0100"},
            },
            {"event_id": "e2", "type": "impression", "ts": 1760020200000, "anon_id": "anon_1", "session_id": "sess_1"},
        ]
    }
    reply = gw.call("POST", "/v1/events", body)
    assert (reply.status, reply.body) == (202, {"accepted": 2})
    rows = read_log(tmp_path / "logs", "events").sort_by("event_id").to_pylist()
    assert [(r["event_id"], r["type"], r["url"], r["props_json"]) for r in rows] == [
        ("e1", "page_view", "https://shop.example.com/p", '{"q":"call me at [phone]"}'),
        ("e2", "impression", "", "{}"),
    ]
    assert rows[0]["ts"] == rows[1]["ts"]


class BrokenLog:
    """An event log whose disk is gone."""

    record = RECORD_TYPES["events"]

    async def append_durable(self, records: list[tuple]) -> None:
        raise LogUnavailable("The events log cannot store records right now; retry later.")


def test_event_log_failure_is_503(make_gateway: Callable[..., GatewayClient]) -> None:
    gw = make_gateway(event_log=BrokenLog())
    event = {"event_id": "e", "type": "click", "ts": 1, "anon_id": "a", "session_id": "s"}
    reply = gw.call("POST", "/v1/events", {"events": [event]})
    assert reply.status == 503
    assert reply.error() == {
        "code": "unavailable",
        "message": "The events log cannot store records right now; retry later.",
        "status": 503,
    }
