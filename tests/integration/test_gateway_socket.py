"""The gateway over real sockets: `start_gateway` on port 0 and `run_gateway` in a process, called with urllib."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import re
import select
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
from aura.edge.gateway import app as gateway_app
from aura.edge.gateway import create_app, start_gateway
from aura.edge.gateway.app import GATEWAY_KEY
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
        """Cancel the tasks left on the loop (as asyncio.run does on exit), stop it and join the thread.

        aiohttp leaves one such task behind when a client closes while the server drains the rest of a body it
        answered early (408, 413): the task waits out aiohttp's lingering time after the runner's cleanup.
        """

        async def cancel_the_rest() -> None:
            rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.run(cancel_the_rest())
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


def read_answer(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """Read one response with a Content-Length from `sock` without waiting for the connection to close."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response: {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the response body"
        body += chunk
    return status_line, headers, body


def seconds_until_closed(sock: socket.socket, limit: float = 5.0) -> float:
    """Seconds until the server closes `sock` (recv returns b"" or the connection resets); fails after `limit`."""
    start = time.monotonic()
    sock.settimeout(limit)
    with contextlib.suppress(ConnectionResetError):
        while sock.recv(65536):  # discard what the server still sends until it closes
            continue
    return time.monotonic() - start


def requests_counted(servers: tuple[LoopThread, FakeBackend, web.AppRunner, int], route: str, status: int) -> float:
    """The gateway's count of answers on `route` with `status`, read on its own loop."""
    background, _, runner, _ = servers

    async def render() -> bytes:
        return runner.app[GATEWAY_KEY].metrics.render()

    pattern = rf'^aura_gateway_requests_total\{{route="{re.escape(route)}",status="{status}"\}} (\S+)$'
    found = re.search(pattern, background.run(render()).decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


SLOW_BODY_HEAD = b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"


def test_a_trickled_body_is_answered_408_at_the_body_timeout(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_app, "BODY_READ_TIMEOUT", 0.5)
    before = requests_counted(servers, "/v1/rank", 408)
    with socket.create_connection(("127.0.0.1", servers[3]), timeout=5) as sock:
        sock.sendall(SLOW_BODY_HEAD)
        start = time.monotonic()
        # One byte every 0.1 s: each byte arrives well within any per-read timeout, the whole body never does.
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() - start < 3, "no answer to a trickled body"
            sock.sendall(b" ")
        status, headers, answer = read_answer(sock)
        elapsed = time.monotonic() - start
    assert status == "HTTP/1.1 408 Request Timeout"
    assert 0.5 <= elapsed < 2.0
    assert headers["connection"] == "close"
    assert orjson.loads(answer)["error"] == {
        "code": "request_timeout",
        "message": "The request body did not arrive within 0.5 s.",
        "status": 408,
    }
    assert requests_counted(servers, "/v1/rank", 408) == before + 1


def test_a_body_cut_off_by_the_client_is_a_client_error_without_a_traceback(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int], caplog: pytest.LogCaptureFixture
) -> None:
    before = requests_counted(servers, "/v1/rank", 400)
    with caplog.at_level(logging.DEBUG):
        with socket.create_connection(("127.0.0.1", servers[3]), timeout=5) as sock:
            sock.sendall(SLOW_BODY_HEAD + b'{"surface_')  # 10 of the 100 bytes, then the client closes
        deadline = time.monotonic() + 5
        while requests_counted(servers, "/v1/rank", 400) == before:
            assert time.monotonic() < deadline, "the cut-off request was not counted as a 400"
            time.sleep(0.02)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []
    assert "client closed the connection during the request body of POST /v1/rank" in caplog.messages


def test_idle_connections_and_slow_request_heads_close_after_the_keepalive_timeout(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    background, backend, runner, port = servers
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # the default, on the module's gateway
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock)[0] == "HTTP/1.1 200 OK"

        async def keepalive_timeouts() -> set[float]:
            return {connection.keepalive_timeout for connection in runner.server.connections}

        assert background.run(keepalive_timeouts()) == {gateway_app.KEEPALIVE_TIMEOUT} == {75.0}

    monkeypatch.setattr(gateway_app, "KEEPALIVE_TIMEOUT", 0.5)
    settings = Settings(state_dir=str(tmp_path))

    async def serve() -> tuple[web.AppRunner, int]:
        return await start_gateway(create_app(settings, grpc_target=backend.target), "127.0.0.1", 0)

    short_runner, short_port = background.run(serve())
    try:
        with socket.create_connection(("127.0.0.1", short_port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock)[0] == "HTTP/1.1 200 OK"
            assert 0.3 < seconds_until_closed(sock) < 2.0  # idle after an answer
        with socket.create_connection(("127.0.0.1", short_port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # a request head that never ends
            assert 0.3 < seconds_until_closed(sock) < 2.0
    finally:
        background.run(short_runner.cleanup())


def test_cleanup_with_a_slow_body_in_flight_ends_within_the_shutdown_timeout(
    servers: tuple[LoopThread, FakeBackend, web.AppRunner, int],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    background, backend, _, _ = servers
    monkeypatch.setattr(gateway_app, "SHUTDOWN_TIMEOUT", 0.5)  # BODY_READ_TIMEOUT stays 10 s
    settings = Settings(state_dir=str(tmp_path))

    async def serve() -> tuple[web.AppRunner, int]:
        return await start_gateway(create_app(settings, grpc_target=backend.target), "127.0.0.1", 0)

    runner, port = background.run(serve())

    async def in_flight() -> int:
        return runner.server.requests_count

    with caplog.at_level(logging.DEBUG), socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(SLOW_BODY_HEAD + b'{"surface_')
        deadline = time.monotonic() + 5
        while background.run(in_flight()) == 0:
            assert time.monotonic() < deadline, "the slow request did not start"
            time.sleep(0.02)
        start = time.monotonic()
        background.run(runner.cleanup())
        assert time.monotonic() - start < 2.0  # at most twice SHUTDOWN_TIMEOUT, not BODY_READ_TIMEOUT
        assert seconds_until_closed(sock) < 1.0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


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
