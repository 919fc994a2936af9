"""Browser end-to-end tests: the demo site and the SDK in headless Chromium against a real edge node.

`browser.mjs` drives the scenarios (see its header); this module starts a static server for `sdk/`, an edge
node whose gateway allows that origin (CORS), runs the script, and checks the node's logs for what the
browser sent.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aura.eventlog import read_log
from tests.conftest import REPO, EdgeNode, seed_store, start_edge_node, stop_edge_node

SDK = REPO / "sdk"
SCRIPT = Path(__file__).with_name("browser.mjs")
LOG_WAIT_SECONDS = 15.0


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@pytest.fixture(scope="module")
def sdk_build() -> Path:
    """Build sdk/dist with the installed esbuild (`make sdk` installs it); fail with the build's output."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; the browser tests need Node.js 18 or newer.")
    if not (SDK / "node_modules" / "playwright-core").is_dir():
        pytest.fail("sdk/node_modules is missing: run `npm --prefix sdk ci` (make sdk) first.")
    build = subprocess.run([node, "build.mjs"], cwd=SDK, capture_output=True, text=True, timeout=120)
    if build.returncode != 0:
        pytest.fail(f"the SDK build failed:\n{build.stdout}{build.stderr}")
    return SDK / "dist"


@pytest.fixture(scope="module")
def demo_site(sdk_build: Path) -> Iterator[str]:
    """Serve sdk/ (demo under /examples/, builds under /dist/) on a loopback port; yield the demo's URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(SDK)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/examples/index.html"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def cors_edge_node(tmp_path_factory: pytest.TempPathFactory, demo_site: str) -> Iterator[EdgeNode]:
    """A real edge node serving the tiny bundle whose gateway allows the demo site's origin."""
    tmp = tmp_path_factory.mktemp("edge-browser")
    store_dir = tmp / "store"
    seed_store(store_dir, tmp / "built", "20260101T000000Z-bbbbbb")
    origin = demo_site.split("/examples/")[0]
    node = start_edge_node(tmp, store_dir, AURA_CORS_ORIGINS=origin)
    yield node
    stop_edge_node(node)


@pytest.fixture(scope="module")
def browser_report(cors_edge_node: EdgeNode, demo_site: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run every browser scenario once; return the script's report (scenarios, anon_id, decisions, clicked)."""
    report_path = tmp_path_factory.mktemp("browser") / "report.json"
    run = subprocess.run(
        ["node", str(SCRIPT), "--api", cors_edge_node.http_url, "--site", demo_site, "--report", str(report_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    if not report_path.exists():
        pytest.fail(f"browser.mjs wrote no report (exit {run.returncode}):\n{run.stdout}{run.stderr}")
    report = json.loads(report_path.read_text())
    report["output"] = run.stdout + run.stderr
    return report


def _logged(
    state_dir: Path, stream: str, keep: Callable[[dict], bool], done: Callable[[list[dict]], bool]
) -> list[dict]:
    """Rows of a log stream that `keep` selects, polling until `done(rows)` or time runs out."""
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        rows = [row for row in read_log(state_dir / "logs", stream).to_pylist() if keep(row)]
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@pytest.mark.parametrize(
    "scenario", ["noTrackingBeforeConsent", "rankClickAndFeedback", "revokeStopsTracking", "fallbackWhenApiDown"]
)
def test_scenario(browser_report: dict, scenario: str) -> None:
    results = {s["name"]: s for s in browser_report["scenarios"]}
    assert scenario in results, browser_report["output"]
    assert results[scenario]["ok"], results[scenario].get("error", "") + "\n" + browser_report["output"]


def test_ranked_decisions_are_logged(browser_report: dict, cors_edge_node: EdgeNode) -> None:
    decisions = set(browser_report["decisions"])
    assert decisions, browser_report["output"]
    logged = _logged(
        cors_edge_node.state_dir,
        "decisions",
        lambda row: row["event_id"] in decisions,
        lambda rows: len(rows) >= len(decisions),
    )
    assert {row["event_id"] for row in logged} == decisions


def test_click_and_dwell_feedback_land_in_the_log(browser_report: dict, cors_edge_node: EdgeNode) -> None:
    clicked = browser_report["clicked"]
    assert clicked, browser_report["output"]
    rows = _logged(
        cors_edge_node.state_dir,
        "feedback",
        lambda row: (row["request_id"], row["item_id"]) == (clicked["request_id"], clicked["item_id"]),
        lambda rows: len(rows) >= 2,
    )
    by_type = {row["reward_type"]: row for row in rows}
    assert sorted(by_type) == ["click", "engagement"]
    assert (by_type["click"]["reward_value"], by_type["click"]["position"]) == (1.0, clicked["position"])
    assert by_type["engagement"]["position"] == clicked["position"]
    assert by_type["engagement"]["dwell_time"] >= 1.0


def test_sdk_events_land_in_the_log(browser_report: dict, cors_edge_node: EdgeNode) -> None:
    anon_id = browser_report["anon_id"]
    assert anon_id, browser_report["output"]
    wanted = {"page_view", "impression", "click", "dwell", "scroll"}
    rows = _logged(
        cors_edge_node.state_dir,
        "events",
        lambda row: row["anon_id"] == anon_id,
        lambda rows: wanted <= {row["type"] for row in rows},
    )
    assert wanted <= {row["type"] for row in rows}
