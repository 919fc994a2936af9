"""The real edge node over the wire: gRPC contract, errors, durable feedback, admin and hot swap."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from aura.bundle.store import open_store
from aura.eventlog import read_log
from aura.v1 import admin_service_pb2 as admin_pb
from aura.v1 import admin_service_pb2_grpc as admin_grpc
from aura.v1 import common_pb2
from aura.v1 import decision_service_pb2 as pb
from aura.v1 import decision_service_pb2_grpc as pb_grpc
from tests.bundle_factory import corrupt_file, make_tiny_bundle
from tests.conftest import ADMIN_TOKEN, CONFIG_SURFACES, seed_store, start_edge_node, stop_edge_node

V1 = "20260101T000000Z-aaaaaa"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def rank_request(**overrides) -> pb.RankRequest:
    ctx = common_pb2.UserContext(
        anon_id="anon_abc123",
        session_id="sess_1",
        device="mobile",
        referrer="https://www.google.com/search?q=crm",
        page_type="index",
        consent=["analytics", "personalization"],
        geo=common_pb2.Geo(country="US", region="CA"),
    )
    request = pb.RankRequest(surface_id="homepage.hero", user_ctx=ctx, limit=3)
    for key, value in overrides.items():
        setattr(request, key, value)
    return request


@pytest.fixture(scope="module")
def channel(edge_node):
    with grpc.insecure_channel(edge_node.grpc_address) as chan:
        yield chan


@pytest.fixture(scope="module")
def decisions(channel):
    return pb_grpc.DecisionServiceStub(channel)


@pytest.fixture(scope="module")
def admin(channel):
    return admin_grpc.AdminServiceStub(channel)


def test_rank_returns_a_full_decision(decisions) -> None:
    response = decisions.Rank(rank_request(explain=True))
    assert response.request_id.startswith("req_")
    assert response.surface == "homepage.hero"
    assert len(response.items) == 3
    assert [item.position for item in response.items] == [1, 2, 3]
    assert all(0 < item.propensity <= 1 and item.metadata.title and item.reason for item in response.items)
    assert (response.segment.id, response.segment.intent) == ("seg_learn_mobile_new", "learn")
    assert response.segment.confidence == pytest.approx(0.85)
    assert response.experiment.variant == "thompson_sampling" and not response.experiment.holdout
    assert (response.policy_version, response.cache_ttl, response.bundle_version) == ("2025-10-01", 300, V1)
    assert response.explanation.segment_source == "assignment"
    assert len(response.explanation.scores) == 3


@pytest.mark.parametrize(
    ("overrides", "code", "message"),
    [
        ({"surface_id": "nope"}, grpc.StatusCode.NOT_FOUND, "unknown surface 'nope'"),
        ({"surface_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "surface_id is required"),
        ({"limit": 50}, grpc.StatusCode.INVALID_ARGUMENT, "limit must be between 1 and 5"),
        (
            {"user_ctx": common_pb2.UserContext(consent=["analytics"])},
            grpc.StatusCode.PERMISSION_DENIED,
            "personalization consent is required",
        ),
        (
            {"user_ctx": common_pb2.UserContext(device="fridge", consent=["personalization"])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "device must be one of",
        ),
        (
            {"user_ctx": common_pb2.UserContext(geo=common_pb2.Geo(country="USA"), consent=["personalization"])},
            grpc.StatusCode.INVALID_ARGUMENT,
            "ISO 3166-1",
        ),
    ],
)
def test_rank_errors_carry_the_right_status(decisions, overrides, code, message) -> None:
    request = rank_request()
    for key, value in overrides.items():
        if key == "user_ctx":
            request.user_ctx.CopyFrom(value)
        else:
            setattr(request, key, value)
    with pytest.raises(grpc.RpcError) as error:
        decisions.Rank(request)
    assert error.value.code() == code
    assert message in error.value.details()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\xff", "not a RankRequest: its protobuf encoding is malformed"),
        (b"\x0a\x02\xc3\x28", "not a RankRequest: a string field is not valid UTF-8"),
    ],
)
def test_bytes_that_are_not_a_rank_request_are_invalid_argument(channel, data: bytes, message: str) -> None:
    rank = channel.unary_unary("/aura.v1.DecisionService/Rank")
    with pytest.raises(grpc.RpcError) as error:
        rank(data)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/aura.v1.DecisionService/Feedback", "aura.v1.FeedbackRequest"),
        ("/aura.v1.DecisionService/GetSegments", "aura.v1.GetSegmentsRequest"),
        ("/aura.v1.DecisionService/Search", "aura.v1.SearchRequest"),
        ("/aura.v1.AdminService/ActivateBundle", "aura.v1.ActivateBundleRequest"),
    ],
)
@pytest.mark.parametrize("data", [b"\x0a\xff", b"\x0a\x02\xc3\x28"], ids=["truncated", "not-utf8"])
def test_bytes_that_are_not_the_methods_message_are_invalid_argument(channel, path: str, message: str, data) -> None:
    call = channel.unary_unary(path)
    with pytest.raises(grpc.RpcError) as error:
        call(data)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == f"The request is not a valid {message}."


def test_feedback_is_durable_idempotent_and_learned_from(edge_node, decisions) -> None:
    ranked = decisions.Rank(rank_request())
    item = ranked.items[0].content_id
    request = pb.FeedbackRequest(
        request_id=ranked.request_id,
        item_id=item,
        reward=pb.Reward(type=pb.REWARD_TYPE_CLICK, value=1.0, timestamp="2026-11-27T14:30:00Z"),
        context=pb.FeedbackContext(position=1, dwell_time=45.2, scroll_depth=0.8),
    )
    posterior_file = edge_node.state_dir / "posteriors" / f"{V1}.f64"
    before = np.fromfile(posterior_file, dtype=np.float64)
    first = decisions.Feedback(request)
    assert first.status == "accepted" and first.feedback_id.startswith("fb_")
    # Acknowledged means on disk: the log holds it now, before any flush interval.
    logged = read_log(edge_node.state_dir / "logs", "feedback").to_pylist()
    mine = [row for row in logged if row["request_id"] == ranked.request_id]
    assert len(mine) == 1
    assert (mine[0]["item_id"], mine[0]["position"], mine[0]["reward_type"]) == (item, 1, "click")
    assert mine[0]["surface_id"] == "homepage.hero" and mine[0]["segment_id"] == "seg_learn_mobile_new"
    after = np.fromfile(posterior_file, dtype=np.float64)
    alphas = slice(0, before.size // 2)
    assert after[alphas].sum() == pytest.approx(before[alphas].sum() + 1.0)

    retry = decisions.Feedback(request)
    assert retry.feedback_id == first.feedback_id
    logged = read_log(edge_node.state_dir / "logs", "feedback").to_pylist()
    assert sum(row["request_id"] == ranked.request_id for row in logged) == 1
    assert np.array_equal(np.fromfile(posterior_file, dtype=np.float64), after)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: setattr(r, "item_id", "c999"), "was not part of decision"),
        (lambda r: setattr(r, "request_id", "req_forged"), "request_id"),
        (lambda r: setattr(r.reward, "value", 3.0), r"reward.value must be in \[0, 1\]"),
        (lambda r: setattr(r.reward, "type", pb.REWARD_TYPE_UNSPECIFIED), "reward.type must be one of"),
        (lambda r: setattr(r.reward, "timestamp", "yesterday"), "RFC 3339"),
    ],
)
def test_bad_feedback_is_rejected(decisions, mutate, message) -> None:
    ranked = decisions.Rank(rank_request())
    request = pb.FeedbackRequest(
        request_id=ranked.request_id,
        item_id=ranked.items[0].content_id,
        reward=pb.Reward(type=pb.REWARD_TYPE_CLICK, value=1.0),
    )
    mutate(request)
    with pytest.raises(grpc.RpcError) as error:
        decisions.Feedback(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, error.value.details())


def logged_decision(edge_node, request_id: str) -> dict:
    """The decision log's row of `request_id`, once the node has written it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logged = read_log(edge_node.state_dir / "logs", "decisions").to_pylist()
        rows = [row for row in logged if row["event_id"] == request_id]
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"decision {request_id} was not logged within 10 s")


def test_decisions_are_logged_with_propensities_and_seed(edge_node, decisions) -> None:
    request = rank_request(explain=True)
    request.context["campaign"] = "summer_sale"
    ranked = decisions.Rank(request)
    row = logged_decision(edge_node, ranked.request_id)
    assert row["seed"] == ranked.seed and row["bundle_version"] == V1
    assert row["referrer_host"] == "www.google.com"
    expected = {
        "policy_version": ranked.policy_version,
        "surface_id": "homepage.hero",
        "segment_id": ranked.segment.id,
        "segment_source": ranked.explanation.segment_source,
        "segment_confidence": pytest.approx(ranked.segment.confidence, abs=1e-4),
        "holdout": ranked.experiment.holdout,
        "anon_id": "anon_abc123",
        "session_id": "sess_1",
        "device": "mobile",
        "page_type": "index",
        "country": "US",
        "region": "CA",
        "consent": ["analytics", "personalization"],
        "context_json": '{"campaign":"summer_sale"}',
        "exploration_rate": pytest.approx(ranked.explanation.exploration_rate),
    }
    assert {field: row[field] for field in expected} == expected
    assert row["eligible_count"] >= len(ranked.items) and row["node_id"]
    assert [i["content_id"] for i in row["items"]] == [i.content_id for i in ranked.items]
    assert [i["propensity"] for i in row["items"]] == pytest.approx([i.propensity for i in ranked.items], abs=1e-6)


def test_segments_and_search(decisions) -> None:
    segments = decisions.GetSegments(pb.GetSegmentsRequest(user_id="anon_abc123"))
    assert segments.segments[0].id == "seg_learn_mobile_new"
    assert segments.segments[0].features["intent"] == "learn"
    with pytest.raises(grpc.RpcError) as error:
        decisions.GetSegments(pb.GetSegmentsRequest(user_id="anon_nobody"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    found = decisions.Search(pb.SearchRequest(query="getting started with analytics", limit=5))
    assert 0 < len(found.results) <= 5
    filtered = decisions.Search(
        pb.SearchRequest(query="finance", filters=pb.SearchFilters(topics=["finance"]), limit=20)
    )
    assert filtered.results and all("finance" in r.topics for r in filtered.results)
    with pytest.raises(grpc.RpcError) as error:
        decisions.Search(pb.SearchRequest(query="  "))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_standard_health_and_reflection(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "aura.v1.DecisionService", "aura.v1.AdminService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"aura.v1.DecisionService", "aura.v1.AdminService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer wrong"),)])
def test_changing_the_node_needs_the_admin_token(admin, metadata) -> None:
    with pytest.raises(grpc.RpcError) as error:
        admin.EraseUser(admin_pb.EraseUserRequest(user_id="anon_abc123"), metadata=metadata)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "AURA_ADMIN_TOKEN" in error.value.details()


def test_admin_status_and_erasure(admin, decisions, edge_node) -> None:
    status = admin.GetBundleStatus(admin_pb.GetBundleStatusRequest())
    assert status.active_version == V1 and status.store_version == V1 and not status.pinned
    indexer = admin.GetIndexerStatus(admin_pb.GetIndexerStatusRequest())
    assert (indexer.content_items, indexer.embedding_dim) == (20, 384)
    job = admin.TriggerRetraining(admin_pb.TriggerRetrainingRequest(reason="weekly"), metadata=ADMIN)
    assert job.status == "queued" and job.job_id.startswith("job_")
    with pytest.raises(grpc.RpcError) as error:
        admin.ActivateBundle(admin_pb.ActivateBundleRequest(version="20990101T000000Z-ffffff"), metadata=ADMIN)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND

    erased = admin.EraseUser(admin_pb.EraseUserRequest(user_id="anon_abc123"), metadata=ADMIN)
    assert erased.status == "erased"
    with pytest.raises(grpc.RpcError) as error:
        decisions.GetSegments(pb.GetSegmentsRequest(user_id="anon_abc123"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # The erased visitor is segmented from context again, as a stranger would be, and logged without an id.
    ranked = decisions.Rank(rank_request(explain=True))
    assert ranked.explanation.segment_source == "cold_start"
    logged = logged_decision(edge_node, ranked.request_id)
    assert (logged["anon_id"], logged["session_id"]) == ("", "")


def _hammer(address: str, stop: threading.Event, outcomes: list, versions: set) -> None:
    with grpc.insecure_channel(address) as chan:
        stub = pb_grpc.DecisionServiceStub(chan)
        while not stop.is_set():
            try:
                versions.add(stub.Rank(rank_request(), timeout=5).bundle_version)
                outcomes.append("ok")
            except grpc.RpcError as exc:
                outcomes.append(exc.code())


def test_swap_under_load_drops_nothing_and_a_corrupt_bundle_never_serves(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    seed_store(store_dir, tmp_path / "built", V1)
    node = start_edge_node(tmp_path, store_dir, workers=2, gateway=False)
    try:
        store = open_store(str(store_dir))
        stop, outcomes, versions = threading.Event(), [], set()
        threads = [
            threading.Thread(target=_hammer, args=(node.grpc_address, stop, outcomes, versions)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        v2 = "20260102T000000Z-bbbbbb"
        store.push(make_tiny_bundle(tmp_path / "built", v2, 30, surfaces=CONFIG_SURFACES, seed=1))
        store.promote(v2)
        deadline = time.monotonic() + 20
        while v2 not in versions and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join()
        assert v2 in versions and V1 in versions
        assert outcomes and all(o == "ok" for o in outcomes), {o for o in outcomes if o != "ok"}

        bad = "20260103T000000Z-cccccc"
        store.push(make_tiny_bundle(tmp_path / "built", bad, 10, surfaces=CONFIG_SURFACES))
        corrupt_file(store_dir / "bundles" / bad / "posteriors.parquet")
        store.promote(bad)
        with grpc.insecure_channel(node.grpc_address) as chan:
            admin = admin_grpc.AdminServiceStub(chan)
            deadline = time.monotonic() + 20
            status = admin.GetBundleStatus(admin_pb.GetBundleStatusRequest())
            while "checksum" not in status.last_error and time.monotonic() < deadline:
                time.sleep(0.2)
                status = admin.GetBundleStatus(admin_pb.GetBundleStatusRequest())
            assert status.active_version == v2
            assert "corrupt" in status.last_error or "checksum" in status.last_error
            assert pb_grpc.DecisionServiceStub(chan).Rank(rank_request()).bundle_version == v2

            rolled = admin.RollbackBundle(admin_pb.RollbackBundleRequest(), metadata=ADMIN)
            assert (rolled.active_version, rolled.previous_version) == (V1, v2)
            assert admin.GetBundleStatus(admin_pb.GetBundleStatusRequest()).pinned

            # Whichever process answers reports both; the other follows the pin within about a second.
            deadline = time.monotonic() + 20
            processes = admin.GetBundleStatus(admin_pb.GetBundleStatusRequest()).processes
            while {(p.active_version, p.last_error) for p in processes} != {(V1, "")} and time.monotonic() < deadline:
                time.sleep(0.2)
                processes = admin.GetBundleStatus(admin_pb.GetBundleStatusRequest()).processes
            assert len({p.pid for p in processes}) == 2
            assert [(p.active_version, p.last_error) for p in processes] == [(V1, "")] * 2
    finally:
        assert stop_edge_node(node) == 0


def test_a_first_time_visitor_is_segmented_by_a_custom_context_key(tmp_path: Path) -> None:
    plan_rule = {"context_json": '{"plan": "enterprise"}', "segment_id": "seg_learn_mobile_new", "confidence": 0.9}
    store_dir = tmp_path / "store"
    seed_store(store_dir, tmp_path / "built", V1, cold_start=[plan_rule])
    node = start_edge_node(tmp_path, store_dir, gateway=False)
    try:
        with grpc.insecure_channel(node.grpc_address) as chan:
            stub = pb_grpc.DecisionServiceStub(chan)
            request = rank_request(explain=True)
            request.user_ctx.anon_id, request.user_ctx.device = "first_timer", "desktop"
            request.context["plan"] = "enterprise"
            ranked = stub.Rank(request)
            assert (ranked.segment.id, ranked.explanation.segment_source) == ("seg_learn_mobile_new", "cold_start")
            assert ranked.segment.confidence == pytest.approx(0.9)
            request.context["plan"] = "starter"
            other = stub.Rank(request)
            assert (other.segment.id, other.explanation.segment_source) == ("seg_global", "popularity")
    finally:
        assert stop_edge_node(node) == 0
