"""Edge logs -> store -> batch: a real node ranks and takes feedback, ships its closed segments on a graceful
stop, and the batch reads them back (from a local store and from S3 on moto) with feedback joined to decisions."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aura.batch.events import load_interactions
from aura.batch.retention import erase_user
from aura.bundle.store import LocalBundleStore, S3BundleStore
from aura.edge.logship import LogShipper
from aura.errors import BundleError
from aura.eventlog import EventLog
from aura.v1 import admin_service_pb2 as admin_pb
from aura.v1 import admin_service_pb2_grpc as admin_grpc
from aura.v1 import common_pb2
from aura.v1 import decision_service_pb2 as pb
from aura.v1 import decision_service_pb2_grpc as pb_grpc
from tests.conftest import ADMIN_TOKEN, seed_store, start_edge_node, stop_edge_node

pytest_plugins = ["tests.moto_fixture"]

VISITORS = ("anon_1", "anon_2", "anon_3")


def rank(stub: pb_grpc.DecisionServiceStub, anon_id: str) -> pb.RankResponse:
    ctx = common_pb2.UserContext(
        anon_id=anon_id,
        session_id=f"sess_{anon_id}",
        device="mobile",
        referrer="https://www.google.com/search?q=crm",
        page_type="index",
        consent=["analytics", "personalization"],
        geo=common_pb2.Geo(country="US", region="CA"),
    )
    context = {"campaign": "mail jane@example.com"}
    return stub.Rank(pb.RankRequest(surface_id="homepage.hero", user_ctx=ctx, limit=3, context=context))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run a node, make 6 decisions (2 per visitor) and click the second item of each, erase anon_3, stop it."""
    tmp = tmp_path_factory.mktemp("logship")
    store_dir = tmp / "store"
    seed_store(store_dir, tmp / "built", "20260101T000000Z-aaaaaa")
    node = start_edge_node(tmp, store_dir, gateway=False)
    decisions = []
    try:
        with grpc.insecure_channel(node.grpc_address) as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            for anon_id in VISITORS * 2:
                ranked = rank(stub, anon_id)
                clicked = ranked.items[1].content_id
                stub.Feedback(
                    pb.FeedbackRequest(
                        request_id=ranked.request_id,
                        item_id=clicked,
                        reward=pb.Reward(type=pb.REWARD_TYPE_CLICK, value=1.0),
                    )
                )
                decisions.append((ranked, anon_id, clicked))
            admin_grpc.AdminServiceStub(channel).EraseUser(
                admin_pb.EraseUserRequest(user_id="anon_3"), metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)
            )
    finally:
        assert stop_edge_node(node) == 0
    return {"node": node, "decisions": decisions, "store": LocalBundleStore(store_dir)}


def expected_rows(decisions: list, erased: str = "anon_3") -> list[tuple]:
    rows = []
    for ranked, anon_id, clicked in decisions:
        if anon_id == erased:
            continue
        for position, item in enumerate(ranked.items, start=1):
            reward = 1.0 if item.content_id == clicked else 0.0
            rows.append((ranked.request_id, "impression", item.content_id, position, reward, anon_id))
        rows.append((ranked.request_id, "click", clicked, 2, 1.0, anon_id))
    return sorted(rows)


def observed_rows(table: pa.Table) -> list[tuple]:
    columns = ("request_id", "type", "content_id", "position", "reward", "anon_id")
    return sorted(tuple(r[c] for c in columns) for r in table.to_pylist())


def test_the_node_ships_its_closed_segments_on_a_graceful_stop(served: dict) -> None:
    logs_root = served["node"].state_dir / "logs"
    local = sorted(p.relative_to(logs_root).as_posix() for p in logs_root.glob("*/date=*/hour=*/*.parquet"))
    shipped = served["store"].list_objects("logs/")
    assert {k.split("/")[1] for k in shipped} == {"decisions", "feedback", "admin"}
    assert sorted(k.removeprefix("logs/") for k in shipped) == local
    assert not list(logs_root.glob("*/_open/*.arrow"))


def test_load_interactions_joins_feedback_to_decisions_from_the_local_store(served: dict) -> None:
    table = load_interactions(served["store"])
    assert observed_rows(table) == expected_rows(served["decisions"])
    ranked = served["decisions"][0][0]
    first = next(r for r in table.to_pylist() if r["request_id"] == ranked.request_id and r["position"] == 1)
    assert (first["surface_id"], first["bundle_version"], first["device"]) == (
        "homepage.hero",
        "20260101T000000Z-aaaaaa",
        "mobile",
    )
    assert (first["segment_id"], first["segment_source"]) == (ranked.segment.id, "cold_start")
    assert 0.0 < first["propensity"] <= 1.0
    # The shipper scrubbed the campaign before upload; the edge logged it raw.
    assert first["campaign"] == "mail [email]"


def test_ship_to_s3_and_read_back(served: dict, moto_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = S3BundleStore(s3_bucket, "prod", endpoint_url=moto_endpoint, page_size=2)
    shipper = LogShipper(served["node"].state_dir / "logs", store, "test-node")
    count = shipper.ship_once()
    assert count == len(served["store"].list_objects("logs/"))
    assert shipper.ship_once() == 0
    table = load_interactions(store, cache_dir=tmp_path / "cache")
    assert observed_rows(table) == expected_rows(served["decisions"])
    # The erasure job works on S3 too; the next read drops the cached copies of the rewritten segments.
    report = erase_user(store, "anon_1")
    assert report.rows_removed["decisions"] == 2
    table = load_interactions(store, cache_dir=tmp_path / "cache")
    assert observed_rows(table) == [r for r in expected_rows(served["decisions"]) if r[-1] != "anon_1"]
    cached = [pq.read_table(p)["anon_id"].to_pylist() for p in (tmp_path / "cache" / "decisions").rglob("*.parquet")]
    assert "anon_1" not in [v for values in cached for v in values]


def write_closed_segment(logs_root: Path, stream: str = "feedback") -> EventLog:
    event_log = EventLog(logs_root, stream, node_id="n1", flush_interval=0.05)
    event_log.append(event_log.record(event_id="x", ts=datetime.now(UTC)))
    event_log.close()
    return event_log


def test_open_segments_stay_and_failed_uploads_are_retried(tmp_path: Path, moto_server, moto_endpoint: str) -> None:
    logs_root = tmp_path / "logs"
    write_closed_segment(logs_root)
    still_open = EventLog(logs_root, "decisions", node_id="n1", flush_interval=0.05)
    still_open.append(still_open.record(event_id="open", ts=datetime.now(UTC)))
    still_open.flush()
    try:
        store = S3BundleStore("missing-bucket", endpoint_url=moto_endpoint)
        shipper = LogShipper(logs_root, store, "n1", interval_seconds=0.05)
        with pytest.raises(BundleError, match="specified bucket does not exist"):
            shipper.ship_once()
        shipper.start()
        deadline = time.monotonic() + 10  # two failed rounds, 0.1 s of back-off apart, on a busy machine too
        while shipper.failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        shipper.stop(final_round=False)
        assert shipper.failures >= 2
        assert len(list(logs_root.glob("feedback/date=*/hour=*/*.parquet"))) == 1
        # The store comes back: the next round ships the closed segment, never the open one.
        boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket="missing-bucket")
        assert shipper.ship_once() == 1
        assert [k.split("/")[1] for k in store.list_objects("logs/")] == ["feedback"]
    finally:
        still_open.close()


def test_local_copies_go_only_after_upload_and_the_retention_window(tmp_path: Path) -> None:
    logs_root = tmp_path / "logs"
    write_closed_segment(logs_root)
    write_closed_segment(logs_root, "admin")
    old_segment = next(logs_root.glob("feedback/date=*/hour=*/*.parquet"))
    new_segment = next(logs_root.glob("admin/date=*/hour=*/*.parquet"))
    old = time.time() - 7200
    os.utime(old_segment, (old, old))
    (tmp_path / "not-a-directory").write_text("")
    broken = LogShipper(logs_root, LocalBundleStore(tmp_path / "not-a-directory"), "n1", keep_local_seconds=3600)
    with pytest.raises(BundleError, match=r"not-a-directory is unreachable: it is not a directory"):
        broken.ship_once()
    assert old_segment.exists()
    (tmp_path / "store").mkdir()
    store = LocalBundleStore(tmp_path / "store")
    shipper = LogShipper(logs_root, store, "n1", keep_local_seconds=3600)
    assert shipper.ship_once() == 2
    # Both are in the store; only the one older than the window left the node.
    assert sorted(k.split("/")[1] for k in store.list_objects("logs/")) == ["admin", "feedback"]
    assert (old_segment.exists(), new_segment.exists()) == (False, True)
    assert shipper.ship_once() == 0


def test_a_vanished_local_store_is_not_recreated_and_the_segments_wait(tmp_path: Path) -> None:
    logs_root = tmp_path / "logs"
    write_closed_segment(logs_root)
    segment = next(logs_root.glob("feedback/date=*/hour=*/*.parquet"))
    old = time.time() - 7200
    os.utime(segment, (old, old))
    (tmp_path / "store").mkdir()
    store = LocalBundleStore(tmp_path / "store")
    store.root.rename(tmp_path / "unmounted")
    shipper = LogShipper(logs_root, store, "n1", keep_local_seconds=3600)

    with pytest.raises(BundleError, match=r"store is unreachable: the directory does not exist \(an unmounted volume"):
        shipper.ship_once()
    assert not store.root.exists()
    assert segment.exists()

    (tmp_path / "unmounted").rename(store.root)
    assert shipper.ship_once() == 1
    assert [k.split("/")[1] for k in store.list_objects("logs/")] == ["feedback"]
    assert not segment.exists()
