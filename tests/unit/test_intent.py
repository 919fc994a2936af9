"""Intent by LightGBM: labels from later clicks, features without protected attributes, held-out comparison."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest

from aura.batch.build import INTENT_EVIDENCE, SiteTables, register_intent_evidence, register_site, user_profiles
from aura.batch.intent import (
    assign_intents,
    learn_intent_evidence,
    train_intent_model,
    training_cutoffs,
    visitor_features,
)
from aura.batch.synthetic import generate_site
from aura.protected import PROTECTED_ATTRIBUTES, check_features

NOW = datetime(2025, 10, 1, tzinfo=UTC)


def _connect(site: SiteTables) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    con = duckdb.connect()
    register_site(con, site)
    return con, sorted({t for ts in site.content["topics"].to_list() if ts for t in ts})


@pytest.fixture(scope="module")
def synthetic() -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    return _connect(generate_site(11, n_content=60, n_visitors=1200))


@pytest.mark.parametrize("name", ["gender", "age", "clicks:religion", "visitor_ethnicity", "sexual_orientation_guess"])
def test_protected_attributes_are_never_features(name: str) -> None:
    with pytest.raises(ValueError, match="protected attributes are never features"):
        check_features(["clicks:guide", name])


def test_features_describe_behaviour_and_context_only(synthetic: tuple[duckdb.DuckDBPyConnection, list[str]]) -> None:
    con, topics = synthetic
    cutoffs = training_cutoffs(con)
    features = visitor_features(con, cutoffs.select(["anon_id", "cut"]), INTENT_EVIDENCE, topics)
    names = features.table.column_names
    check_features(names)
    assert not {part for n in names for part in n.replace(":", "_").split("_")} & PROTECTED_ATTRIBUTES
    assert names[:4] == ["device", "referrer_class", "page_type", "time_of_day"]
    assert {f"clicks:{t}" for t in INTENT_EVIDENCE} | {f"topic:{t}" for t in topics} <= set(names)
    assert features.anon_ids == cutoffs["anon_id"].to_pylist()
    matrix = features.matrix(features.categories())
    assert matrix.shape == (cutoffs.num_rows, len(names))
    # The window ends at the middle click: half the clicks (rounded down) are features.
    clicks = features.table["clicks"].to_numpy()
    assert clicks.min() >= 1


def test_lightgbm_beats_the_evidence_argmax_on_heldout_visitors(
    synthetic: tuple[duckdb.DuckDBPyConnection, list[str]],
) -> None:
    con, topics = synthetic
    model = train_intent_model(con, INTENT_EVIDENCE, topics, seed=0)
    stats = model.stats
    assert stats["train_visitors"] + stats["heldout_visitors"] == training_cutoffs(con).num_rows
    assert 0.15 < stats["heldout_visitors"] / (stats["train_visitors"] + stats["heldout_visitors"]) < 0.35
    assert stats["model_heldout_accuracy"] > stats["evidence_heldout_accuracy"]
    assert model.use_model and stats["use_model"]
    again = train_intent_model(con, INTENT_EVIDENCE, topics, seed=0)
    assert again.stats == stats

    ids = training_cutoffs(con)["anon_id"].to_pylist()[:50]
    assigned = assign_intents(con, model, ids, NOW, INTENT_EVIDENCE, topics)
    assert set(assigned) == set(ids)
    assert {i for i, _ in assigned.values()} <= set(model.intents)
    assert all(0.25 <= c <= 1 for _, c in assigned.values())


def test_without_enough_visitors_the_evidence_argmax_is_used() -> None:
    odd_topics = ["it's", 'say "hi"', "a, b: [c]"]
    content = generate_site(3, n_content=12, n_visitors=5).content.with_columns(
        pl.Series("topics", [odd_topics] * 12, dtype=pl.List(pl.String))
    )
    guide, product = (content.filter(pl.col("content_type") == t)["id"][0] for t in ("guide", "product"))
    log = [("u1", guide, 0), ("u1", guide, 1), ("u1", product, 2), ("u2", product, 0), ("u2", product, 1)]
    events = pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(log))],
            "ts": [NOW - timedelta(hours=10 - h) for _, _, h in log],
            "anon_id": [u for u, _, _ in log],
            "session_id": [f"s_{u}" for u, _, _ in log],
            "surface_id": ["hero"] * len(log),
            "content_id": [c for _, c, _ in log],
            "type": ["click"] * len(log),
            "device": ["mobile"] * len(log),
            "referrer": [""] * len(log),
            "page_type": ["home"] * len(log),
            "country": ["US"] * len(log),
            "time_of_day": ["morning"] * len(log),
            "campaign": [None] * len(log),
        },
        schema_overrides={"campaign": pl.String},
    )
    con, topics = _connect(SiteTables(content=content, events=events))
    cutoffs = training_cutoffs(con)
    # u1: cut after its first click (guide); the later guide + product clicks say learn 1.0 vs buy 0.6.
    assert cutoffs.select(["anon_id", "label"]).to_pylist() == [
        {"anon_id": "u1", "label": "learn"},
        {"anon_id": "u2", "label": "buy"},
    ]
    features = visitor_features(con, cutoffs.select(["anon_id", "cut"]), INTENT_EVIDENCE, topics)
    assert (
        features.table.select([f"topic:{t}" for t in odd_topics]).to_pylist()
        == [dict.fromkeys([f"topic:{t}" for t in odd_topics], 1)] * 2
    )
    model = train_intent_model(con, INTENT_EVIDENCE, topics)
    assert not model.use_model and model.booster is None
    assert model.stats["train_visitors"] + model.stats["heldout_visitors"] == 2
    assigned = assign_intents(con, model, ["u1", "u2"], NOW, INTENT_EVIDENCE, topics)
    # The whole history, the weights taken as log-likelihoods: u1 learn 2.0, buy 0.6, compare 0.4, browse 0;
    # u2 buy 1.2, compare 0.8, learn and browse 0. The confidence is the softmax.
    assert assigned == {
        "u1": ("learn", pytest.approx(math.exp(2) / (math.exp(2) + math.exp(0.6) + math.exp(0.4) + 1))),
        "u2": ("buy", pytest.approx(math.exp(1.2) / (math.exp(1.2) + math.exp(0.8) + 2))),
    }


def test_learnt_evidence_reaches_every_intent_and_beats_the_hand_made_table() -> None:
    site = generate_site(7, n_content=60, n_visitors=1500, days=30)
    con, _ = _connect(site)
    truth = dict(zip(site.visitors["anon_id"], site.visitors["latent_intent"], strict=True))
    learnt = learn_intent_evidence(con, INTENT_EVIDENCE, min_clicks=3)
    assert set(learnt) == set(INTENT_EVIDENCE)
    assert all(w < 0 for weights in learnt.values() for w in weights.values())  # log-probabilities

    def accuracy(evidence: dict[str, dict[str, float]]) -> tuple[float, set[str]]:
        register_intent_evidence(con, evidence)
        guessed = dict(zip(*user_profiles(con, 3, NOW).select(["anon_id", "intent"]).to_pydict().values(), strict=True))
        return sum(truth[a] == i for a, i in guessed.items()) / len(guessed), set(guessed.values())

    hand_accuracy, _ = accuracy(INTENT_EVIDENCE)
    learnt_accuracy, reached = accuracy(learnt)
    assert reached == {"learn", "compare", "buy", "browse"}
    assert learnt_accuracy > hand_accuracy + 0.05
