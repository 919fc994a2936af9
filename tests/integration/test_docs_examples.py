"""The README's examples work as written against a real edge node."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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
