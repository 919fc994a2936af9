"""The decision core on real (tiny) bundles: eligibility, segments, sampling, freshness, diversity, exploration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from aura.bundle.loader import load_bundle
from aura.config import Surface, load_policies
from aura.errors import ConsentRequired
from aura.server._native import add_at
from aura.server.decision import RankQuery, Traffic, decide, resolve_segment
from aura.server.posterior_state import EXAMINATION_WEIGHTS, FeedbackDedupe, PosteriorState, examination_weight
from aura.server.serving import build_serving_index, freshness_multiplier
from aura.server.validation import rank_query
from aura.v1 import common_pb2
from aura.v1 import decision_service_pb2 as pb
from tests.bundle_factory import make_tiny_bundle

SURFACE = "homepage.hero"
NOW = 1_756_857_600.0  # 2025-09-03, two days after the tiny bundle's first publication
NO_TRAFFIC = Traffic()


def policies(tmp_path: Path, **sections):
    """Policies from the seed defaults with nested overrides, e.g. exploration={"global_budget": 0}."""
    decisioning = {name: values for name, values in sections.items() if name != "confidence"}
    data = {"decisioning": decisioning}
    if "confidence" in sections:
        data["segmentation"] = {"confidence": sections["confidence"]}
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_policies(path)


def index_for(tmp_path: Path, n_items: int = 12, surface: Surface | None = None, **content):
    bundle_dir = make_tiny_bundle(tmp_path / "built", "v1", n_items, surfaces=(SURFACE,), content=content)
    bundle = load_bundle(bundle_dir)
    surface = surface or Surface(id=SURFACE, max_items=10, diversity=False, freshness_boost=0.0)
    return build_serving_index(bundle, {SURFACE: surface}, policies(tmp_path), now=NOW)


def query(**fields) -> RankQuery:
    base = {"surface_id": SURFACE, "limit": 10, "anon_id": "visitor", "country": "US"}
    base["consent"] = frozenset({"personalization"})
    return RankQuery(**{**base, **fields})


def run(index, pol, q, seed: int = 7, traffic: Traffic = NO_TRAFFIC, state: PosteriorState | None = None):
    state = state or PosteriorState.in_memory(index.bundle)
    return decide(index, state.params, q, pol, traffic, seed)


def shown(index, decision) -> list[str]:
    return [index.bundle.content.ids[item.content_row] for item in decision.items]


def no_exploration(tmp_path: Path, **sections):
    return policies(tmp_path, exploration={"global_budget": 0.0}, **sections)


def test_eligibility_rules_and_explanations(tmp_path: Path) -> None:
    n = 8
    index = index_for(
        tmp_path,
        n,
        jurisdictions=[["EU"], ["US"], [], [], [], [], [], []],
        device_suitability=[[], [], ["desktop"], [], [], [], [], []],
        policy_flags=[[], [], [], ["age_restricted"], ["legal"], [], [], []],
    )
    pol = no_exploration(tmp_path)
    decision = run(index, pol, query(country="US", device="tablet", explain=True))
    assert set(shown(index, decision)) == {"c001", "c005", "c006", "c007"}
    removed = {index.bundle.content.ids[row]: rule for row, rule in decision.removed}
    assert removed == {"c000": "jurisdiction", "c002": "device", "c003": "consent", "c004": "policy_flag"}

    german = run(
        index,
        pol,
        query(country="DE", device="desktop", consent=frozenset({"personalization", "age_verified"}), explain=True),
    )
    assert set(shown(index, german)) == {"c000", "c002", "c005", "c006", "c007"}
    # Consent does not unlock a flag the surface does not allow.
    assert {index.bundle.content.ids[row]: rule for row, rule in german.removed} == {
        "c001": "jurisdiction",
        "c003": "policy_flag",
        "c004": "policy_flag",
    }


def test_a_consent_flag_needs_both_the_surface_and_the_consent(tmp_path: Path) -> None:
    surface = Surface(id=SURFACE, max_items=10, diversity=False, allowed_policy_flags=("age_restricted",))
    index = index_for(tmp_path, 4, surface=surface, policy_flags=[["age_restricted"], [], [], []])
    pol = no_exploration(tmp_path)
    without = run(index, pol, query(explain=True))
    assert "c000" not in shown(index, without)
    assert [(index.bundle.content.ids[row], rule) for row, rule in without.removed] == [("c000", "consent")]
    verified = run(index, pol, query(consent=frozenset({"personalization", "age_verified"})))
    assert "c000" in shown(index, verified)
    unchecked = no_exploration(tmp_path, eligibility={"check_consent": False})
    assert "c000" in shown(index, run(index, unchecked, query()))


def test_surface_may_allow_a_policy_flag(tmp_path: Path) -> None:
    surface = Surface(id=SURFACE, max_items=10, diversity=False, allowed_policy_flags=("legal",))
    index = index_for(tmp_path, 4, surface=surface, policy_flags=[["legal"], [], [], []])
    assert "c000" in shown(index, run(index, no_exploration(tmp_path), query()))


def test_a_surface_shows_only_its_eligible_content_types(tmp_path: Path) -> None:
    types = ["article", "guide", "product", "guide", "article", "promotion"]
    surface = Surface(id=SURFACE, max_items=10, diversity=False, eligible_content_types=("guide", "promotion"))
    index = index_for(tmp_path, 6, surface=surface, content_type=types)
    assert sorted(shown(index, run(index, no_exploration(tmp_path), query()))) == ["c001", "c003", "c005"]
    every_type = index_for(tmp_path / "all", 6, content_type=types)
    assert len(shown(every_type, run(every_type, no_exploration(tmp_path), query()))) == 6


def test_candidates_restrict_the_ranking_and_unknown_ids_are_ignored(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    decision = run(index, no_exploration(tmp_path), query(candidates=("c003", "c005", "nope")))
    assert sorted(shown(index, decision)) == ["c003", "c005"]


def test_limit_is_respected(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    decision = run(index, no_exploration(tmp_path), query(limit=3))
    assert [item.position for item in decision.items] == [1, 2, 3]


def test_missing_consent_is_refused_or_depersonalized(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    pol = no_exploration(tmp_path)
    with pytest.raises(ConsentRequired, match="personalization consent is required"):
        resolve_segment(index, query(consent=frozenset({"analytics"})), pol, consent_required=True)
    resolution = resolve_segment(index, query(anon_id="anon_abc123", consent=frozenset()), pol, consent_required=False)
    assert (resolution.segment.id, resolution.source) == ("seg_global", "no_consent")


def test_segment_resolution_order(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    pol = no_exploration(tmp_path)
    assigned = resolve_segment(index, query(anon_id="anon_abc123"), pol, True)
    assert (assigned.segment.id, assigned.source, assigned.confidence) == ("seg_learn_mobile_new", "assignment", 0.85)
    cold = resolve_segment(index, query(anon_id="new", device="mobile"), pol, True)
    assert (cold.segment.id, cold.source, cold.confidence) == ("seg_learn_mobile_new", "cold_start", 0.6)
    fallback = resolve_segment(index, query(anon_id="new", device="desktop"), pol, True)
    assert (fallback.segment.id, fallback.source, fallback.holdout) == ("seg_global", "popularity", False)
    strict = no_exploration(tmp_path, confidence={"assignment_threshold": 0.9, "holdout_below": 0.7})
    held_out = resolve_segment(index, query(anon_id="anon_abc123", device="mobile"), strict, True)
    assert (held_out.segment.id, held_out.holdout, held_out.source) == ("seg_global", True, "cold_start")
    # Without custom context keys in the bundle, the lookup key is the six fixed values, as ever.
    assert index.bundle.cold_start_context_keys == () and {len(key) for key in index.cold_starts} == {6}


def test_reasons_say_whether_the_segment_is_confident_or_a_popularity_fallback(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    pol = no_exploration(tmp_path)
    assigned = run(index, pol, query(anon_id="anon_abc123", device="mobile"))
    assert {item.reason.rpartition("+")[2] for item in assigned.items} == {"high-confidence"}
    fallback = run(index, pol, query(anon_id="new", device="desktop"))
    assert fallback.resolution.source == "popularity"
    assert {item.reason.rpartition("+")[2] for item in fallback.items} == {"popular"}


def test_cold_start_rules_on_custom_context_keys(tmp_path: Path) -> None:
    segment = "seg_learn_mobile_new"
    rules = [
        {"device": "mobile", "segment_id": segment, "confidence": 0.6},
        {"context_json": '{"plan": "enterprise"}', "segment_id": segment, "confidence": 0.8},
        {"device": "mobile", "context_json": '{"industry": "retail", "plan": "enterprise"}', "segment_id": segment,
         "confidence": 0.9},
    ]  # fmt: skip
    bundle = load_bundle(make_tiny_bundle(tmp_path / "built", "v1", surfaces=(SURFACE,), cold_start=rules))
    surface = Surface(id=SURFACE, max_items=10, diversity=False, freshness_boost=0.0)
    index = build_serving_index(bundle, {SURFACE: surface}, policies(tmp_path), now=NOW)
    pol = no_exploration(tmp_path)
    assert bundle.cold_start_context_keys == ("industry", "plan")

    def resolve(device: str, **context: str):
        request = pb.RankRequest(surface_id=SURFACE, context=context)
        request.user_ctx.CopyFrom(common_pb2.UserContext(anon_id="new", device=device, consent=["personalization"]))
        resolution = resolve_segment(index, rank_query(request.SerializeToString(), {SURFACE: surface}), pol, True)
        return resolution.segment.id, resolution.source, resolution.confidence

    assert resolve("desktop", plan="enterprise") == (segment, "cold_start", 0.8)
    assert resolve("mobile", plan="enterprise", industry="retail", other="x") == (segment, "cold_start", 0.9)
    assert resolve("mobile", plan="Enterprise") == (segment, "cold_start", 0.6)  # values match exactly
    assert resolve("desktop", plan="") == ("seg_global", "popularity", 1.0)
    assert resolve("desktop") == ("seg_global", "popularity", 1.0)
    # The memo is keyed on the fixed values, then the request's value of each custom key ("" when absent).
    assert {key[6:] for key in index.cold_starts} == {
        ("", "enterprise"),
        ("retail", "enterprise"),
        ("", "Enterprise"),
        ("", ""),
    }


def test_same_seed_same_decision(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    pol = policies(tmp_path)
    first = run(index, pol, query(), seed=42)
    assert run(index, pol, query(), seed=42) == first
    assert any(shown(index, run(index, pol, query(), seed=s)) != shown(index, first) for s in range(1, 20))


def global_posteriors(index, alphas: list[float], betas: list[float]) -> PosteriorState:
    """Posterior state whose seg_global cell has these alphas and betas."""
    state = PosteriorState.in_memory(index.bundle)
    cell = index.cell(SURFACE, "seg_global")
    state.alpha[cell.start : cell.stop] = alphas
    state.beta[cell.start : cell.stop] = betas
    return state


def test_thompson_sampling_follows_the_evidence(tmp_path: Path) -> None:
    index = index_for(tmp_path, 6)
    state = global_posteriors(index, [2, 2, 900, 2, 2, 2], [900, 900, 100, 900, 900, 900])
    pol = no_exploration(tmp_path)
    firsts = {shown(index, run(index, pol, query(anon_id="x"), seed=s, state=state))[0] for s in range(30)}
    assert firsts == {"c002"}


def test_smaller_posterior_variance_scale_exploits_more(tmp_path: Path) -> None:
    index = index_for(tmp_path, 6)
    # c002's mean click rate is 0.12 against 0.08 for the others, each from 50 pseudo-impressions.
    state = global_posteriors(index, [4, 4, 6, 4, 4, 4], [46, 46, 44, 46, 46, 46])

    def best_first_share(scale: float) -> float:
        pol = policies(tmp_path, exploration={"global_budget": 0.0, "posterior_variance_scale": scale})
        firsts = [shown(index, run(index, pol, query(anon_id="x"), seed=s, state=state))[0] for s in range(300)]
        return firsts.count("c002") / len(firsts)

    exact, sharpened = best_first_share(1.0), best_first_share(0.05)
    assert 0.2 < exact < 0.7
    assert sharpened > 0.9


def test_freshness_multiplier() -> None:
    ages = np.array([0.0, 14.0, 28.0, 1000.0])
    assert np.allclose(freshness_multiplier(ages, 14.0, 0.3, 1.0), [1.0, 0.5, 0.3, 0.3])
    assert np.allclose(freshness_multiplier(ages, 14.0, 0.3, 0.2), [1.0, 0.9, 0.86, 0.86])
    assert np.allclose(freshness_multiplier(ages, 14.0, 0.3, 0.0), 1.0)


def test_freshness_decides_between_equal_posteriors(tmp_path: Path) -> None:
    surface = Surface(id=SURFACE, max_items=2, diversity=False, freshness_boost=1.0)
    index = index_for(tmp_path, 2, surface=surface)
    state = PosteriorState.in_memory(index.bundle)
    state.alpha[:] = 5000.0
    state.beta[:] = 5000.0
    # Tiny-bundle items are published a day apart, so c001 is the fresher one.
    decision = run(index, no_exploration(tmp_path), query(limit=2, explain=True), state=state)
    assert shown(index, decision) == ["c001", "c000"]
    assert decision.items[0].freshness > decision.items[1].freshness


def test_diversity_caps_topic_clusters_in_the_top_n(tmp_path: Path) -> None:
    surface = Surface(id=SURFACE, max_items=6, diversity=True)
    index = index_for(tmp_path, 8, surface=surface, topic_cluster=[0, 0, 0, 0, 1, 1, 2, 2])
    pol = no_exploration(
        tmp_path, diversity={"max_per_topic_cluster": 1, "enforce_in_top_n": 3, "min_topic_distance": 0}
    )
    for seed in range(10):
        decision = run(index, pol, query(limit=6, explain=True), seed=seed)
        clusters = [int(index.bundle.content.topic_cluster[item.content_row]) for item in decision.items]
        assert sorted(clusters[:3]) == [0, 1, 2]
        assert len(decision.items) == 6
    short = run(index, pol, query(limit=3, explain=True))
    assert {rule for _, rule in short.removed} == {"diversity"}


def test_diversity_keeps_near_duplicates_apart(tmp_path: Path) -> None:
    surface = Surface(id=SURFACE, max_items=2, diversity=True)
    same = [1.0] + [0.0] * 383
    other = [0.0, 1.0] + [0.0] * 382
    index = index_for(tmp_path, 3, surface=surface, embedding=[same, same, other], topic_cluster=[0, 1, 2])
    state = PosteriorState.in_memory(index.bundle)
    cell = index.cell(SURFACE, "seg_global")
    state.alpha[cell.start : cell.stop] = [900.0, 800.0, 2.0]
    state.beta[cell.start : cell.stop] = [100.0, 200.0, 900.0]
    pol = no_exploration(tmp_path, diversity={"min_topic_distance": 0.3, "enforce_in_top_n": 2})
    assert shown(index, run(index, pol, query(limit=2, device=""), state=state)) == ["c000", "c002"]


def test_exploration_budget_spends_one_slot_outside_the_sampled_slate(tmp_path: Path) -> None:
    index = index_for(tmp_path, 12)
    always = policies(tmp_path, exploration={"global_budget": 1.0, "per_user_cap": 1.0})
    decision = run(index, always, query(limit=3))
    explored = [item for item in decision.items if item.explored]
    assert len(explored) == 1
    assert decision.exploration_rate == 1.0
    assert 0.0 < explored[0].propensity <= 1.0
    assert "exploration" in explored[0].reason


def test_per_user_cap_and_traffic_throttle(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    pol = policies(tmp_path, exploration={"global_budget": 0.5, "per_user_cap": 0.15, "throttle_rps": 500})
    capped = run(index, pol, query(), traffic=Traffic(user_explore_share=0.2))
    assert capped.exploration_rate == 0.0
    assert not any(item.explored for item in capped.items)
    assert run(index, pol, query(), traffic=Traffic(requests_per_second=1000)).exploration_rate == 0.25
    assert run(index, pol, query(), traffic=Traffic(requests_per_second=100)).exploration_rate == 0.5


def test_propensities_are_probabilities(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    for seed in range(20):
        for item in run(index, policies(tmp_path), query(limit=4), seed=seed).items:
            assert 0.0 < item.propensity <= 1.0


def test_posterior_updates_and_floor(tmp_path: Path) -> None:
    index = index_for(tmp_path, 4)
    state = PosteriorState.in_memory(index.bundle)
    original_beta = index.bundle.beta.copy()
    # Impressions as Rank counts them: a slate, best first, row 1 at position 1 and row 0 at position 2.
    add_at(state.beta, [1, 0], EXAMINATION_WEIGHTS)
    assert state.beta[1] == pytest.approx(original_beta[1] + 1.0)
    assert state.beta[0] == pytest.approx(original_beta[0] + 1.0 / np.log2(3))
    add_at(state.beta, [0], EXAMINATION_WEIGHTS)
    assert state.beta[0] == pytest.approx(original_beta[0] + 1.0 / np.log2(3) + 1.0)
    state.record_reward(1, 1.0, examination_weight(1))
    assert state.alpha[1] == pytest.approx(index.bundle.alpha[1] + 1.0)
    assert state.beta[1] == pytest.approx(original_beta[1])
    state.record_reward(2, 1.0, 1.0)  # a click without a counted impression cannot push beta below the bundle's
    assert state.beta[2] == pytest.approx(original_beta[2])


def test_shared_posteriors_are_seen_by_every_process_view(tmp_path: Path) -> None:
    bundle = load_bundle(make_tiny_bundle(tmp_path / "built", "v1", 4))
    first = PosteriorState.shared(tmp_path / "state", bundle)
    second = PosteriorState.shared(tmp_path / "state", bundle)
    first.record_reward(1, 1.0, 0.0)
    assert second.alpha[1] == pytest.approx(bundle.alpha[1] + 1.0)


def test_feedback_dedupe_remembers_across_instances(tmp_path: Path) -> None:
    one = FeedbackDedupe(tmp_path / "seen.u64", buckets=16)
    two = FeedbackDedupe(tmp_path / "seen.u64", buckets=16)
    fingerprint = FeedbackDedupe.fingerprint("req_1", "c1", "click")
    with one.locked():
        assert not one.contains(fingerprint)
        one.add(fingerprint)
    assert two.contains(fingerprint)
    assert fingerprint != FeedbackDedupe.fingerprint("req_1", "c1", "conversion")


def test_a_decision_replays_exactly_from_its_logged_seed(tmp_path: Path) -> None:
    index = index_for(tmp_path)
    pol = policies(tmp_path, exploration={"global_budget": 0.5, "per_user_cap": 1.0})
    state = PosteriorState.in_memory(index.bundle)
    seeds = (1, 2**63 + 5, 2**64 - 1)
    live = [decide(index, state.params, query(), pol, NO_TRAFFIC, seed) for seed in seeds]
    replayed = [decide(index, state.params, query(), pol, NO_TRAFFIC, seed) for seed in seeds]
    assert live == replayed
    assert len({tuple(decision.content_rows) for decision in live}) > 1
