"""The gateway over real sockets: `start_gateway` on port 0 and `run_gateway` in a process, called with urllib."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from aura.config import Settings
from aura.edge.gateway import create_app, start_gateway
from aura.edge.gateway.openapi import build_openapi
from tests.integration.test_gateway_app import FakeBackend
from tests.unit.test_gateway_convert import RANK_BODY, SEED_RANK_REQUEST


class LoopThread:
    """An event loop running in a daemon thread, for servers that blocking clients talk to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def http(method: str, url: str, body: Any = None, *, data: bytes | None = None) -> tuple[int, Any, Any]:
    """A blocking HTTP call; returns (status, headers, decoded JSON or text)."""
    if body is not None:
        data = orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    is_json = headers.get("Content-Type", "").startswith("application/json")
    return status, headers, orjson.loads(raw) if is_json else raw.decode()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LoopThread, FakeBackend, web.AppRunner, int]]:
    """A fake decision server and a gateway on real loopback sockets, served from a background loop."""
    background = LoopThread()
    backend = FakeBackend()
    background.run(backend.start())
    settings = Settings(state_dir=str(tmp_path_factory.mktemp("gw")), max_body_bytes=2048, admin_token="s3cret")

    async def serve() -> tuple[web.AppRunner, int]:
        return await start_gateway(create_app(settings, grpc_target=backend.target), "127.0.0.1", 0)

    runner, port = background.run(serve())
    yield background, backend, runner, port
    background.run(runner.cleanup())
    background.run(backend.stop())
    background.close()


def test_rank_over_a_real_socket(servers: tuple[LoopThread, FakeBackend, web.AppRunner, int]) -> None:
    port = servers[3]
    status, headers, body = http("POST", f"http://127.0.0.1:{port}/v1/rank", SEED_RANK_REQUEST)
    assert (status, body) == (200, RANK_BODY)
    assert headers["X-Request-ID"] == "req_a1b2c3"


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "code"),
    [
        ("POST", "/v1/rank", b"{", 400, "invalid_request"),
        ("POST", "/v1/rank", b"{" + b" " * 4096 + b"}", 413, "payload_too_large"),
        ("GET", "/v1/nothing", None, 404, "not_found"),
    ],
)
def test_errors_over_a_real_socket(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int],
    method: str,
    path: str,
    data: bytes | None,
    status: int,
    code: str,
) -> None:
    answered, headers, body = http(method, f"http://127.0.0.1:{servers[3]}{path}", data=data)
    assert answered == status
    assert body["error"]["code"] == code
    assert headers["X-Request-ID"].startswith("gw_")


def raw_http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send raw request bytes on a new connection (closed by the request); return status line, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status_line, headers, body


def test_a_corrupt_compressed_body_is_a_bad_request(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int],
) -> None:
    request = b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
    good = gzip.compress(orjson.dumps(SEED_RANK_REQUEST))
    for body, expected in [(good, "200 OK"), (good[:10] + b"garbage" + good[17:], "400 Bad Request")]:
        status, _, answer = raw_http(
            servers[3], request + b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        assert status.endswith(expected), answer
    assert orjson.loads(answer)["error"]["message"] == (
        "The request body cannot be read: Can not decode content-encoding: gzip."
    )


def test_an_admin_token_that_is_not_utf8_is_refused(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int],
) -> None:
    status, headers, answer = raw_http(
        servers[3],
        b"GET /v1/admin/bundles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\xff\r\nConnection: close\r\n\r\n",
    )
    assert status.endswith("401 Unauthorized")
    assert headers["www-authenticate"] == 'Bearer realm="aura-admin"'
    assert orjson.loads(answer)["error"]["message"] == "The admin token is not valid."


def test_malformed_http_is_a_400_logged_as_one_info_line(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        status, _, answer = raw_http(servers[3], b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert status.endswith("400 Bad Request")
    assert b"Invalid character in Content-Length" in answer
    [logged] = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert (logged.levelname, logged.exc_info) == ("INFO", None)
    assert logged.getMessage().endswith(": 400 Invalid character in Content-Length:")


def test_head_answers_every_get_route_without_a_body(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int],
) -> None:
    for path in ["/health", "/openapi.json", "/metrics"]:
        status, headers, answer = raw_http(
            servers[3], b"HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode()
        )
        assert (status, answer) == ("HTTP/1.1 200 OK", b""), path
        assert int(headers["content-length"]) > 0


def test_health_and_openapi_over_a_real_socket(servers: tuple[LoopThread, FakeBackend, web.AppRunner, int]) -> None:
    port = servers[3]
    status, _, body = http("GET", f"http://127.0.0.1:{port}/health")
    assert (status, body) == (200, {"status": "ok"})
    status, _, body = http("GET", f"http://127.0.0.1:{port}/openapi.json")
    assert (status, body) == (200, orjson.loads(orjson.dumps(build_openapi())))


def test_two_gateways_share_a_port(servers: tuple[LoopThread, FakeBackend, web.AppRunner, int], tmp_path: Path) -> None:
    background, backend, _, port = servers
    settings = Settings(state_dir=str(tmp_path))

    async def serve_second() -> tuple[web.AppRunner, int]:
        return await start_gateway(create_app(settings, grpc_target=backend.target), "127.0.0.1", port)

    runner, second_port = background.run(serve_second())
    try:
        assert second_port == port
        assert all(http("GET", f"http://127.0.0.1:{port}/health")[0] == 200 for _ in range(8))
    finally:
        background.run(runner.cleanup())


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_gateway_serves_until_sigterm(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int], tmp_path: Path
) -> None:
    backend = servers[1]
    port = free_port()
    env = {
        **os.environ,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "AURA_GRPC_ADDRESS": backend.target,
        "AURA_STATE_DIR": str(tmp_path / "state"),
    }
    code = (
        "from aura.config import load_settings; from aura.edge.gateway import run_gateway; run_gateway(load_settings())"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):  # refused until the gateway listens
                if http("GET", f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "run_gateway did not start listening"
            time.sleep(0.1)
        status, _, body = http("POST", f"http://127.0.0.1:{port}/v1/rank", SEED_RANK_REQUEST)
        assert (status, body) == (200, RANK_BODY)
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=20)
    assert returncode == 0
