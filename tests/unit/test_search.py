"""Semantic search over a tiny real bundle whose items are embedded with the real MiniLM embedder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from aura.bundle.loader import LoadedBundle, load_bundle
from aura.embedding import TextEmbedder, default_embedder
from aura.server.search import EXACT_SEARCH_MAX_ROWS, SearchHit, SearchIndex, build_search_index, search
from tests.bundle_factory import make_tiny_bundle

# (title, summary, topics, personas, jurisdictions); content ids are c000, c001, ... in this order.
ITEMS = [
    (
        "Conversion rate optimization: a practical guide",
        "Run A/B tests on landing pages and checkout flows to turn more visitors into customers.",
        ["marketing", "analytics"],
        ["intermediate"],
        [],
    ),
    (
        "Email marketing under the GDPR",
        "Consent, double opt-in and unsubscribe rules for newsletters sent to EU residents.",
        ["marketing", "privacy"],
        ["beginner"],
        ["EU", "UK"],
    ),
    (
        "Autoscaling Kubernetes workloads",
        "Tune the horizontal pod autoscaler for bursty traffic.",
        ["engineering"],
        ["advanced"],
        ["US"],
    ),
    (
        "Baking sourdough bread at home",
        "Feed a starter, shape the loaf and bake it in a Dutch oven.",
        ["lifestyle"],
        ["beginner"],
        [],
    ),
    (
        "Search engine optimization basics",
        "Keywords, meta descriptions and backlinks that grow organic traffic.",
        ["marketing"],
        ["beginner"],
        ["US", "UK"],
    ),
    (
        "Designing a pricing page that converts",
        "Plan tiers, price anchoring and less checkout friction.",
        ["marketing", "product"],
        ["intermediate"],
        ["US"],
    ),
    (
        "HIPAA compliance for health apps",
        "Protected health information and business associate agreements.",
        ["legal"],
        ["advanced"],
        ["US"],
    ),
    (
        "Reducing customer churn with cohort analytics",
        "Retention curves and churn prediction for subscription businesses.",
        ["analytics"],
        ["advanced"],
        ["EU"],
    ),
]
IDS = [f"c{i:03d}" for i in range(len(ITEMS))]


def build_bundle(out_dir: Path, embedder: TextEmbedder) -> LoadedBundle:
    """Write and load a bundle of ITEMS, each embedded from its title and summary."""
    titles, summaries, topics, personas, jurisdictions = (list(column) for column in zip(*ITEMS, strict=True))
    embeddings = embedder.embed([f"{title}. {summary}" for title, summary in zip(titles, summaries, strict=True)])
    content = {
        "title": titles,
        "summary": summaries,
        "topics": topics,
        "personas": personas,
        "jurisdictions": jurisdictions,
        "embedding": list(embeddings),
    }
    return load_bundle(make_tiny_bundle(out_dir, n_items=len(ITEMS), content=content))


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return default_embedder()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, embedder: TextEmbedder) -> LoadedBundle:
    return build_bundle(tmp_path_factory.mktemp("bundles"), embedder)


@pytest.fixture(scope="module", params=[0, EXACT_SEARCH_MAX_ROWS], ids=["hnsw-filter", "exact-below-cutoff"])
def index(request: pytest.FixtureRequest, bundle: LoadedBundle) -> SearchIndex:
    """The bundle's search index, once forcing filtered queries through hnswlib and once through exact scoring."""
    return build_search_index(bundle, exact_search_max_rows=request.param)


def query(embedder: TextEmbedder, index: SearchIndex, text: str, **kwargs) -> list[str]:
    return [hit.content_id for hit in search(index, embedder.embed_query(text), **kwargs)]


def test_cro_question_ranks_the_cro_guide_first(embedder: TextEmbedder, index: SearchIndex) -> None:
    assert query(embedder, index, "conversion rate optimization", limit=3) == ["c000", "c005", "c004"]
    assert query(embedder, index, "how to optimize conversion rates", limit=1) == ["c000"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bread baking recipe", "c003"),
        ("scaling pods in a kubernetes cluster", "c002"),
        ("medical data regulations", "c006"),
        ("why do subscribers cancel", "c007"),
    ],
)
def test_each_topic_finds_its_article(embedder: TextEmbedder, index: SearchIndex, text: str, expected: str) -> None:
    assert query(embedder, index, text, limit=1) == [expected]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"topics": ["legal"]}, {"c006"}),
        ({"topics": ["privacy", "engineering"]}, {"c001", "c002"}),
        ({"topics": ["marketing"], "personas": ["beginner"]}, {"c001", "c004"}),
        ({"personas": ["advanced"]}, {"c002", "c006", "c007"}),
        ({"jurisdictions": ["EU"]}, {"c000", "c001", "c003", "c007"}),
        ({"jurisdictions": ["US", "UK"]}, set(IDS) - {"c007"}),
        ({"jurisdictions": ["BR"]}, {"c000", "c003"}),
        ({"topics": ["analytics"], "personas": ["advanced"], "jurisdictions": ["EU"]}, {"c007"}),
        ({"topics": ["unknown-topic"]}, set()),
        ({"topics": ["legal"], "jurisdictions": ["EU"]}, set()),
        ({"topics": [], "personas": [], "jurisdictions": []}, set(IDS)),
    ],
)
def test_filters_keep_items_sharing_any_value(
    embedder: TextEmbedder, index: SearchIndex, filters: dict[str, list[str]], expected: set[str]
) -> None:
    hits = query(embedder, index, "conversion rate optimization", limit=len(IDS), **filters)
    assert set(hits) == expected
    assert len(hits) == len(expected)


@pytest.mark.parametrize(("filters", "matching"), [({}, 8), ({"jurisdictions": ["EU"]}, 4), ({"topics": ["legal"]}, 1)])
def test_limit_above_the_matches_returns_every_match(
    embedder: TextEmbedder, index: SearchIndex, filters: dict[str, list[str]], matching: int
) -> None:
    assert len(query(embedder, index, "pricing strategy", limit=50, **filters)) == matching


def test_similarities_are_exact_cosines_in_descending_order(
    embedder: TextEmbedder, index: SearchIndex, bundle: LoadedBundle
) -> None:
    vector = embedder.embed_query("landing page experiments")
    hits = search(index, vector, personas=["intermediate", "beginner"], limit=10)
    expected = bundle.content.embeddings @ vector
    assert [hit.row for hit in hits] == sorted([0, 1, 3, 4, 5], key=lambda row: -expected[row])
    for hit in hits:
        assert hit.content_id == IDS[hit.row]
        assert hit.similarity == pytest.approx(float(expected[hit.row]), abs=2e-6)
        assert hit.similarity == round(hit.similarity, 6)


def test_both_search_paths_agree(embedder: TextEmbedder, bundle: LoadedBundle) -> None:
    vector = embedder.embed_query("privacy rules for marketing")
    for filters in ({"topics": ["marketing"]}, {"jurisdictions": ["US"]}, {"personas": ["beginner"]}):
        through_graph = search(build_search_index(bundle, exact_search_max_rows=0), vector, limit=3, **filters)
        exact = search(build_search_index(bundle), vector, limit=3, **filters)
        assert [hit.row for hit in through_graph] == [hit.row for hit in exact]
        assert [hit.similarity for hit in through_graph] == pytest.approx([hit.similarity for hit in exact], abs=2e-6)


class _FailingIndex:
    """Stands in for an hnswlib index whose filtered graph walk cannot find k items."""

    def knn_query(self, *args, **kwargs):
        raise RuntimeError("Cannot return the results in a contiguous 2D array. Probably ef or M is too small")


@pytest.mark.parametrize("filters", [{}, {"topics": ["marketing"]}])
def test_an_index_that_cannot_return_k_falls_back_to_exact_scoring(
    embedder: TextEmbedder, bundle: LoadedBundle, filters: dict[str, list[str]]
) -> None:
    vector = embedder.embed_query("conversion rate optimization")
    failing = dataclasses.replace(build_search_index(bundle, exact_search_max_rows=0), index=_FailingIndex())
    assert search(failing, vector, limit=3, **filters) == search(build_search_index(bundle), vector, limit=3, **filters)


def test_search_index_describes_its_bundle(index: SearchIndex, bundle: LoadedBundle) -> None:
    assert index.version == bundle.version
    assert len(index) == len(ITEMS)
    assert index.content_ids == tuple(IDS)
    np.testing.assert_array_equal(index.unrestricted_rows, [0, 3])
    np.testing.assert_array_equal(index.topic_rows["marketing"], [0, 1, 4, 5])


def test_hits_are_immutable(embedder: TextEmbedder, index: SearchIndex) -> None:
    hit = search(index, embedder.embed_query("sourdough"), limit=1)[0]
    assert hit == SearchHit(row=3, content_id="c003", similarity=hit.similarity)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.row = 0  # type: ignore[misc]


def test_empty_bundle_has_no_hits(tmp_path: Path) -> None:
    index = build_search_index(load_bundle(make_tiny_bundle(tmp_path, n_items=0)))
    assert search(index, np.ones(384, dtype=np.float32), topics=["marketing"]) == []
    assert search(index, np.ones(384, dtype=np.float32)) == []


@pytest.mark.parametrize(
    ("vector", "limit", "match"),
    [
        (np.ones(384), 0, "limit must be at least 1, got 0"),
        (np.ones(383), 10, r"query_vector must have shape \(384,\), got \(383,\)"),
        (np.ones((1, 384)), 10, r"query_vector must have shape \(384,\), got \(1, 384\)"),
        (np.zeros(384), 10, "query_vector must be finite and non-zero"),
        (np.full(384, np.nan), 10, "query_vector must be finite and non-zero"),
    ],
)
def test_invalid_queries_are_rejected(index: SearchIndex, vector: np.ndarray, limit: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        search(index, vector, limit=limit)
