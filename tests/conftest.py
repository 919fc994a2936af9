"""Shared fixtures: a real edge node (decision server + gateway processes) on loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aura.bundle.store import open_store
from aura.config import load_surfaces
from tests.bundle_factory import make_tiny_bundle

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
CONFIG_SURFACES = tuple(load_surfaces(REPO / "config" / "surfaces.yaml"))


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EdgeNode:
    """A running `aura-edge` process tree and how to reach it."""

    process: subprocess.Popen
    http_url: str
    grpc_address: str
    state_dir: Path
    store_dir: Path
    log_path: Path
    admin_token: str = ADMIN_TOKEN

    def logs(self) -> str:
        """What the node printed so far."""
        return self.log_path.read_text(errors="replace")


def wait_until_serving(grpc_address: str, http_url: str | None, process: subprocess.Popen, log_path: Path) -> None:
    """Block until gRPC health says SERVING (and the gateway answers /health), or fail with the node's log."""
    deadline = time.monotonic() + 90
    with grpc.insecure_channel(grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                pytest.fail(f"edge node exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            with contextlib.suppress(grpc.RpcError):  # not listening yet
                status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"edge node did not become SERVING:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
    while http_url is not None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{http_url}/health", timeout=1) as response:
            if response.status == 200:  # until the gateway listens, the connection is refused
                return
        if time.monotonic() > deadline:
            pytest.fail(f"gateway did not answer /health:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)


def start_edge_node(tmp: Path, store_dir: Path, *, workers: int = 1, gateway: bool = True, **env: str) -> EdgeNode:
    """Start `aura-edge` as a subprocess with its own state dir and ports; wait until it serves."""
    grpc_port, http_port = free_port(), free_port()
    state_dir = tmp / "state"
    log_path = tmp / "edge.log"
    environment = {
        **os.environ,
        "AURA_STATE_DIR": str(state_dir),
        "AURA_BUNDLE_STORE": str(store_dir),
        "AURA_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(http_port),
        "AURA_ADMIN_TOKEN": ADMIN_TOKEN,
        "AURA_BUNDLE_POLL_SECONDS": "0.5",
        "AURA_CONFIG_DIR": str(REPO / "config"),
        "EVENT_FLUSH_INTERVAL": "0.2",
        "API_LOG_LEVEL": "info",
        **env,
    }
    args = [sys.executable, "-m", "aura.edge.node", "--workers", str(workers)]
    if not gateway:
        args.append("--no-gateway")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(args, env=environment, stdout=log_file, stderr=subprocess.STDOUT, cwd=tmp)
    node = EdgeNode(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", state_dir, store_dir, log_path)
    try:
        wait_until_serving(node.grpc_address, node.http_url if gateway else None, process, log_path)
    except BaseException:
        stop_edge_node(node)
        raise
    return node


def stop_edge_node(node: EdgeNode) -> int:
    """SIGTERM the node, wait for a graceful exit and return its exit code."""
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
        try:
            node.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
    return node.process.returncode


def seed_store(store_dir: Path, built_dir: Path, version: str, **kwargs) -> str:
    """Build a tiny bundle for the configured surfaces, push it to a local store and promote it."""
    bundle_dir = make_tiny_bundle(built_dir, version, surfaces=CONFIG_SURFACES, **kwargs)
    store = open_store(str(store_dir))
    store.push(bundle_dir)
    store.promote(version)
    return version


@pytest.fixture(scope="module")
def edge_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeNode]:
    """A real edge node (one decision server process + one gateway process) serving a tiny bundle."""
    tmp = tmp_path_factory.mktemp("edge")
    store_dir = tmp / "store"
    seed_store(store_dir, tmp / "built", "20260101T000000Z-aaaaaa")
    node = start_edge_node(tmp, store_dir)
    yield node
    stop_edge_node(node)
