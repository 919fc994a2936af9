"""Every HTTP route of the real edge node (gateway + decision server processes), over real sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from aura.eventlog import read_log

RANK_BODY = {
    "surface_id": "homepage.hero",
    "user_ctx": {
        "anon_id": "anon_abc123",
        "session_id": "sess_xyz789",
        "device": "mobile",
        "referrer": "https://google.com",
        "page_type": "index",
        "consent": ["analytics", "personalization"],
        "geo": {"country": "US", "region": "CA"},
    },
    "limit": 3,
    "context": {"campaign": "summer_sale", "time_of_day": "evening"},
}


def call(node, method: str, path: str, body=None, token: str | None = None, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"{node.http_url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null"), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), dict(error.headers)


def test_rank_feedback_and_the_logs(edge_node) -> None:
    status, ranked, headers = call(edge_node, "POST", "/v1/rank", RANK_BODY)
    assert status == 200
    assert headers["X-Request-ID"] == ranked["request_id"]
    assert ranked["surface"] == "homepage.hero" and len(ranked["items"]) == 3
    assert ranked["segment"] == {"id": "seg_learn_mobile_new", "confidence": 0.85, "intent": "learn"}
    assert ranked["experiment"] == {"variant": "thompson_sampling", "holdout": False}
    assert {"title", "url", "topics"} <= set(ranked["items"][0]["metadata"])

    feedback = {
        "request_id": ranked["request_id"],
        "item_id": ranked["items"][1]["content_id"],
        "reward": {"type": "click", "value": 1.0, "timestamp": "2025-10-09T14:30:00Z"},
        "context": {"position": 2, "dwell_time": 45.2, "scroll_depth": 0.8},
    }
    status, ack, _ = call(edge_node, "POST", "/v1/feedback", feedback)
    assert status == 200 and ack["status"] == "accepted"
    assert call(edge_node, "POST", "/v1/feedback", feedback)[1] == ack
    logged = read_log(edge_node.state_dir / "logs", "feedback").to_pylist()
    assert [row["position"] for row in logged if row["event_id"] == ack["feedback_id"]] == [2]


def test_segments_search_and_health(edge_node) -> None:
    status, segments, _ = call(edge_node, "GET", "/v1/segments/anon_abc123")
    assert status == 200 and segments["user_id"] == "anon_abc123"
    assert segments["segments"][0]["name"] == "Learning-focused Mobile Users (New)"
    status, found, _ = call(edge_node, "POST", "/v1/search", {"query": "analytics for finance", "limit": 4})
    assert status == 200 and 0 < len(found["results"]) <= 4
    assert call(edge_node, "GET", "/health")[:2] == (200, {"status": "ok"})
    status, detailed, _ = call(edge_node, "GET", "/v1/health/detailed")
    assert status == 200
    assert "20260101T000000Z-aaaaaa" in json.dumps(detailed)
    processes = detailed["components"]["bundle"]["processes"]
    assert [(p["active_version"], p["last_error"]) for p in processes] == [("20260101T000000Z-aaaaaa", "")]
    with urllib.request.urlopen(f"{edge_node.http_url}/metrics", timeout=10) as response:
        assert b"# TYPE" in response.read()
    status, spec, _ = call(edge_node, "GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.") and "/v1/rank" in spec["paths"]


@pytest.mark.parametrize(
    ("method", "path", "body", "raw", "expected", "fragment"),
    [
        ("POST", "/v1/rank", None, b"{not json", 400, "JSON"),
        ("POST", "/v1/rank", {**RANK_BODY, "limit": "five"}, None, 400, "limit"),
        ("POST", "/v1/rank", {**RANK_BODY, "surface_id": "nowhere"}, None, 404, "unknown surface"),
        (
            "POST",
            "/v1/rank",
            {**RANK_BODY, "user_ctx": {"anon_id": "a1", "consent": ["analytics"]}},
            None,
            403,
            "consent",
        ),
        ("POST", "/v1/rank", None, b'{"surface_id": "' + b"x" * 100_000 + b'"}', 413, ""),
        (
            "POST",
            "/v1/feedback",
            {"request_id": "req_bogus", "item_id": "c1", "reward": {"type": "click", "value": 1}},
            None,
            400,
            "request_id",
        ),
        ("GET", "/v1/segments/anon_nobody", None, None, 404, "no segment assignment"),
        ("POST", "/v1/search", {"query": ""}, None, 400, "query"),
    ],
)
def test_errors_have_the_right_status_and_a_message(edge_node, method, path, body, raw, expected, fragment) -> None:
    status, payload, _ = call(edge_node, method, path, body, raw=raw)
    assert status == expected
    assert payload["error"]["status"] == expected
    assert fragment.lower() in payload["error"]["message"].lower()


def test_admin_routes_need_the_token(edge_node) -> None:
    for token in (None, "wrong"):
        status, payload, _ = call(edge_node, "GET", "/v1/admin/bundles", token=token)
        assert status == 401 and payload["error"]["status"] == 401
    token = edge_node.admin_token
    status, bundles, _ = call(edge_node, "GET", "/v1/admin/bundles", token=token)
    assert status == 200 and bundles["active_version"] == "20260101T000000Z-aaaaaa"
    assert call(edge_node, "GET", "/v1/admin/indexer/status", token=token)[1]["content_items"] == 20
    assert call(edge_node, "POST", "/v1/admin/index/refresh", {}, token=token)[0] == 200
    assert (
        call(edge_node, "POST", "/v1/admin/segments/retrain", {"reason": "test"}, token=token)[1]["status"] == "queued"
    )
    status, _, _ = call(edge_node, "POST", "/v1/admin/bundles/20990101T000000Z-ffffff/activate", {}, token=token)
    assert status == 404
    status, erased, _ = call(edge_node, "DELETE", "/v1/admin/users/anon_abc123", token=token)
    assert status == 200 and erased["status"] == "erased"
    assert call(edge_node, "GET", "/v1/segments/anon_abc123")[0] == 404
    admin_rows = read_log(edge_node.state_dir / "logs", "admin").to_pylist()
    assert {"retrain", "erase_user"} <= {row["action"] for row in admin_rows}


def test_the_node_warns_when_request_ids_use_the_development_secret(edge_node) -> None:
    assert "AURA_REQUEST_ID_SECRET is not set" in edge_node.logs()


def test_the_node_names_a_misspelt_aura_variable(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a busy port: the node stops after its start-up checks
        env = {
            **os.environ,
            "AURA_GRPC_ADDRESS": f"127.0.0.1:{listener.getsockname()[1]}",
            "AURA_STATE_DIR": str(tmp_path / "state"),
            "AURA_ADMIN_TOKN": "secret",
        }
        result = subprocess.run(
            [sys.executable, "-m", "aura.edge.node"], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2
    assert "AURA_ADMIN_TOKN is not an AURA setting and is ignored; did you mean AURA_ADMIN_TOKEN?" in result.stderr


@pytest.mark.parametrize("held", ["grpc", "http"])
def test_a_node_refuses_a_port_another_process_listens_on(tmp_path: Path, held: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_server(("127.0.0.1", 0)) as free:
        busy_port, free_port = listener.getsockname()[1], free.getsockname()[1]
        grpc_port, http_port = (busy_port, free_port) if held == "grpc" else (free_port, busy_port)
        free.close()
        env = {
            **os.environ,
            "AURA_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
            "API_HOST": "127.0.0.1",
            "API_PORT": str(http_port),
            "AURA_STATE_DIR": str(tmp_path / "state"),
        }
        result = subprocess.run(
            [sys.executable, "-m", "aura.edge.node"], env=env, capture_output=True, text=True, timeout=60
        )
    kind = "gRPC" if held == "grpc" else "HTTP"
    assert result.returncode == 2
    assert f"the {kind} port 127.0.0.1:{busy_port} is already in use" in result.stderr
