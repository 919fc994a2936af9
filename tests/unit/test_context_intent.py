"""Naive-Bayes cold-start rules: a first request's context as evidence of the visitor's intent."""

from __future__ import annotations

import math

import duckdb
import pyarrow as pa
import pytest

from aura.batch.build import Segment
from aura.batch.context_intent import context_intent_rules, intent_posterior, with_inferred_rules
from aura.bundle.format import COLD_START, SCHEMAS

DIMS = ("intent", "device_class", "recency")


def segment(*values: str) -> Segment:
    return Segment(tuple(values), DIMS)


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    """An `events` view as the build registers it: learners read articles by day, buyers view products at night."""
    rows = []
    for visitor, intent, page, hour in (
        *((f"l{i}", "learn", "article", "morning") for i in range(30)),
        *((f"b{i}", "buy", "product", "night") for i in range(30)),
    ):
        for n in range(4):
            rows.append((f"{visitor}-{n}", visitor, "impression", "mobile", "search", page, hour, None, intent))
    columns = ("event_id", "anon_id", "type", "device", "referrer_class", "page_type", "time_of_day", "campaign")
    table = pa.table({name: [r[i] for r in rows] for i, name in enumerate(columns)})
    connection = duckdb.connect()
    connection.register("events", table)
    connection.register("truth", pa.table({"anon_id": [r[1] for r in rows], "intent": [r[8] for r in rows]}))
    return connection


def labels(con: duckdb.DuckDBPyConnection, visitors: int) -> pa.Table:
    """The intents of the first `visitors` learners and buyers (the confidently assigned ones)."""
    return con.sql(
        f"SELECT DISTINCT anon_id, intent FROM truth WHERE CAST(substr(anon_id, 2) AS INT) < {visitors}"
    ).to_arrow_table()


def test_posterior_multiplies_the_evidence_of_every_key() -> None:
    log_prior = {"learn": math.log(0.5), "buy": math.log(0.5)}
    log_likelihood = {
        ("page_type", "article"): {"learn": math.log(0.8), "buy": math.log(0.2)},
        ("time_of_day", "night"): {"learn": math.log(0.2), "buy": math.log(0.8)},
    }
    assert intent_posterior({"page_type": "article"}, log_prior, log_likelihood)["learn"] == pytest.approx(0.8)
    both = intent_posterior({"page_type": "article", "time_of_day": "night"}, log_prior, log_likelihood)
    assert both["learn"] == pytest.approx(0.5)
    unseen = intent_posterior({"page_type": "pricing"}, log_prior, log_likelihood)
    assert unseen["learn"] == pytest.approx(0.5)


def test_rules_name_the_deepest_intent_and_device_segment_the_context_supports(con) -> None:
    emitted = [segment(), segment("learn"), segment("learn", "mobile"), segment("buy"), segment("buy", "mobile", "new")]
    patterns = (("device", "page_type"), ("page_type",))
    rules = context_intent_rules(con, labels(con, 10), emitted, 0.5, patterns, min_visitors=30)
    by_context = {(r.get("device"), r["page_type"]): (r["segment_id"], r["confidence"]) for r in rules}
    # The device settles device class, so learners on mobile get the deeper segment; buyers' only
    # intent-and-device segment also fixes recency, which a first request cannot tell, so: seg_buy.
    assert by_context[("mobile", "article")][0] == "seg_learn_mobile"
    assert by_context[(None, "article")][0] == "seg_learn"
    assert by_context[("mobile", "product")][0] == "seg_buy"
    assert all(confidence > 0.9 for _, confidence in by_context.values())
    # Each page type is seen from 30 visitors: with 31 required, no rule may name one.
    assert context_intent_rules(con, labels(con, 10), emitted, 0.5, patterns, min_visitors=31) == []


def test_no_rule_below_the_confidence_or_without_intent_segments(con) -> None:
    patterns = (("device",),)  # every visitor is on mobile: no evidence either way
    assert context_intent_rules(con, labels(con, 10), [segment("learn")], 0.6, patterns, 1) == []
    assert context_intent_rules(con, labels(con, 10), [segment()], 0.0, (("page_type",),), 1) == []


def test_inferred_rules_replace_mined_ones_unless_those_are_deeper() -> None:
    mined = pa.Table.from_pylist(
        [
            {"device": "mobile", "segment_id": "seg_learn", "confidence": 0.6},
            {"page_type": "article", "segment_id": "seg_learn_mobile", "confidence": 0.55},
        ],
        schema=SCHEMAS[COLD_START],
    )
    inferred = [
        {"device": "mobile", "segment_id": "seg_buy", "confidence": 0.7},
        {"page_type": "article", "segment_id": "seg_learn", "confidence": 0.9},
        {"page_type": "product", "segment_id": "seg_buy", "confidence": 0.8},
    ]
    depth = {"seg_learn": 1, "seg_buy": 1, "seg_learn_mobile": 2}
    merged = {
        (r["device"], r["page_type"]): r["segment_id"] for r in with_inferred_rules(mined, inferred, depth).to_pylist()
    }
    assert merged == {("mobile", None): "seg_buy", (None, "article"): "seg_learn_mobile", (None, "product"): "seg_buy"}
