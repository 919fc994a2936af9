"""The edge node's supervisor over real worker processes: restarts, and the exit code of a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SUPERVISED = """
import os, signal, sys, time
from pathlib import Path
from aura.edge.node import Supervisor

def serve(name, stop_code):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(stop_code))
    Path(os.environ["READY_DIR"], name).touch()
    while True:
        time.sleep(0.05)

def steady():
    serve("steady", 0)

def failing_stop():
    serve("failing", 3)

if __name__ == "__main__":
    targets = [("steady", steady)] + ([("failing", failing_stop)] if sys.argv[1] == "failing" else [])
    sys.exit(Supervisor(targets).run())
"""


def run_supervisor(tmp_path: Path, mode: str) -> tuple[int, str]:
    """Start a supervisor of test workers, stop it with SIGTERM once they run, return its exit code and log."""
    script = tmp_path / "supervised.py"
    script.write_text(SUPERVISED)
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "READY_DIR": str(ready)}
    process = subprocess.Popen([sys.executable, str(script), mode], stderr=subprocess.PIPE, text=True, env=env)
    workers = 2 if mode == "failing" else 1
    deadline = time.monotonic() + 60
    while len(list(ready.iterdir())) < workers:  # each worker handles SIGTERM once it has said it is ready
        assert time.monotonic() < deadline and process.poll() is None, "the workers did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, log = process.communicate(timeout=30)
    return process.returncode, log


def test_a_clean_stop_exits_0(tmp_path: Path) -> None:
    assert run_supervisor(tmp_path, "steady")[0] == 0


def test_a_worker_that_stops_with_an_error_makes_the_node_exit_1(tmp_path: Path) -> None:
    returncode, log = run_supervisor(tmp_path, "failing")
    assert returncode == 1
    assert "failing stopped with exit code 3" in log
