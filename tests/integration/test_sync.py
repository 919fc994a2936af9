"""Edge bundle sync against real stores: hot swap, failures that keep serving, pins, rollback, retention."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from aura.bundle.loader import LoadedBundle, load_bundle
from aura.bundle.store import BundleStore, LocalBundleStore, open_store
from aura.edge.sync import BundleSync, SwapResult
from aura.errors import BundleError, InvalidRequest, NotFound
from tests.bundle_factory import corrupt_file, make_tiny_bundles

pytest_plugins = ["tests.moto_fixture"]

VERSIONS = tuple(f"v{i:03d}" for i in range(1, 8))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundles(tmp_path_factory.mktemp("built"), VERSIONS)


@pytest.fixture
def store(tmp_path: Path) -> LocalBundleStore:
    (tmp_path / "store").mkdir()
    return LocalBundleStore(tmp_path / "store")


class Node:
    """One edge server process under test: a BundleSync and the bundles it swapped in, in order."""

    def __init__(
        self, store: BundleStore, state_dir: Path, loader: Callable[[Path], LoadedBundle] = load_bundle, **kwargs
    ) -> None:
        self.served: list[str] = []
        self.sync: BundleSync[LoadedBundle] = BundleSync(
            store, state_dir, loader, lambda bundle: self.served.append(bundle.version), **kwargs
        )

    @property
    def serving(self) -> str | None:
        return self.served[-1] if self.served else None


def publish(store: BundleStore, built: Path, version: str) -> None:
    store.push(built / version)
    store.promote(version)


def cached(state_dir: Path) -> list[str]:
    return sorted(p.name for p in (state_dir / "bundles").iterdir())


def history(state_dir: Path) -> list[str]:
    return [entry["version"] for entry in json.loads((state_dir / "history.json").read_text())]


def published_state(state_dir: Path, pid: int) -> dict[str, object] | None:
    """The state process `pid` published in `state_dir/processes` but its (checked) updated_at; None without a file."""
    path = state_dir / "processes" / f"{pid}.json"
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", state.pop("updated_at"))
    return state


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.02)


def test_sync_loads_the_promoted_bundle_then_swaps_on_promotion(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    node = Node(store, tmp_path / "state")
    assert node.sync.sync_once() is False
    assert node.sync.status().last_error is None

    publish(store, built, "v001")
    assert node.sync.sync_once() is True
    assert node.sync.sync_once() is False
    publish(store, built, "v002")
    assert node.sync.refresh() is True
    assert node.served == ["v001", "v002"]
    assert node.sync.active_version == "v002"
    assert cached(tmp_path / "state") == ["v001", "v002"]
    assert history(tmp_path / "state") == ["v002", "v001"]


def test_a_corrupt_bundle_in_the_store_is_refused_and_the_current_keeps_serving(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    node = Node(store, tmp_path / "state")
    publish(store, built, "v001")
    node.sync.sync_once()
    store.push(built / "v002")
    corrupt_file(store.root / "bundles" / "v002" / "content_index.hnsw")
    store.promote("v002")

    assert node.sync.sync_once() is False
    assert node.served == ["v001"]
    assert node.sync.status().last_error == (
        "bundle v002: content_index.hnsw does not match its checksum; the bundle is corrupt."
    )
    assert cached(tmp_path / "state") == ["v001"]


def test_a_corrupt_cached_copy_is_refused_then_downloaded_afresh(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    node = Node(store, state)
    publish(store, built, "v001")
    node.sync.sync_once()
    store.push(built / "v002")
    corrupt_file(store.download("v002", state / "bundles") / "posteriors.parquet")
    store.promote("v002")

    assert node.sync.sync_once() is False
    assert node.served == ["v001"]
    assert node.sync.status().last_error == (
        "bundle v002: posteriors.parquet does not match its checksum; the bundle is corrupt."
    )
    assert cached(state) == ["v001"]
    assert node.sync.sync_once() is True
    assert node.served == ["v001", "v002"]
    assert node.sync.status().last_error is None


def test_a_loader_failure_keeps_the_current_bundle(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    def loader(path: Path) -> LoadedBundle:
        if path.name == "v002":
            raise ValueError("precompute ran out of patience")
        return load_bundle(path)

    node = Node(store, tmp_path / "state", loader=loader)
    publish(store, built, "v001")
    node.sync.sync_once()
    publish(store, built, "v002")
    assert node.sync.sync_once() is False
    assert node.served == ["v001"]
    assert node.sync.status().last_error == "bundle v002 failed to load: ValueError: precompute ran out of patience"


CRASHING_PROCESS = """
import os, signal, sys
from pathlib import Path
from aura.bundle.loader import load_bundle
from aura.bundle.store import LocalBundleStore
from aura.edge.sync import BundleSync

def loader(path):
    if path.name == "v002":
        os.kill(os.getpid(), signal.SIGKILL)  # what a segfault in a native loader does to the process
    return load_bundle(path)

BundleSync(LocalBundleStore(Path(sys.argv[1])), Path(sys.argv[2]), loader, lambda bundle: None).sync_once()
"""


def test_a_version_that_crashed_a_process_is_not_loaded_again(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    publish(store, built, "v001")
    Node(store, state).sync.sync_once()
    publish(store, built, "v002")
    crashed = subprocess.run([sys.executable, "-c", CRASHING_PROCESS, str(store.root), str(state)], check=False)
    assert crashed.returncode == -signal.SIGKILL

    restarted = Node(store, state)
    assert restarted.sync.sync_once() is True
    assert restarted.served == ["v001"]
    error = restarted.sync.status().last_error or ""
    assert "bundle v002 crashed server process" in error and "does not load it again" in error
    assert restarted.sync.sync_once() is False and restarted.served == ["v001"]

    for marker in (state / "loading").iterdir():
        marker.unlink()
    assert restarted.sync.sync_once() is True
    assert restarted.served == ["v001", "v002"]


def test_an_unreachable_store_keeps_the_current_bundle(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    node = Node(store, tmp_path / "state")
    publish(store, built, "v001")
    node.sync.sync_once()
    store.root.rename(tmp_path / "unmounted")

    assert node.sync.sync_once() is False
    assert node.served == ["v001"]
    assert node.sync.status().last_error == (
        f"bundle store {store.root} is unreachable: the directory does not exist (an unmounted volume?)."
    )

    (tmp_path / "unmounted").rename(store.root)
    assert node.sync.sync_once() is False
    assert node.sync.status().last_error is None


def test_a_restart_while_the_store_is_unreachable_serves_the_cached_bundle(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    publish(store, built, "v001")
    Node(store, tmp_path / "state").sync.sync_once()
    store.root.rename(tmp_path / "unmounted")

    restarted = Node(store, tmp_path / "state")
    assert restarted.sync.sync_once() is True
    assert restarted.served == ["v001"]
    assert "is unreachable" in (restarted.sync.status().last_error or "")


def test_a_vanished_store_root_is_unreachable_and_never_recreated(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    publish(store, built, "v001")
    store.root.rename(tmp_path / "unmounted")
    unreachable = re.escape(
        f"bundle store {store.root} is unreachable: the directory does not exist (an unmounted volume?)."
    )
    segment = tmp_path / "segment.parquet"
    segment.write_bytes(b"PAR1")

    operations: list[Callable[[], object]] = [
        store.current,
        store.list_versions,
        lambda: store.read_manifest("v001"),
        lambda: store.download("v001", tmp_path / "downloads"),
        lambda: store.list_objects("logs/"),
        lambda: store.read_object("logs/s/x.parquet"),
        lambda: store.write_object("logs/feedback/date=2026-01-01/hour=00/n1.parquet", b"PAR1"),
        lambda: store.put_log("feedback", "date=2026-01-01/hour=00/n1.parquet", segment),
        lambda: store.list_logs("feedback"),
        lambda: store.delete_objects(["logs/s/x.parquet"]),
        lambda: store.promote("v001"),
        store.rollback,
    ]
    for operation in operations:
        with pytest.raises(BundleError, match=unreachable):
            operation()
    assert not store.root.exists()

    (tmp_path / "unmounted").rename(store.root)
    assert store.current() == "v001"
    assert store.list_objects("logs/") == {}


def test_a_restart_while_the_store_has_no_promoted_version_serves_the_cached_bundle(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    publish(store, built, "v001")
    publish(store, built, "v002")
    first = Node(store, state)
    assert first.sync.sync_once() is True
    (store.root / "CURRENT.json").unlink()
    no_version = f"bundle store {store.root} has no promoted version; serving the cached v002."

    # The running process keeps its version and says why the store shows none.
    assert first.sync.sync_once() is False
    assert first.served == ["v002"]
    assert first.sync.status().last_error == no_version

    restarted = Node(store, state)
    assert restarted.sync.sync_once() is True
    assert restarted.served == ["v002"]
    status = restarted.sync.status()
    assert (status.active_version, status.store_version, status.last_error) == ("v002", None, no_version)
    assert restarted.sync.sync_once() is False
    assert restarted.sync.status().last_error == no_version

    # An empty store root (e.g. recreated by hand) is the same.
    store.root.rename(tmp_path / "old-store")
    store.root.mkdir()
    again = Node(store, state)
    assert again.sync.sync_once() is True
    assert again.served == ["v002"]
    assert again.sync.status().last_error == no_version

    # A promotion ends it.
    publish(store, built, "v001")
    assert again.sync.sync_once() is True
    assert again.served == ["v002", "v001"]
    assert again.sync.status().last_error is None


def test_a_new_node_with_no_promoted_version_and_no_cache_serves_nothing(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    store.push(built / "v001")
    node = Node(store, tmp_path / "state")
    assert node.sync.sync_once() is False
    assert node.served == []
    assert node.sync.status().last_error is None


def test_a_failing_cached_version_under_no_promoted_version_is_reported(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    publish(store, built, "v001")
    Node(store, state).sync.sync_once()
    (store.root / "CURRENT.json").unlink()
    corrupt_file(state / "bundles" / "v001" / "posteriors.parquet")

    restarted = Node(store, state)
    assert restarted.sync.sync_once() is False
    assert restarted.served == []
    assert restarted.sync.status().last_error == (
        f"bundle store {store.root} has no promoted version; the cached v001 failed: "
        "bundle v001: posteriors.parquet does not match its checksum; the bundle is corrupt."
    )


def test_an_unreachable_s3_store_keeps_the_current_bundle(
    built: Path, s3_bucket: str, moto_endpoint: str, moto_server: ThreadedMotoServer, tmp_path: Path
) -> None:
    s3 = open_store(f"s3://{s3_bucket}/prod", endpoint_url=moto_endpoint)
    node = Node(s3, tmp_path / "state")
    publish(s3, built, "v001")
    assert node.sync.sync_once() is True
    moto_server.stop()

    assert node.sync.sync_once() is False
    assert node.served == ["v001"]
    assert node.sync.status().last_error.startswith(f"bundle store s3://{s3_bucket}/prod is unreachable:")


def test_retention_keeps_five_versions(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    node = Node(store, state)
    for version in VERSIONS:
        publish(store, built, version)
        node.sync.sync_once()
    assert cached(state) == ["v003", "v004", "v005", "v006", "v007"]
    assert history(state) == list(reversed(VERSIONS))

    node.sync.activate("v001")
    assert cached(state) == ["v001", "v004", "v005", "v006", "v007"]


def test_pin_activate_and_rollback(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    node = Node(store, state)
    for version in ("v001", "v002", "v003"):
        publish(store, built, version)
        node.sync.sync_once()

    assert node.sync.activate("v001") == SwapResult(active_version="v001", previous_version="v003")
    assert json.loads((state / "pin.json").read_text()) == {"version": "v001"}
    publish(store, built, "v004")
    assert node.sync.sync_once() is False
    status = node.sync.status()
    assert (status.active_version, status.pinned, status.store_version) == ("v001", "v001", "v004")

    assert node.sync.activate("v004") == SwapResult(active_version="v004", previous_version="v001")
    assert not (state / "pin.json").exists()
    assert history(state) == ["v004", "v001", "v003", "v002", "v001"]

    walked = [node.sync.rollback().active_version for _ in range(4)]
    assert walked == ["v001", "v003", "v002", "v001"]
    assert history(state) == ["v001"]
    assert node.sync.status().pinned == "v001"
    with pytest.raises(NotFound, match="this node served no version before v001; there is nothing to roll back to"):
        node.sync.rollback()
    assert node.served == ["v001", "v002", "v003", "v001", "v004", "v001", "v003", "v002", "v001"]


def test_rollback_before_any_bundle_is_not_found(store: LocalBundleStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no bundle is active"):
        Node(store, tmp_path / "state").sync.rollback()


@pytest.mark.parametrize(
    ("version", "error", "message"),
    [
        ("v009", NotFound, "bundle version v009 is not in the store"),
        ("../v001", InvalidRequest, "is not a valid version name"),
        ("v002", BundleError, "bundle v002 was not activated, v001 keeps serving: bundle v002: segments.parquet does"),
    ],
)
def test_activation_errors_leave_the_node_unchanged(
    store: LocalBundleStore, built: Path, tmp_path: Path, version: str, error: type, message: str
) -> None:
    state = tmp_path / "state"
    node = Node(store, state)
    publish(store, built, "v001")
    node.sync.sync_once()
    store.push(built / "v002")
    corrupt_file(store.root / "bundles" / "v002" / "segments.parquet")

    with pytest.raises(error, match=message):
        node.sync.activate(version)
    assert node.served == ["v001"]
    assert not (state / "pin.json").exists()


def test_status_lists_cached_and_store_versions(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    node = Node(store, tmp_path / "state")
    publish(store, built, "v001")
    node.sync.sync_once()
    store.push(built / "v002")

    status = node.sync.status()
    assert (status.active_version, status.pinned, status.store_version, status.last_error) == (
        "v001",
        None,
        "v001",
        None,
    )
    assert status.loaded_at is not None
    assert [(v.version, v.cached, v.in_store, v.active) for v in status.available] == [
        ("v002", False, True, False),
        ("v001", True, True, True),
    ]
    assert [v.manifest.bundle_version for v in status.available if v.manifest] == ["v002", "v001"]


def test_two_processes_sharing_a_state_dir_converge(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Node(store, state, poll_seconds=0.1)
    second = Node(store, state, poll_seconds=0.1)
    first.sync.start()
    second.sync.start()
    try:
        publish(store, built, "v001")
        wait_until(lambda: first.serving == second.serving == "v001")
        publish(store, built, "v002")
        wait_until(lambda: first.serving == second.serving == "v002")

        first.sync.activate("v001")
        wait_until(lambda: second.serving == "v001")
        first.sync.activate("v002")
        wait_until(lambda: second.serving == "v002")
    finally:
        first.sync.stop()
        second.sync.stop()
    assert first.served == second.served == ["v001", "v002", "v001", "v002"]
    assert cached(state) == ["v001", "v002"]
    assert history(state) == ["v002", "v001", "v002", "v001"]


def test_a_refresh_reaches_every_process_sharing_the_state_dir(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    first = Node(store, state, poll_seconds=600)
    second = Node(store, state, poll_seconds=600)
    second.sync.start()
    try:
        for version in ["v001", "v002"]:
            publish(store, built, version)
            assert first.sync.refresh() is True
            wait_until(lambda version=version: second.serving == version, timeout=5)
    finally:
        second.sync.stop()
    assert first.served == second.served == ["v001", "v002"]


def test_simultaneous_first_syncs_share_one_cached_copy(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    nodes = [Node(store, state) for _ in range(2)]
    publish(store, built, "v001")
    barrier = threading.Barrier(len(nodes))
    results: list[bool] = []

    def sync(node: Node) -> None:
        barrier.wait()
        results.append(node.sync.sync_once())

    threads = [threading.Thread(target=sync, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True, True]
    assert [node.served for node in nodes] == [["v001"], ["v001"]]
    assert [p.name for p in (state / "bundles").iterdir()] == ["v001"]


SIBLING_PROCESS = """
import sys
from pathlib import Path
from aura.bundle.loader import load_bundle
from aura.bundle.store import LocalBundleStore
from aura.edge.sync import BundleSync

sync = BundleSync(LocalBundleStore(Path(sys.argv[1])), Path(sys.argv[2]), load_bundle, lambda bundle: None)
sync.sync_once()
print(sync.active_version, flush=True)
sys.stdin.readline()
sync.stop()
"""


def start_sibling(store: LocalBundleStore, state_dir: Path) -> subprocess.Popen[str]:
    """Another server process of the node: it syncs once, then stops when a line arrives on its stdin."""
    return subprocess.Popen(
        [sys.executable, "-c", SIBLING_PROCESS, str(store.root), str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_process_writes_its_state_file_only_when_its_state_changes(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    pid = os.getpid()
    node = Node(store, state)
    node.sync.sync_once()
    assert published_state(state, pid) == {"pid": pid, "active_version": "", "loaded_at": "", "last_error": ""}

    publish(store, built, "v001")
    node.sync.sync_once()
    loaded_at = node.sync.status().loaded_at
    assert loaded_at is not None
    serving = {
        "pid": pid,
        "active_version": "v001",
        "loaded_at": loaded_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "last_error": "",
    }
    assert published_state(state, pid) == serving

    # An unchanged state is not written again: a removed file stays away.
    (state / "processes" / f"{pid}.json").unlink()
    node.sync.sync_once()
    assert published_state(state, pid) is None

    store.root.rename(tmp_path / "unmounted")
    node.sync.sync_once()
    unreachable = f"bundle store {store.root} is unreachable: the directory does not exist (an unmounted volume?)."
    assert published_state(state, pid) == {**serving, "last_error": unreachable}
    (tmp_path / "unmounted").rename(store.root)
    node.sync.sync_once()
    assert published_state(state, pid) == serving

    node.sync.stop()
    assert published_state(state, pid) is None


def test_status_reports_every_live_process_of_the_node(store: LocalBundleStore, built: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    publish(store, built, "v001")
    sibling = start_sibling(store, state)
    try:
        assert sibling.stdout is not None and sibling.stdin is not None
        assert sibling.stdout.readline() == "v001\n"
        node = Node(store, state)
        publish(store, built, "v002")
        node.sync.sync_once()

        processes = node.sync.status().processes
        assert [(p.pid, p.active_version, p.last_error) for p in processes] == sorted(
            [(os.getpid(), "v002", ""), (sibling.pid, "v001", "")]
        )
        assert all(p.loaded_at for p in processes)

        sibling.stdin.write("stop\n")
        sibling.stdin.flush()
        assert sibling.wait(timeout=30) == 0
        assert published_state(state, sibling.pid) is None
        assert [p.pid for p in node.sync.status().processes] == [os.getpid()]
    finally:
        sibling.kill()
        sibling.wait()


def test_a_dead_process_file_is_removed_and_an_unreadable_one_skipped(
    store: LocalBundleStore, built: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    publish(store, built, "v001")
    sibling = start_sibling(store, state)
    try:
        assert sibling.stdout is not None and sibling.stdout.readline() == "v001\n"
        node = Node(store, state)
        node.sync.sync_once()
        sibling_file = state / "processes" / f"{sibling.pid}.json"
        content = sibling_file.read_text()

        # A half-written file of a live process is skipped and left to its owner.
        sibling_file.write_text(content[: len(content) // 2])
        assert [p.pid for p in node.sync.status().processes] == [os.getpid()]
        assert sibling_file.exists()

        # A process killed without stopping leaves its file behind: ignored, then removed.
        sibling_file.write_text(content)
        assert len(node.sync.status().processes) == 2
        sibling.kill()
        sibling.wait()
        assert [p.pid for p in node.sync.status().processes] == [os.getpid()]
        assert not sibling_file.exists()
    finally:
        sibling.kill()
        sibling.wait()
