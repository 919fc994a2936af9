"""The bundle builder: text features, segmentation, posteriors, cold start and a full build that loads."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aura.batch.build import (
    GLOBAL,
    Segment,
    SiteTables,
    build_bundle,
    choose_segments,
    cold_start_table,
    confident_segment,
    count_syllables,
    flesch_kincaid_grade,
    freshness_scores,
    kmeans,
    register_site,
    resolve,
    sentiment,
    topic_clusters,
)
from aura.batch.ope import LOGGED_SCHEMA
from aura.batch.synthetic import DEFAULT_SURFACES, SyntheticSite, generate_site
from aura.bundle.format import CONTENT, EMBEDDING_DIM, GLOBAL_SEGMENT, POSTERIORS, Manifest
from aura.bundle.loader import LoadedBundle, load_bundle, match_cold_start
from aura.config import Policies, Surface
from aura.context import referrer_class
from aura.errors import ConfigError, InvalidRequest, NotFound

K = 10
NOW = datetime(2025, 10, 1, tzinfo=UTC)


def _policies(k: int = K) -> Policies:
    policies = Policies()
    fairness = dataclasses.replace(policies.segmentation.fairness, k_anonymity_threshold=k)
    return dataclasses.replace(policies, segmentation=dataclasses.replace(policies.segmentation, fairness=fairness))


class HashEmbedder:
    """A fast stand-in for the MiniLM embedder: seeded unit vectors from each text's characters."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = np.random.default_rng(sum(map(ord, text))).standard_normal(EMBEDDING_DIM)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def site() -> SyntheticSite:
    return generate_site(11, n_content=60, n_visitors=400)


@pytest.fixture(scope="module")
def built(site: SyntheticSite, tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, LoadedBundle]:
    out = tmp_path_factory.mktemp("bundles")
    manifest = build_bundle(site, policies=_policies(), surfaces=DEFAULT_SURFACES, out_dir=out, now=NOW, seed=3)
    return manifest, load_bundle(out / manifest.bundle_version)


@pytest.mark.parametrize(
    ("word", "syllables"),
    [("cat", 1), ("the", 1), ("happy", 2), ("table", 2), ("banana", 3), ("computer", 3), ("readability", 5), ("", 0)],
)
def test_count_syllables(word: str, syllables: int) -> None:
    assert count_syllables(word) == syllables


def test_flesch_kincaid_on_known_sentences() -> None:
    # 6 words, 1 sentence, 6 syllables: 0.39 * 6 + 11.8 * 1 - 15.59.
    assert flesch_kincaid_grade("The cat sat on the mat.") == pytest.approx(-1.45)
    # 11 words, 2 sentences, 12 syllables ("happy" has two).
    text = "The cat sat on the mat. It was a happy cat!"
    assert flesch_kincaid_grade(text) == pytest.approx(0.39 * 11 / 2 + 11.8 * 12 / 11 - 15.59)
    assert flesch_kincaid_grade("") == 0.0


def test_complex_prose_grades_higher() -> None:
    simple = "Start with one goal. Check your results each week. Ask your team what they need."
    dense = (
        "Sophisticated organizations operationalize contextual experimentation, systematically evaluating "
        "incremental performance across heterogeneous customer populations."
    )
    assert flesch_kincaid_grade(dense) > flesch_kincaid_grade(simple) + 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Great results, and customers love it.", 2 / 4),
        ("A costly breach is a serious risk.", -4 / 6),
        ("The report lists the quarterly numbers.", 0.0),
        ("This is not good.", -1 / 3),
    ],
)
def test_sentiment(text: str, expected: float) -> None:
    assert sentiment(text) == pytest.approx(expected)


def test_freshness_halves_every_half_life() -> None:
    published = np.datetime64(NOW.replace(tzinfo=None), "ms") - np.array([0, 14, 28, -1]) * np.timedelta64(1, "D")
    scores = freshness_scores(published, NOW, half_life_days=14)
    np.testing.assert_allclose(scores, [1.0, 0.5, 0.25, 1.0])


def test_kmeans_separates_blobs_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(0, 0.5, (30, 2)) for c in centers])
    labels = kmeans(points, 3, seed=1)
    assert [len(set(labels[i : i + 30])) for i in (0, 30, 60)] == [1, 1, 1]
    assert len(set(labels)) == 3
    np.testing.assert_array_equal(labels, kmeans(points, 3, seed=1))


def test_topic_clusters_come_from_the_embeddings_without_the_content_type() -> None:
    # The content type moves an embedding far more than the topic does, as MiniLM's do on templated texts.
    kinds = ["article"] * 8 + ["product"] * 8
    topics = ["ai", "cloud"] * 8
    embeddings = np.array(
        [[10.0 * (k == "product"), 1.0 if t == "cloud" else -1.0, 0.0] for k, t in zip(kinds, topics, strict=True)]
    )
    embeddings += np.random.default_rng(0).normal(0, 0.05, embeddings.shape)
    labels = topic_clusters(kinds, [[t] for t in topics], embeddings, seed=0).tolist()
    assert len(set(labels[0::2])) == len(set(labels[1::2])) == 1 and labels[0] != labels[1]
    assert kmeans(embeddings, 2, seed=0).tolist() != labels  # the raw embeddings split by type instead
    assert len(set(topic_clusters(kinds, [None] * 16, embeddings, seed=0).tolist())) == round(math.sqrt(16 / 2))


def test_segment_ids_names_and_parents() -> None:
    leaf = Segment(("learn", "mobile", "new", "high"))
    assert leaf.id == "seg_learn_mobile_new_price_high"
    assert leaf.name == "Learning-focused Mobile Users (New, High Price Sensitivity)"
    chain = [leaf.parent(), leaf.parent().parent(), leaf.parent().parent().parent()]
    assert [s.id for s in chain] == ["seg_learn_mobile_new", "seg_learn_mobile", "seg_learn"]
    assert chain[0].name == "Learning-focused Mobile Users (New)"
    assert chain[2].parent() == GLOBAL and GLOBAL.id == GLOBAL_SEGMENT and GLOBAL.parent() == GLOBAL
    assert chain[0].features({"price_sensitivity": "medium"}) == {
        "intent": "learn",
        "device_class": "mobile",
        "recency": "new",
        "price_sensitivity": "medium",
    }
    assert leaf.features({"price_sensitivity": "low"})["price_sensitivity"] == "high"
    assert GLOBAL.features({"price_sensitivity": "low"}) == {}
    custom = Segment(("learn", "Spring Sale"), ("intent", "campaign"))
    assert custom.id == "seg_learn_campaign_spring-sale" and custom.value("campaign") == "Spring Sale"
    assert custom.name == "Learning-focused Users (Campaign Spring Sale)"
    assert custom.parent().parent() == GLOBAL and custom.value("device_class") is None


def _bundle_with_dimensions(site: SyntheticSite, out_dir: Path, dimensions: tuple[str, ...]):
    manifest = build_bundle(
        site,
        policies=_policies(k=5),
        surfaces=DEFAULT_SURFACES,
        out_dir=out_dir,
        now=NOW,
        embedder=HashEmbedder(),
        dimensions=dimensions,
    )
    return load_bundle(out_dir / manifest.bundle_version)


def test_custom_segment_dimensions(site: SyntheticSite, tmp_path: Path) -> None:
    bundle = _bundle_with_dimensions(site, tmp_path, ("referrer_class", "intent"))
    referrers = {"direct", "search", "social", "email", "internal", "other"}
    segments = [s for s in bundle.segments.values() if s.id != GLOBAL_SEGMENT]
    assert segments and all(s.features["referrer_class"] in referrers for s in segments)
    assert any("intent" in s.features and s.id.startswith("seg_referrer_class_") for s in segments)


@pytest.mark.parametrize(
    ("dimensions", "message"),
    [
        ((), "distinct and at least one"),
        (("intent", "intent"), "distinct and at least one"),
        (("intent", "gender"), "protected attributes are never features"),
        (("intent", "favourite_colour"), "segment dimensions: 'favourite_colour' is not a dimension"),
        (("intent", "context.gender"), "'context.gender' is a protected attribute"),
        (("intent", "context.Plan"), "'context.Plan' is not a valid context dimension"),
    ],
)
def test_bad_segment_dimensions(dimensions: tuple[str, ...], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        build_bundle(
            _tiny_site(),
            policies=_policies(),
            surfaces=DEFAULT_SURFACES,
            out_dir=tmp_path,
            embedder=HashEmbedder(),
            dimensions=dimensions,
        )


def test_choose_segments_merges_small_segments_into_parents() -> None:
    leaves = {
        Segment(("learn", "mobile", "new")): 60,
        Segment(("learn", "mobile", "returning")): 30,
        Segment(("learn", "desktop", "new")): 20,
        Segment(("buy", "mobile", "new")): 5,
    }
    emitted = choose_segments(leaves, k=50)
    assert emitted == {Segment(("learn", "mobile", "new")): 60, Segment(("learn",)): 50, GLOBAL: 5}
    assert resolve(Segment(("learn", "desktop", "new")), emitted) == Segment(("learn",))
    assert resolve(Segment(("buy", "mobile", "new")), emitted) == GLOBAL


def test_choose_segments_caps_the_catalogue() -> None:
    leaves = {
        Segment((i, d, "new")): 100 + n
        for n, (i, d) in enumerate([("learn", "mobile"), ("learn", "desktop"), ("buy", "mobile")])
    }
    emitted = choose_segments(leaves, k=1, n_max=3)
    # The smallest leaf climbs to its parent, then on to seg_global, while the two largest stay.
    assert emitted == {
        GLOBAL: 100,
        Segment(("learn", "desktop", "new")): 101,
        Segment(("buy", "mobile", "new")): 102,
    }


def _tiny_site() -> SiteTables:
    content = pl.DataFrame(
        {
            "id": ["a1", "a2", "p1"],
            "title": ["Article one", "Article two", "Product"],
            "url": ["/a1", "/a2", "/p1"],
            "summary": ["s", "s", "s"],
            "body": ["b", "b", "b"],
            "content_type": ["article", "article", "product"],
            "topics": [["ai"]] * 3,
            "personas": [["beginner"]] * 3,
            "industries": [[]] * 3,
            "published_at": [NOW] * 3,
            "updated_at": [NOW] * 3,
            "jurisdictions": [[]] * 3,
            "policy_flags": [[]] * 3,
            "device_suitability": [["mobile"]] * 3,
        },
        schema_overrides={
            "industries": pl.List(pl.String),
            "jurisdictions": pl.List(pl.String),
            "policy_flags": pl.List(pl.String),
        },
    )
    # u1 (the learn/mobile/new leaf): a1 4 impressions 1 click, a2 2 impressions.
    # u2 (unassigned): a1 6 impressions 3 clicks, and p1, which the surface does not admit.
    log = [("u1", "a1", "impression")] * 4 + [("u1", "a1", "click"), *[("u1", "a2", "impression")] * 2]
    log += [("u2", "a1", "impression")] * 6 + [("u2", "a1", "click")] * 3
    log += [("u2", "p1", "impression"), ("u2", "p1", "click")]
    return SiteTables(content=content, events=_mobile_morning_events(log))


def _mobile_morning_events(log: list[tuple[str, str, str]], **columns: list) -> pl.DataFrame:
    """Events of (visitor, content id, type), one second apart on surface hero, from mobile US visitors on
    the home page in the morning; `columns` adds columns."""
    n = len(log)
    return pl.DataFrame(
        {
            "event_id": [f"e{i:03d}" for i in range(n)],
            "ts": [NOW + timedelta(seconds=i) for i in range(n)],
            "anon_id": [u for u, _, _ in log],
            "session_id": [f"s_{u}" for u, _, _ in log],
            "surface_id": ["hero"] * n,
            "content_id": [c for _, c, _ in log],
            "type": [t for _, _, t in log],
            "device": ["mobile"] * n,
            "referrer": [""] * n,
            "page_type": ["home"] * n,
            "country": ["US"] * n,
            "time_of_day": ["morning"] * n,
            "campaign": [None] * n,
            **columns,
        },
        schema_overrides={"campaign": pl.String},
    )


def test_bundle_loads_with_every_table_filled(site: SyntheticSite, built: tuple[Manifest, LoadedBundle]) -> None:
    manifest, bundle = built
    assert bundle.surfaces == tuple(sorted(DEFAULT_SURFACES))
    for surface in DEFAULT_SURFACES:
        assert (surface, GLOBAL_SEGMENT) in bundle.cells
    assert len(bundle.cells) == len(DEFAULT_SURFACES) * len(bundle.segments)
    assert manifest.stats["content_items"] == len(bundle.content) == 60
    assert manifest.stats["segments"] == len(bundle.segments)
    assert manifest.stats["users_assigned"] == len(bundle.assignments)
    assert manifest.stats["segment_coverage"] == pytest.approx(len(bundle.assignments) / 400, abs=1e-4)
    sessions = site.events.select("anon_id", "session_id").unique()
    covered = sessions.filter(pl.col("anon_id").is_in(list(bundle.assignments)))["session_id"].n_unique()
    assert manifest.stats["session_coverage"] == pytest.approx(covered / sessions["session_id"].n_unique(), abs=1e-4)
    assert manifest.stats["cells"] == len(bundle.cells)
    assert manifest.stats["intent_method"] in ("lightgbm", "evidence")
    assert manifest.stats["intent_train_visitors"] + manifest.stats["intent_heldout_visitors"] > 100
    assert "intent_model_heldout_accuracy" in manifest.stats and "intent_evidence_heldout_accuracy" in manifest.stats
    assert manifest.policy_version == Policies().policy_version
    assert np.all(bundle.alpha > 0) and np.all(bundle.beta > 0)
    assert np.all((bundle.propensity >= 0) & (bundle.propensity <= 1))


def test_cells_hold_only_eligible_content(built: tuple[Manifest, LoadedBundle]) -> None:
    _, bundle = built
    for (surface_id, _), span in bundle.cells.items():
        types = {bundle.content.content_types[row] for row in bundle.cell_items[span.start : span.stop]}
        assert types <= set(DEFAULT_SURFACES[surface_id].eligible_content_types)


def test_propensities_sum_to_the_surface_slate(built: tuple[Manifest, LoadedBundle]) -> None:
    _, bundle = built
    for (surface_id, _), span in bundle.cells.items():
        n = span.stop - span.start
        slate = min(DEFAULT_SURFACES[surface_id].max_items, n)
        assert bundle.propensity[span.start : span.stop].sum() == pytest.approx(slate, abs=1e-3)


def test_content_features(built: tuple[Manifest, LoadedBundle], site: SyntheticSite) -> None:
    manifest, bundle = built
    table = pq.read_table(bundle.path / CONTENT).to_pydict()
    assert all(-1 <= v <= 1 for v in table["sentiment"])
    assert all(0 <= v <= 1 for v in table["quality_score"])
    assert all(0 < v <= 1 for v in table["freshness_score"])
    primary_topics = [topics[0] for topics in site.content["topics"].to_list()]
    clusters = table["topic_cluster"]
    assert len(set(clusters)) == manifest.stats["topic_clusters"] <= len(set(primary_topics))

    def purity(truth: list[str]) -> float:
        """Share of items whose cluster's most common `truth` value is theirs."""
        by_cluster: dict[int, Counter[str]] = defaultdict(Counter)
        for cluster, value in zip(clusters, truth, strict=True):
            by_cluster[cluster][value] += 1
        return sum(c.most_common(1)[0][1] for c in by_cluster.values()) / len(truth)

    # Clusters follow what items are about, not their content type's template.
    assert purity(primary_topics) > purity(site.content["content_type"].to_list())
    np.testing.assert_allclose(np.linalg.norm(bundle.content.embeddings, axis=1), 1.0, atol=1e-5)
    grades = dict(zip(table["id"], table["complexity"], strict=True))
    personas = dict(zip(site.content["id"].to_list(), site.content["personas"].to_list(), strict=True))
    beginner = [grades[c] for c, p in personas.items() if p == ["beginner"]]
    advanced = [grades[c] for c, p in personas.items() if p == ["advanced"]]
    assert np.mean(advanced) > np.mean(beginner) + 5


def test_k_anonymity_is_honored(built: tuple[Manifest, LoadedBundle]) -> None:
    manifest, bundle = built
    sizes = Counter(a.segment_id for a in bundle.assignments.values())
    for segment_id in bundle.segments:
        if segment_id != GLOBAL_SEGMENT:
            assert sizes[segment_id] >= K, segment_id
    assert manifest.reports["segment_sizes"] == {s: sizes.get(s, 0) for s in sorted(bundle.segments)}


def test_segment_catalogue(built: tuple[Manifest, LoadedBundle]) -> None:
    _, bundle = built
    assert bundle.segments[GLOBAL_SEGMENT].name == "Everyone"
    for segment in bundle.segments.values():
        if segment.id == GLOBAL_SEGMENT:
            continue
        assert segment.id.startswith(f"seg_{segment.features['intent']}")
        assert segment.intent == segment.features["intent"]
        assert segment.features["price_sensitivity"] in ("low", "medium", "high")
    assert all(0 < a.confidence <= 1 for a in bundle.assignments.values())


def test_cold_start_rules_name_a_segment_most_first_visits_in_their_context_belong_to(
    built: tuple[Manifest, LoadedBundle], site: SyntheticSite
) -> None:
    manifest, bundle = built
    rules = pq.read_table(bundle.path / "cold_start.parquet")
    threshold = _policies().segmentation.confidence.holdout_below
    assert rules.num_rows == manifest.stats["cold_start_rules"] > 0
    assert all(threshold <= c <= 1 for c in rules["confidence"].to_pylist())
    assert set(rules["segment_id"].to_pylist()) <= set(bundle.segments) - {GLOBAL_SEGMENT}
    firsts = site.events.group_by("anon_id", maintain_order=True).first()
    matched = [
        match_cold_start(
            bundle,
            (
                row["device"] or "",
                referrer_class(row["referrer"]),
                row["page_type"] or "",
                row["country"] or "",
                row["time_of_day"] or "",
                row["campaign"] or "",
            ),
        )
        for row in firsts.iter_rows(named=True)
    ]
    assert any(m is not None for m in matched)


def test_cold_start_rule_walks_up_to_the_segment_that_reaches_the_confidence() -> None:
    con = duckdb.connect()
    register_site(con, _tiny_site())
    dims = ("intent", "device_class")
    learn, learn_mobile, buy = Segment(("learn",), dims), Segment(("learn", "mobile"), dims), Segment(("buy",), dims)
    members = pa.table({"user_id": ["u1", "u2"], "segment_id": [learn_mobile.id, learn.id]})
    emitted = [GLOBAL, learn, learn_mobile, buy]
    rules = cold_start_table(con, members, emitted, min_support=2, min_confidence=0.7, patterns=(("device",),))
    # Half of the mobile visitors are in seg_learn_mobile (below 0.7); all of them are in its parent seg_learn.
    assert rules.to_pylist() == [
        {
            "device": "mobile",
            "referrer_class": None,
            "page_type": None,
            "country": None,
            "time_of_day": None,
            "campaign": None,
            "context_json": None,
            "segment_id": "seg_learn",
            "confidence": 1.0,
        }
    ]
    # Split between seg_learn and seg_buy, the context reaches 0.7 only in seg_global: no rule.
    members = pa.table({"user_id": ["u1", "u2"], "segment_id": [learn.id, buy.id]})
    assert cold_start_table(con, members, emitted, min_support=2, min_confidence=0.7).num_rows == 0


def test_an_uncertain_intent_assigns_the_nearest_ancestor_that_leaves_intent_open() -> None:
    dims = ("topic_interest", "intent", "device_class")
    topic, member = Segment(("ai",), dims), Segment(("ai", "learn", "mobile"), dims)
    emitted = {GLOBAL: 0, topic: 60, member: 50}
    assert confident_segment(member, 0.8, emitted, threshold=0.7) == (member, 0.8)
    # seg_ai_learn is not emitted: the walk skips it to seg_ai, certain as the topic is read off the history.
    assert confident_segment(member, 0.6, emitted, threshold=0.7) == (topic, 1.0)
    # With intent first, only seg_global leaves it open: the low-confidence segment stays (cold start decides).
    learn = Segment(("learn", "mobile"), ("intent", "device_class"))
    assert confident_segment(learn, 0.6, {GLOBAL: 0, learn: 50}, threshold=0.7) == (learn, 0.6)


def test_topic_interest_segments_and_their_certain_assignments(site: SyntheticSite, tmp_path: Path) -> None:
    bundle = _bundle_with_dimensions(site, tmp_path, ("topic_interest", "intent"))
    topic_only = {s for s, info in bundle.segments.items() if s.startswith("seg_topic_") and not info.intent}
    assert topic_only
    assigned = [a for a in bundle.assignments.values() if a.segment_id in topic_only]
    assert assigned and all(a.confidence == 1.0 for a in assigned)


def test_build_is_deterministic(site: SyntheticSite, tmp_path: Path) -> None:
    kwargs = {"policies": _policies(), "surfaces": DEFAULT_SURFACES, "now": NOW, "seed": 3, "embedder": HashEmbedder()}
    first = build_bundle(site, out_dir=tmp_path, bundle_version="v1", **kwargs)
    second = build_bundle(site, out_dir=tmp_path, bundle_version="v2", **kwargs)
    for name in (CONTENT, POSTERIORS, "segments.parquet", "user_segments.parquet", "cold_start.parquet"):
        assert first.files[name].sha256 == second.files[name].sha256, name


def test_segment_cap_and_dimensions(site: SyntheticSite, tmp_path: Path) -> None:
    manifest = build_bundle(
        site,
        policies=_policies(k=2),
        surfaces=DEFAULT_SURFACES,
        out_dir=tmp_path,
        now=NOW,
        embedder=HashEmbedder(),
        n_segments_max=12,
        dimensions=("intent", "device_class", "recency", "price_sensitivity"),
    )
    bundle = load_bundle(tmp_path / manifest.bundle_version)
    assert len(bundle.segments) == 12
    assert any("_price_" in s for s in bundle.segments)


@pytest.mark.parametrize(
    ("surfaces", "error", "message"),
    [
        ({}, ConfigError, "at least one surface"),
        ({"x": Surface("x", eligible_content_types=("podcast",))}, ConfigError, "surfaces.x admits content types"),
    ],
)
def test_build_rejects_bad_surfaces(
    surfaces: dict[str, Surface], error: type[Exception], message: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=message):
        build_bundle(_tiny_site(), policies=_policies(), surfaces=surfaces, out_dir=tmp_path, embedder=HashEmbedder())


def test_site_tables_validate_and_read(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        SiteTables.read(tmp_path / "missing")
    with pytest.raises(NotFound, match=r"has no content\.parquet"):
        SiteTables.read(tmp_path)
    tiny = _tiny_site()
    with pytest.raises(InvalidRequest, match="lacks the columns campaign"):
        SiteTables(content=tiny.content, events=tiny.events.drop("campaign"))
    with pytest.raises(InvalidRequest, match="unknown event types"):
        SiteTables(content=tiny.content, events=tiny.events.with_columns(pl.lit("view").alias("type")))
    tiny.write(tmp_path)
    back = SiteTables.read(tmp_path)
    assert back.events.equals(tiny.events) and back.content.equals(tiny.content) and back.visitors is None


def test_incremental_build_continues_from_the_previous_bundle(
    built: tuple[Manifest, LoadedBundle], site: SyntheticSite, tmp_path: Path
) -> None:
    first, bundle = built
    assert first.reports["posteriors"] == {"as_of": NOW.isoformat(), "half_life_days": 30.0, "incremental_from": None}
    later = NOW + timedelta(days=30)
    kwargs = {
        "policies": _policies(),
        "surfaces": DEFAULT_SURFACES,
        "out_dir": tmp_path,
        "seed": 3,
        "embedder": HashEmbedder(),
    }
    # Same data, 30 days later: an incremental build decays the first bundle's evidence by half.
    second = build_bundle(site, **kwargs, now=later, previous_dir=bundle.path, bundle_version="inc")
    assert second.reports["posteriors"]["incremental_from"] == first.bundle_version
    before = pq.read_table(bundle.path / POSTERIORS).to_pydict()
    after = pq.read_table(tmp_path / "inc" / POSTERIORS).to_pydict()
    key = ("surface_id", "segment_id", "content_id")
    old = {tuple(before[k][i] for k in key): before["impressions"][i] for i in range(len(before["alpha"]))}
    new = {tuple(after[k][i] for k in key): after["impressions"][i] for i in range(len(after["alpha"]))}
    shared = old.keys() & new.keys()
    assert shared and all(new[k] == pytest.approx(old[k] / 2) for k in shared)
    other_half_life = build_bundle(
        site, **kwargs, now=later, previous_dir=bundle.path, half_life_days=7, bundle_version="full"
    )
    assert other_half_life.reports["posteriors"]["incremental_from"] is None


def test_build_writes_the_off_policy_report(built: tuple[Manifest, LoadedBundle], tmp_path: Path) -> None:
    manifest, bundle = built
    posteriors = pq.read_table(bundle.path / POSTERIORS)
    rows = posteriors.filter(pc.equal(posteriors["segment_id"], GLOBAL_SEGMENT)).slice(0, 40).to_pylist()
    heldout = pa.Table.from_pylist(
        [
            {
                "decision_id": f"d{i}",
                "ts": NOW,
                "bundle_version": manifest.bundle_version,
                "surface_id": row["surface_id"],
                "segment_id": GLOBAL_SEGMENT,
                "content_id": row["content_id"],
                "slate_size": 1,
                "propensity": None if i % 2 else 0.5,
                "reward": float(i % 3 == 0),
            }
            for i, row in enumerate(rows)
        ],
        schema=LOGGED_SCHEMA,
    )
    second = build_bundle(
        _tiny_site(),
        policies=_policies(),
        surfaces={"hero": Surface("hero", eligible_content_types=("article",))},
        out_dir=tmp_path,
        embedder=HashEmbedder(),
        previous_dir=bundle.path,
        heldout=heldout,
        ope_margin=0.1,
    )
    report = second.reports["ope"]
    assert report["serving_version"] == manifest.bundle_version
    assert report["candidate_version"] == second.bundle_version
    assert report["candidate"]["decisions"] == 40 and report["reconstructed_propensities"] > 0
    assert report["margin"] == 0.1 and isinstance(report["passed"], bool)
    assert "ope" in second.reports["build_seconds"]


def _plan_site() -> SiteTables:
    """Ten mobile visitors with 3 clicks each: four send context plan=enterprise, four "Free Tier", two none.

    e1 also sends plan=free once (their most common plan stays enterprise) and an event with a context that
    is not JSON; the first event of every visitor carries their plan, so cold-start rules can key on it.
    """
    tiny = _tiny_site()
    plans = {f"e{i}": "enterprise" for i in range(1, 5)} | {f"f{i}": "Free Tier" for i in range(1, 5)}
    plans |= {"n1": None, "n2": None}
    rows = []
    for visitor, plan in plans.items():
        contexts = [json.dumps({"plan": plan, "industry": "retail"}) if plan else '{"industry": "retail"}'] * 4
        if visitor == "e1":
            contexts += [json.dumps({"plan": "free"}), "not json"]
        for n, context in enumerate(contexts):
            rows.append((visitor, "impression" if n == 0 else "click", context))
    events = _mobile_morning_events([(v, "a1", t) for v, t, _ in rows], context_json=[c for _, _, c in rows])
    return SiteTables(content=tiny.content, events=events)


def _plan_bundle(site: SiteTables, out_dir: Path) -> LoadedBundle:
    manifest = build_bundle(
        site,
        policies=_policies(k=2),
        surfaces={"hero": Surface("hero", eligible_content_types=("article",))},
        out_dir=out_dir,
        now=NOW,
        embedder=HashEmbedder(),
        dimensions=("context.plan", "device_class"),
    )
    assert manifest.format_version == 2
    return load_bundle(out_dir / manifest.bundle_version)


def test_a_request_context_key_segments_visitors_by_their_most_common_value(tmp_path: Path) -> None:
    bundle = _plan_bundle(_plan_site(), tmp_path)
    free_tier = next(s for s in bundle.segments if s.startswith("seg_plan_free-tier-") and s.endswith("_mobile"))
    assert re.fullmatch(r"seg_plan_free-tier-[0-9a-f]{8}_mobile", free_tier)
    assert set(bundle.segments) == {GLOBAL_SEGMENT, "seg_plan_enterprise_mobile", free_tier, "seg_plan_none_mobile"}
    enterprise = bundle.segments["seg_plan_enterprise_mobile"]
    assert enterprise.name == "All Mobile Users (Plan enterprise)"
    assert enterprise.features["context.plan"] == "enterprise" and enterprise.features["device_class"] == "mobile"
    assert bundle.segments[free_tier].features["context.plan"] == "Free Tier"
    assigned = {user: a.segment_id for user, a in bundle.assignments.items()}
    assert assigned == {
        **{f"e{i}": "seg_plan_enterprise_mobile" for i in range(1, 5)},
        **{f"f{i}": free_tier for i in range(1, 5)},
        "n1": "seg_plan_none_mobile",
        "n2": "seg_plan_none_mobile",
    }
    assert all(a.confidence == 1.0 for a in bundle.assignments.values())


def test_cold_start_rules_key_on_a_request_context_key(tmp_path: Path) -> None:
    bundle = _plan_bundle(_plan_site(), tmp_path)
    rules = pq.read_table(bundle.path / "cold_start.parquet").to_pylist()
    free_tier = next(s for s in bundle.segments if s.startswith("seg_plan_free-tier-"))
    # Mobile alone splits 4/4/2 between plans: only the plan (with or without the device) makes a rule.
    assert {(r["device"], r["context_json"], r["segment_id"], r["confidence"]) for r in rules} == {
        (device, json.dumps({"plan": plan}), segment, 1.0)
        for device in ("mobile", None)
        for plan, segment in (("enterprise", "seg_plan_enterprise_mobile"), ("Free Tier", free_tier))
    }
    assert bundle.cold_start_context_keys == ("plan",)
    fixed = ("desktop", "search", "article", "DE", "evening", "")
    assert match_cold_start(bundle, (*fixed, "enterprise")) == ("seg_plan_enterprise_mobile", 1.0)
    assert match_cold_start(bundle, ("mobile", *fixed[1:], "enterprise")) == ("seg_plan_enterprise_mobile", 1.0)
    assert match_cold_start(bundle, (*fixed, "")) is None
    assert match_cold_start(bundle, (*fixed, "Enterprise")) is None


def test_a_context_dimension_reads_none_from_events_without_context_json(tmp_path: Path) -> None:
    site = _plan_site()
    bundle = _plan_bundle(SiteTables(content=site.content, events=site.events.drop("context_json")), tmp_path)
    assert set(bundle.segments) == {GLOBAL_SEGMENT, "seg_plan_none_mobile"}
    assert {a.segment_id for a in bundle.assignments.values()} == {"seg_plan_none_mobile"}
    assert bundle.cold_start_context_keys == ()


def test_context_json_is_read_from_an_events_file(tmp_path: Path) -> None:
    _plan_site().write(tmp_path / "site")
    bundle = _plan_bundle(SiteTables.read(tmp_path / "site", scan_events=True), tmp_path / "out")
    assert "seg_plan_enterprise_mobile" in bundle.segments and bundle.cold_start_context_keys == ("plan",)
