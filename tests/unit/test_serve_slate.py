"""Rank's compiled path (memoized slate plans and `serve_slate`) against the pure decision core.

Every Rank answer must be the decision `decide()` makes from the same seed and posterior state: the same items,
scores, propensities, reasons, segment and explanation, its impressions counted on the posteriors, its request id
naming its slate, and its decision log record the same decision.
"""

from __future__ import annotations

import os
import random
import select
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from aura.config import load_config
from aura.eventlog import read_log
from aura.server import decision
from aura.server._native import planned_slate
from aura.server.decision import Traffic, decide, exploration_ledger, segment_resolver
from aura.server.posterior_state import EXAMINATION_WEIGHTS
from aura.server.request_id import RequestIdCodec, item_fingerprint
from aura.server.servicer import DecisionService, node_deps
from aura.server.serving import build_serving_index
from aura.server.state import ServingHolder, prepare_serving
from aura.server.validation import rank_query
from aura.v1 import common_pb2
from aura.v1 import decision_service_pb2 as pb
from tests.bundle_factory import TINY_SEGMENTS, make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 40
SURFACES = {
    "hero": {"max_items": 6, "diversity": True, "freshness_boost": 0.5, "allowed_policy_flags": ["age_restricted"]},
    "feed": {"max_items": 20, "diversity": False, "freshness_boost": 0.0, "cache_ttl": 0},
}
CONTENT = {
    "jurisdictions": [[["US"], ["EU"], [], ["US", "EU"]][i % 4] for i in range(N_ITEMS)],
    "device_suitability": [[["mobile"], ["desktop"], [], ["mobile", "tablet"]][i % 4] for i in range(N_ITEMS)],
    "policy_flags": [["age_restricted"] if i % 7 == 0 else ["legal"] if i % 11 == 0 else [] for i in range(N_ITEMS)],
    "personas": [[["beginner"], [], ["expert"]][i % 3] for i in range(N_ITEMS)],
}
COLD_START = [
    {"device": "mobile", "segment_id": TINY_SEGMENTS[1], "confidence": 0.6},
    {"device": "desktop", "segment_id": TINY_SEGMENTS[1], "confidence": 0.3},  # below holdout_below: held out
    {"campaign": "spring", "segment_id": TINY_SEGMENTS[1], "confidence": 0.9},  # as confident as an assignment
    {"page_type": "article", "segment_id": TINY_SEGMENTS[0], "confidence": 0.95},  # the global segment, as held out
]


@pytest.fixture
def node(tmp_path: Path):
    """A DecisionService on a tiny bundle with two surfaces, exploration on half the decisions, no throttle."""
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    policies = yaml.safe_load((REPO / "config" / "policies.yaml").read_text())
    policies["decisioning"]["exploration"].update(global_budget=0.5, per_user_cap=0.6, throttle_high_traffic=False)
    (config_dir / "policies.yaml").write_text(yaml.safe_dump(policies))
    (config_dir / "surfaces.yaml").write_text(yaml.safe_dump({"surfaces": SURFACES}))
    config = load_config({"AURA_CONFIG_DIR": str(config_dir), "CONSENT_REQUIRED": "false"})
    bundle_dir = make_tiny_bundle(
        tmp_path / "built", "v1", N_ITEMS, surfaces=tuple(SURFACES), content=CONTENT, cold_start=COLD_START
    )
    serving = prepare_serving(bundle_dir, config, None)
    holder = ServingHolder()
    holder.swap(serving)
    deps = node_deps(config, holder, tmp_path / "state", lambda text: np.zeros(384), node_id="n1")
    yield DecisionService(deps), deps, serving, config
    for event_log in (deps.decisions, deps.feedback, deps.admin_log):
        event_log.close()


def random_request(rng: random.Random, ids: list[str]) -> pb.RankRequest:
    """A Rank request with a random mix of everything that changes a decision."""
    surface_id = rng.choice(list(SURFACES))
    consent = [scope for scope in ("personalization", "analytics", "age_verified") if rng.random() < 0.6]
    return pb.RankRequest(
        surface_id=surface_id,
        user_ctx=common_pb2.UserContext(
            anon_id=rng.choice(["anon_abc123", "v1", "v2", "v3", ""]),
            session_id=rng.choice(["", "s1"]),
            device=rng.choice(["", "mobile", "desktop", "tablet"]),
            referrer=rng.choice(["", "https://www.google.com/search?q=x", "https://example.org/a"]),
            page_type=rng.choice(["", "home", "article"]),
            consent=consent,
            geo=common_pb2.Geo(country=rng.choice(["", "US", "DE", "FR", "BR"]), region=rng.choice(["", "CA"])),
        ),
        candidates=[*rng.sample(ids, 12), "unknown"] if rng.random() < 0.1 else [],
        limit=rng.choice([0, 1, 3, SURFACES[surface_id]["max_items"]]),
        # Always a time of day: without one, the parser takes the clock's, which could change between two parses.
        context={
            "time_of_day": rng.choice(["morning", "evening"]),
            **({"campaign": "spring"} if rng.random() < 0.3 else {}),
        },
        explain=rng.random() < 0.15,
    )


def test_rank_serves_exactly_the_decision_of_decide(node, tmp_path: Path) -> None:
    service, deps, serving, config = node
    index = serving.index
    # The reference decides on an index of its own whose memos are emptied before every decision, so a plan
    # that Rank reuses for a request it does not fit shows as a difference.
    reference = build_serving_index(index.bundle, config.surfaces, config.policies, now=index.built_at)
    memos = (reference.plans, reference.pools, reference.reason_tails, reference.cold_starts)
    ids = list(index.bundle.content.ids)
    codec = RequestIdCodec(config.settings.request_id_secret)
    shares = exploration_ledger(config.policies)  # the visitors' shares, as Rank's own ledger counts them
    rng = random.Random(5)
    expected_log = []
    explored_any = held_out_any = removed_any = False
    for _ in range(400):
        body = random_request(rng, ids).SerializeToString()
        before = serving.posteriors.params.copy()
        response = pb.RankResponse.FromString(service.Rank(body, None))

        query = rank_query(body, config.surfaces)
        traffic = Traffic(shares.share(query.anon_id), 0.0)
        for memo in memos:
            memo.clear()
        decision = decide(reference, before, query, config.policies, traffic, response.seed, consent_required=False)
        items = decision.items
        shares.record(query.anon_id, decision.explored_slot >= 0)
        assert [(i.content_id, i.position, i.score, i.propensity, i.explored, i.reason) for i in response.items] == [
            (ids[item.content_row], item.position, item.score, item.propensity, item.explored, item.reason)
            for item in items
        ]
        resolution = decision.resolution
        assert (response.segment.id, response.segment.intent, response.experiment.holdout) == (
            resolution.segment.id,
            resolution.segment.intent,
            resolution.holdout,
        )
        assert response.segment.confidence == round(resolution.confidence, 4)
        assert response.experiment.variant == ("holdout" if resolution.holdout else config.settings.bandit_algorithm)

        ref = codec.decode(response.request_id)
        assert ref.item_fingerprints == tuple(item_fingerprint(ids[item.content_row]) for item in items)
        assert (ref.bundle_tag, index.surface_ids[ref.surface_index], index.segment_ids[ref.segment_index]) == (
            serving.bundle_tag,
            query.surface_id,
            decision.cell_segment_id,
        )

        impressions = before.copy()
        beta = impressions[index.n_posteriors :]
        beta[decision.posterior_rows] += EXAMINATION_WEIGHTS[: len(items)]
        np.testing.assert_array_equal(serving.posteriors.params, impressions)

        if query.explain:
            explanation = response.explanation
            assert [(r.content_id, r.rule) for r in explanation.removed] == [
                (ids[row], rule) for row, rule in decision.removed
            ]
            assert [(s.content_id, s.sampled_value, s.posterior_alpha) for s in explanation.scores] == [
                (ids[item.content_row], item.sample, item.alpha) for item in items
            ]
            assert (explanation.segment_source, explanation.exploration_rate) == (
                resolution.source,
                decision.exploration_rate,
            )
            removed_any = removed_any or bool(decision.removed)
        else:
            assert not response.HasField("explanation")
        personalized = resolution.source != "no_consent"
        expected_log.append(
            {
                "event_id": response.request_id,
                "surface_id": query.surface_id,
                "segment_id": decision.cell_segment_id,
                "segment_source": resolution.source,
                "holdout": resolution.holdout,
                "anon_id": query.anon_id if personalized else "",
                "device": query.device,
                "seed": response.seed,
                "exploration_rate": decision.exploration_rate,
                "eligible_count": decision.eligible_count,
                "items": [(ids[i.content_row], i.position, i.score, i.propensity, i.explored) for i in items],
            }
        )
        explored_any = explored_any or decision.explored_slot >= 0
        held_out_any = held_out_any or resolution.holdout
    assert explored_any and held_out_any and removed_any  # the requests reached every branch that matters here

    deps.decisions.close()
    rows = read_log(tmp_path / "state" / "logs", "decisions").to_pylist()
    logged = [
        {
            **{name: row[name] for name in expected_log[0] if name != "items"},
            "items": [tuple(i.values()) for i in row["items"]],
        }
        for row in rows
    ]
    assert logged == expected_log


def test_a_plan_is_reused_only_by_requests_of_its_kind(node) -> None:
    service, _, serving, config = node
    request = pb.RankRequest(
        surface_id="hero",
        user_ctx=common_pb2.UserContext(anon_id="v1", device="mobile", consent=["personalization"]),
        context={"time_of_day": "morning"},
    )
    service.Rank(request.SerializeToString(), None)
    service.Rank(request.SerializeToString(), None)
    assert len(serving.index.plans) == 1
    # The compiled lookup finds the plan Python stored: Rank's next request of this kind runs no Python plan code.
    resolver = segment_resolver(serving.index, config.policies, consent_required=False)
    plan, confidence = planned_slate(
        resolver, serving.index.plans, rank_query(request.SerializeToString(), config.surfaces)
    )
    assert plan is next(iter(serving.index.plans.values())) and confidence == 0.6  # the mobile cold-start rule
    request.user_ctx.consent.append("age_verified")  # unlocks the age-restricted items: another pool
    service.Rank(request.SerializeToString(), None)
    request.explain = True  # explained and candidate requests get a plan of their own, not memoized
    service.Rank(request.SerializeToString(), None)
    assert len(serving.index.plans) == 2
    first, second = serving.index.plans.values()
    assert second.eligible_count > first.eligible_count


def test_plans_are_emptied_with_the_pools_they_hold(node, monkeypatch) -> None:
    service, _, serving, _ = node
    monkeypatch.setattr(decision, "POOL_CACHE_SIZE", 2)
    for device in ("mobile", "desktop", "tablet"):  # the device is an eligibility input: three pools
        request = pb.RankRequest(
            surface_id="feed",
            user_ctx=common_pb2.UserContext(anon_id="v1", device=device, consent=["personalization"]),
            context={"time_of_day": "morning"},
        )
        service.Rank(request.SerializeToString(), None)
    index = serving.index
    # The third pool found the memo full: it was emptied, and the plans with it, so no plan keeps a dropped pool.
    assert len(index.pools) == len(index.plans) == 1
    assert next(iter(index.plans.values())).param_rows.obj is next(iter(index.pools.values())).param_rows


def test_every_decision_draws_a_new_seed_and_a_forked_process_its_own(node) -> None:
    service, _, _, _ = node
    body = pb.RankRequest(surface_id="feed", context={"time_of_day": "morning"}).SerializeToString()

    def seed() -> int:
        return pb.RankResponse.FromString(service.Rank(body, None)).seed

    assert len({seed() for _ in range(50)}) == 50
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports its next seed and leaves at once, without running any cleanup
        try:
            os.write(write_end, seed().to_bytes(8, "little"))
        finally:
            os._exit(0)
    os.close(write_end)
    parents = {seed() for _ in range(50)}
    with os.fdopen(read_end, "rb") as pipe:
        answered = select.select([pipe], [], [], 30)[0]
        childs = int.from_bytes(pipe.read(), "little") if answered else 0
    if not answered:
        os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    assert childs and childs not in parents
