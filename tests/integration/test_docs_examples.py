"""The README's and `make demo`'s examples work as written against a real edge node."""

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura.bundle.store import open_store
from aura.edge.demo import EXAMPLES, assigned_visitor
from tests.conftest import EdgeNode, start_edge_node, stop_edge_node

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeNode, str, str]]:
    """An edge node serving the bundle `make demo` builds, with an assigned visitor and its device."""
    tmp = tmp_path_factory.mktemp("demo")
    store_dir = tmp / "store"
    aura = Path(sys.executable).with_name("aura")
    subprocess.run([aura, "demo-bundle", "--store", store_dir], check=True, capture_output=True, timeout=300)
    anon, device = assigned_visitor(store_dir / "bundles" / open_store(str(store_dir)).current())
    node = start_edge_node(tmp, store_dir)
    yield node, anon, device
    stop_edge_node(node)


def test_python_grpc_client_example(edge_node) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "examples" / "grpc_client.py"), edge_node.grpc_address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("req_")
    assert any(line.startswith("feedback accepted fb_") for line in lines)
    assert lines[-1].startswith("unknown surface -> NOT_FOUND: unknown surface 'nope'")


def shell_commands(text: str, program: str) -> list[str]:
    """The commands in `text` that start with `program`, each with its continuation lines and quoted newlines."""
    commands, pending = [], ""
    for line in text.splitlines():
        if not pending and not line.strip().startswith(program):
            continue
        pending += line + "\n"
        try:
            shlex.split(pending)
        except ValueError:  # a quote is still open
            continue
        if not line.endswith("\\"):
            commands.append(pending)
            pending = ""
    return commands


def run_curl_examples(commands: list[str]) -> None:
    """Run each command with bash; each must succeed and answer JSON without an error (Prometheus text for /metrics)."""
    for command in commands:
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (command, result.stderr)
        if "/metrics" in command:
            assert result.stdout.startswith("# HELP"), result.stdout
            continue
        answer = json.loads(result.stdout)
        assert "error" not in answer, (command, answer, result.stderr)
        if "/v1/feedback" in command:
            assert answer["status"] == "accepted"


def test_the_demo_prints_curl_requests_that_work_as_written(demo_node: tuple[EdgeNode, str, str]) -> None:
    node, anon, device = demo_node
    printed = EXAMPLES.format(
        grpc=node.grpc_address,
        http=node.http_url,
        version=open_store(str(node.store_dir)).current(),
        anon=anon,
        device=device,
        token=node.admin_token,
        site="http://127.0.0.1:8080",
    )
    commands = shell_commands(printed, "curl")
    assert len(commands) == 8
    run_curl_examples(commands)


def test_the_readme_curl_examples_work_as_written(demo_node: tuple[EdgeNode, str, str]) -> None:
    node, anon, _ = demo_node
    # The README's visitor has no precomputed segment in the demo bundle (it says so); `make demo` prints one that has.
    readme = (REPO / "README.md").read_text().replace("http://127.0.0.1:8000", node.http_url)
    readme = readme.replace("anon_abc123", anon)
    commands = shell_commands(readme, "curl")
    assert len(commands) == 7
    run_curl_examples(commands)
