"""Visitor intent from behaviour: a LightGBM classifier against the evidence-table argmax, chosen on held-out data.

Each labelled visitor's history is cut in two at the middle of their clicks: features describe what the
visitor did up to the cut (content types and topics clicked, device, referrer class, landing page type,
time of day, campaign, recency, activity), and the label is the intent their later clicks show (the
argmax of the summed `intent_evidence` weights of the content types clicked after the cut: the
log-likelihoods `learn_intent_evidence` fits, starting from the hand-made `INTENT_EVIDENCE`). Visitors are split
into training and held-out sets by a hash of their id. To assign intents, the winning method reads the
whole history up to the build's `now`. Protected attributes are never features (`check_features`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb
import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aura.protected import check_features

CATEGORICAL = ("device", "referrer_class", "page_type", "time_of_day")
HELDOUT_SHARE = 0.25
MIN_TRAINING_VISITORS = 40
_PARAMS = {
    "objective": "multiclass",
    "learning_rate": 0.1,
    "num_leaves": 4,
    "min_data_in_leaf": 30,
    "feature_fraction": 0.9,
    "lambda_l2": 1.0,
    "num_threads": 1,
    "deterministic": True,
    "verbose": -1,
}
_ROUNDS = 80


@dataclass(frozen=True)
class Features:
    """One row per visitor: the feature columns and the evidence-table argmax over the same window."""

    anon_ids: list[str]
    table: pa.Table
    """The feature columns, categorical ones as strings."""
    evidence_intent: list[str | None]
    """The evidence-table argmax over the same window (the old method's answer)."""
    evidence_confidence: np.ndarray

    def categories(self) -> dict[str, list[str]]:
        """The sorted values of each categorical column: the codes LightGBM learns."""
        return {c: sorted(pc.unique(self.table[c]).drop_null().to_pylist()) for c in CATEGORICAL}

    def matrix(self, categories: Mapping[str, Sequence[str]]) -> np.ndarray:
        """The float matrix LightGBM reads: categories as their index in `categories` (unknown: NaN)."""
        columns = []
        for name in self.table.column_names:
            values = self.table[name]
            if name in CATEGORICAL:
                values = pc.index_in(values, value_set=pa.array(categories[name], pa.string()))
            columns.append(values.cast(pa.float64()).to_numpy())
        return np.array(columns, dtype=np.float64).T.reshape(self.table.num_rows, self.table.num_columns)


@dataclass(frozen=True)
class IntentModel:
    """The outcome of training: the method chosen for assignment and how both did on held-out visitors."""

    booster: lgb.Booster | None
    intents: tuple[str, ...]
    categories: dict[str, list[str]]
    use_model: bool
    stats: dict[str, float | int | bool]

    def predict(self, features: Features) -> tuple[list[str | None], np.ndarray]:
        """The chosen method's intent and confidence for each row of `features`."""
        if not self.use_model or self.booster is None:
            return features.evidence_intent, features.evidence_confidence
        probabilities = self.booster.predict(features.matrix(self.categories))
        best = probabilities.argmax(axis=1)
        return [self.intents[i] for i in best], probabilities.max(axis=1)


def visitor_features(
    con: duckdb.DuckDBPyConnection,
    cutoffs: pa.Table,
    evidence: Mapping[str, Mapping[str, float]],
    topics: Sequence[str],
) -> Features:
    """Features of each visitor in `cutoffs` (anon_id, cut) from their events with `ts <= cut`.

    Needs the `events` and `content` (id, content_type, topics) tables of `register_site` and an
    `intent_evidence` table (content_type, intent, weight: the log-likelihood of `learn_intent_evidence`).
    """
    types = sorted(evidence)
    intents = sorted({i for weights in evidence.values() for i in weights})
    con.register("cutoffs", cutoffs)
    type_columns = ", ".join(
        f"count(*) FILTER (WHERE content_type = {_literal(t)}) AS {_ident('clicks:' + t)}" for t in types
    )
    topic_columns = ", ".join(
        f"count(*) FILTER (WHERE list_contains(topics, {_literal(t)})) AS {_ident('topic:' + t)}" for t in topics
    )
    evidence_columns = ", ".join(
        f"coalesce(sum(w.weight) FILTER (WHERE w.intent = {_literal(i)}), 0) AS {_ident(i)}" for i in intents
    )
    evidence_select = ", ".join(f"coalesce(v.{_ident(i)}, 0) AS {_ident('evidence:' + i)}" for i in intents)
    click_counts = ", ".join(
        f"coalesce(n.{_ident(name)}, 0) AS {_ident(name)}"
        for name in [f"clicks:{t}" for t in types] + [f"topic:{t}" for t in topics]
    )
    # Clicks are a small share of the events: the per-type and per-topic counts scan only them.
    table = con.sql(
        f"""
        WITH windowed AS (
            SELECT e.*, k.cut FROM events e JOIN cutoffs k USING (anon_id) WHERE e.ts <= k.cut
        ),
        clicked AS (
            SELECT w.anon_id, c.content_type, c.topics
            FROM windowed w LEFT JOIN content c ON c.id = w.content_id WHERE w.type = 'click'
        ),
        evidence AS (
            SELECT v.anon_id, {evidence_columns}
            FROM clicked v JOIN intent_evidence w USING (content_type) GROUP BY v.anon_id
        ),
        per_click AS (
            SELECT anon_id, {type_columns}, {topic_columns} FROM clicked GROUP BY anon_id
        ),
        activity AS (
            SELECT anon_id,
                   arg_min(device, ts) AS device, arg_min(referrer_class, ts) AS referrer_class,
                   arg_min(page_type, ts) AS page_type, arg_min(time_of_day, ts) AS time_of_day,
                   max((campaign IS NOT NULL)::INTEGER) AS has_campaign,
                   (epoch(any_value(cut)) - epoch(min(ts))) / 86400.0 AS days_since_first_seen,
                   (epoch(any_value(cut)) - epoch(max(ts))) / 86400.0 AS days_since_last_seen,
                   count(DISTINCT session_id) AS sessions,
                   count(*) FILTER (WHERE type = 'impression') AS impressions,
                   count(*) FILTER (WHERE type = 'click') AS clicks
            FROM windowed GROUP BY anon_id
        )
        SELECT a.*, {click_counts}, {evidence_select}
        FROM cutoffs k JOIN activity a USING (anon_id) LEFT JOIN per_click n USING (anon_id)
        LEFT JOIN evidence v USING (anon_id)
        ORDER BY a.anon_id
        """
    ).to_arrow_table()
    names = [n for n in table.column_names if n != "anon_id" and not n.startswith("evidence:")]
    check_features(names)
    scores = np.column_stack([table[f"evidence:{i}"].to_numpy() for i in intents]).reshape(-1, len(intents))
    probabilities = intent_probabilities(scores)
    has_evidence = sum(table[f"clicks:{t}"].to_numpy() for t in types) > 0
    evidence_intent: list[str | None] = [
        intents[b] if seen else None for b, seen in zip(probabilities.argmax(axis=1), has_evidence, strict=True)
    ]
    confidence = np.where(has_evidence, probabilities.max(axis=1, initial=0.0), 0.0)
    return Features(
        anon_ids=table["anon_id"].to_pylist(),
        table=table.select(names),
        evidence_intent=evidence_intent,
        evidence_confidence=confidence,
    )


EVIDENCE_ITERATIONS = 100
EVIDENCE_PSEUDO_CLICKS = 0.5
"""Added to every intent's expected clicks on every content type, so no type is impossible for an intent."""


def learn_intent_evidence(
    con: duckdb.DuckDBPyConnection, initial: Mapping[str, Mapping[str, float]], min_clicks: int
) -> dict[str, dict[str, float]]:
    """What one click on each content type says about each intent, learnt from the visitors' clicks:
    log P(type | intent) of a mixture of multinomials over the clicks per content type of every visitor
    with at least `min_clicks` clicks on those types, fitted by expectation-maximisation.

    The mixture starts from `initial` (a hand-made table of how much a click on a type suggests each
    intent), which ties each component to an intent name. Summed over a visitor's clicks, the result is
    the log-likelihood of each intent; its softmax (`intent_probabilities`) is the probability of each.
    Needs the `events` and `content` tables of `aura.batch.build.register_site`.
    """
    types = sorted(initial)
    intents = sorted({i for weights in initial.values() for i in weights})
    per_type = ", ".join(f"count(*) FILTER (WHERE c.content_type = {_literal(t)}) AS {_ident(t)}" for t in types)
    columns = con.sql(
        f"""
        SELECT {per_type}
        FROM events e JOIN content c ON c.id = e.content_id
        WHERE e.type = 'click' AND list_contains($types, c.content_type)
        GROUP BY e.anon_id HAVING count(*) >= $min_clicks
        ORDER BY e.anon_id
        """,
        params={"types": types, "min_clicks": max(1, min_clicks)},
    ).fetchnumpy()
    clicks = np.column_stack([columns[t].astype(np.float64) for t in types]).reshape(-1, len(types))
    # Every type starts possible for every intent, so the hand-made zeros can be learnt away.
    start = np.array([[initial[t].get(i, 0.0) for t in types] for i in intents]) + 0.05
    type_given_intent = start / start.sum(axis=1, keepdims=True)
    intent_share = np.full(len(intents), 1.0 / len(intents))
    for _ in range(EVIDENCE_ITERATIONS if len(clicks) else 0):
        responsibility = intent_probabilities(np.log(intent_share) + clicks @ np.log(type_given_intent).T)
        intent_share = np.maximum(responsibility.mean(axis=0), 1e-9)
        expected = responsibility.T @ clicks + EVIDENCE_PSEUDO_CLICKS
        type_given_intent = expected / expected.sum(axis=1, keepdims=True)
    log_likelihood = np.log(type_given_intent)
    return {t: {i: float(log_likelihood[k, j]) for k, i in enumerate(intents)} for j, t in enumerate(types)}


def intent_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of summed log-likelihoods (visitors x intents) as probabilities (their softmax)."""
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def training_cutoffs(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """anon_id, cut and label of every visitor with at least two clicks: the cut is the time of the middle
    click, the label the `intent_evidence` argmax of the clicks after it (ties broken by intent name)."""
    return con.sql(
        """
        WITH clicks AS (
            SELECT e.anon_id, e.ts, e.event_id, c.content_type,
                   row_number() OVER (PARTITION BY e.anon_id ORDER BY e.ts, e.event_id) AS n,
                   count(*) OVER (PARTITION BY e.anon_id) AS total
            FROM events e JOIN content c ON c.id = e.content_id WHERE e.type = 'click'
        ),
        cuts AS (SELECT anon_id, ts AS cut FROM clicks WHERE total >= 2 AND n = total // 2),
        later AS (
            SELECT k.anon_id, w.intent, sum(w.weight) AS score
            FROM clicks k JOIN cuts USING (anon_id) JOIN intent_evidence w USING (content_type)
            WHERE k.ts > cuts.cut GROUP BY ALL
        ),
        labels AS (
            SELECT anon_id, intent FROM later
            QUALIFY row_number() OVER (PARTITION BY anon_id ORDER BY score DESC, intent) = 1
        )
        SELECT cuts.anon_id, cuts.cut, labels.intent AS label
        FROM cuts JOIN labels USING (anon_id) ORDER BY cuts.anon_id
        """
    ).to_arrow_table()


def train_intent_model(
    con: duckdb.DuckDBPyConnection,
    evidence: Mapping[str, Mapping[str, float]],
    topics: Sequence[str],
    seed: int = 0,
) -> IntentModel:
    """Train LightGBM on the labelled visitors and compare it with the evidence argmax on held-out ones.

    The model is used for assignment only when its held-out accuracy beats the evidence argmax's.
    """
    intents = tuple(sorted({i for weights in evidence.values() for i in weights}))
    cutoffs = training_cutoffs(con)
    labels = dict(zip(cutoffs["anon_id"].to_pylist(), cutoffs["label"].to_pylist(), strict=True))
    features = visitor_features(con, cutoffs.select(["anon_id", "cut"]), evidence, topics)
    y = np.array([intents.index(labels[a]) for a in features.anon_ids], dtype=np.int32)
    heldout = np.array([_heldout(a) for a in features.anon_ids], dtype=bool)
    stats: dict[str, float | int | bool] = {
        "train_visitors": int((~heldout).sum()),
        "heldout_visitors": int(heldout.sum()),
    }
    categories = features.categories()
    if (~heldout).sum() < MIN_TRAINING_VISITORS or heldout.sum() == 0 or len(set(y[~heldout])) < 2:
        return IntentModel(None, intents, categories, False, stats | {"use_model": False})
    matrix = features.matrix(categories)
    booster = lgb.train(
        _PARAMS | {"num_class": len(intents), "seed": seed},
        lgb.Dataset(
            matrix[~heldout],
            label=y[~heldout],
            feature_name=[_safe(i, n) for i, n in enumerate(features.table.column_names)],
            categorical_feature=[i for i, n in enumerate(features.table.column_names) if n in CATEGORICAL],
        ),
        num_boost_round=_ROUNDS,
    )
    model_accuracy = float(np.mean(booster.predict(matrix[heldout]).argmax(axis=1) == y[heldout]))
    evidence_accuracy = float(
        np.mean(
            [
                e == intents[t]
                for e, t in zip(np.array(features.evidence_intent, dtype=object)[heldout], y[heldout], strict=True)
            ]
        )
    )
    use_model = model_accuracy > evidence_accuracy
    stats |= {
        "model_heldout_accuracy": round(model_accuracy, 4),
        "evidence_heldout_accuracy": round(evidence_accuracy, 4),
        "use_model": use_model,
    }
    return IntentModel(booster, intents, categories, use_model, stats)


def assign_intents(
    con: duckdb.DuckDBPyConnection,
    model: IntentModel,
    anon_ids: Sequence[str],
    now: datetime,
    evidence: Mapping[str, Mapping[str, float]],
    topics: Sequence[str],
) -> dict[str, tuple[str, float]]:
    """Intent and confidence of each visitor from their whole history up to `now`, by the chosen method."""
    cutoffs = pa.table({"anon_id": pa.array(list(anon_ids), pa.string()), "cut": pa.array([now] * len(anon_ids))})
    features = visitor_features(con, cutoffs, evidence, topics)
    intent, confidence = model.predict(features)
    return {a: (i, float(c)) for a, i, c in zip(features.anon_ids, intent, confidence, strict=True) if i is not None}


def _heldout(anon_id: str) -> bool:
    return int(hashlib.sha256(anon_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < HELDOUT_SHARE


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _safe(index: int, name: str) -> str:
    """A LightGBM-safe, unique feature name (LightGBM rejects JSON punctuation in names)."""
    return f"f{index}_{re.sub(r'[^A-Za-z0-9_]+', '_', name)}"
