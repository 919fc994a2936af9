"""Cold-start rules that infer a first-time visitor's intent from the request context by naive Bayes.

The mined cold-start rules (`aura.batch.build.cold_start_table`) name a segment only where most visitors
seen in exactly that context belong to it, so a context shared by several intents gets no intent at all.
Here every context key is evidence on its own: the page type, referrer class, time of day, campaign and
device of the visitors whose intent is known (their confident assignments) give per-key likelihoods, and
a context's intent posterior is the prior times the likelihood of each of its values (naive Bayes, with
add-one smoothing). The prior is uniform: confident visitors over-represent the intents whose clicks are
most telling, and an EM estimate of the traffic's intent mix under these likelihoods (which treat
correlated keys as independent) was less accurate on the closed loop's visitors (65.5% against 70.5%,
docs/benchmarks.md). A rule names the deepest emitted segment, fixed on intent and device class only,
that the posterior puts at least `min_confidence` on, with that probability as its confidence.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aura.batch.intent import intent_probabilities
from aura.bundle.format import COLD_START, COLD_START_KEYS, SCHEMAS

EVIDENCE_KEYS: tuple[str, ...] = ("device", "referrer_class", "page_type", "time_of_day", "campaign")
"""Request context keys used as intent evidence (columns of the build's `events` view and cold-start keys)."""
RESOLVABLE_DIMENSIONS = frozenset({"intent", "device_class"})
"""The only segment dimensions a first request's context can settle: intent (inferred) and device class
(the request's device)."""


def intent_likelihoods(con: duckdb.DuckDBPyConnection, labels: pa.Table) -> dict[tuple[str, str], dict[str, float]]:
    """Log likelihood of each (key, value) of `EVIDENCE_KEYS` per intent, from the impressions of the visitors
    in `labels` (anon_id, intent), smoothed by adding one to every count."""
    con.register("intent_labels", labels)
    selects = " UNION ALL ".join(
        f"SELECT '{key}' AS key, {key} AS value, intent, count(*) AS n FROM labeled "
        f"WHERE {key} IS NOT NULL GROUP BY ALL"
        for key in EVIDENCE_KEYS
    )
    rows = con.sql(
        f"""
        WITH labeled AS (
            SELECT e.*, l.intent FROM events e JOIN intent_labels l USING (anon_id) WHERE e.type = 'impression'
        )
        {selects}
        """
    ).fetchall()
    totals = dict(
        con.sql(
            "SELECT l.intent, count(*) FROM events e JOIN intent_labels l USING (anon_id) "
            "WHERE e.type = 'impression' GROUP BY ALL"
        ).fetchall()
    )
    con.unregister("intent_labels")
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for key, value, intent, n in rows:
        counts[(key, value)][intent] = n
    distinct: dict[str, int] = defaultdict(int)
    for key, _ in counts:
        distinct[key] += 1
    return {
        (key, value): {i: math.log((by_intent.get(i, 0) + 1) / (totals[i] + distinct[key])) for i in sorted(totals)}
        for (key, value), by_intent in counts.items()
    }


def intent_posterior(
    values: Mapping[str, str], log_prior: Mapping[str, float], log_likelihood: Mapping[tuple[str, str], Mapping]
) -> dict[str, float]:
    """P(intent | context values) under naive Bayes; a value never seen with a known intent is no evidence."""
    intents = list(log_prior)
    scores = np.array([[log_prior[i] for i in intents]])
    for key, value in values.items():
        evidence = log_likelihood.get((key, value))
        if evidence is not None:
            scores[0] += [evidence[i] for i in intents]
    return dict(zip(intents, intent_probabilities(scores)[0].tolist(), strict=True))


def assigned_intents(user_segments: pa.Table, segments: Iterable) -> pa.Table:
    """anon_id and intent of every visitor in `user_segments` (user_id, segment_id) whose assigned segment, one
    of `segments` (`aura.batch.build.Segment`s), fixes an intent: the visitors whose intent is confident."""
    intent_of = {s.id: s.intent for s in segments}
    intents = pa.array([intent_of[s] for s in user_segments["segment_id"].to_pylist()], pa.string())
    labels = pa.table({"anon_id": user_segments["user_id"], "intent": intents})
    return labels.filter(pc.is_valid(labels["intent"]))


def common_values(con: duckdb.DuckDBPyConnection, min_visitors: int) -> set[tuple[str, str]]:
    """The (key, value) pairs of `EVIDENCE_KEYS` that at least `min_visitors` visitors' impressions carry."""
    selects = " UNION ALL ".join(
        f"SELECT '{key}', {key} FROM events WHERE type = 'impression' AND {key} IS NOT NULL "
        f"GROUP BY {key} HAVING count(DISTINCT anon_id) >= $min_visitors"
        for key in EVIDENCE_KEYS
    )
    return set(con.sql(selects, params={"min_visitors": min_visitors}).fetchall())


def context_intent_rules(
    con: duckdb.DuckDBPyConnection,
    labels: pa.Table,
    segments: Iterable,
    min_confidence: float,
    patterns: Iterable[tuple[str, ...]],
    min_visitors: int,
) -> list[dict[str, object]]:
    """Cold-start rules (rows of the bundle's cold-start table) for every combination of `patterns`' keys
    seen in the events' impressions, from the intents of `labels` (anon_id, intent).

    `segments` are the emitted `aura.batch.build.Segment`s; only those fixed on intent and device class
    alone can be named. A context whose posterior puts less than `min_confidence` on every such segment
    gets no rule, and so does one with a value fewer than `min_visitors` visitors carry (a rare value, such
    as a one-off campaign code, could single a visitor out).
    """
    candidates = [
        s
        for s in segments
        if s.values and s.intent is not None and RESOLVABLE_DIMENSIONS.issuperset(s.dimensions[: s.depth])
    ]
    if not candidates or labels.num_rows == 0:
        return []
    common = common_values(con, min_visitors)
    log_likelihood = {pair: v for pair, v in intent_likelihoods(con, labels).items() if pair in common}
    intents = sorted(next(iter(log_likelihood.values()), {}))
    log_prior = dict.fromkeys(intents, -math.log(len(intents)))
    seen = con.sql(f"SELECT DISTINCT {', '.join(EVIDENCE_KEYS)} FROM events WHERE type = 'impression'").fetchall()
    patterns = [p for p in patterns if set(p) <= set(EVIDENCE_KEYS)]
    contexts = {
        tuple((key, row[EVIDENCE_KEYS.index(key)]) for key in pattern)
        for pattern in patterns
        for row in seen
        if all((key, row[EVIDENCE_KEYS.index(key)]) in common for key in pattern)
    }
    rules = []
    for context in sorted(contexts):
        values = dict(context)
        posterior = intent_posterior(values, log_prior, log_likelihood)
        best = None
        for segment in candidates:
            device_class = segment.value("device_class")
            if device_class is not None and device_class != values.get("device"):
                continue
            probability = posterior.get(segment.intent, 0.0)
            if probability >= min_confidence and (best is None or (segment.depth, probability) > best[1:]):
                best = (segment, segment.depth, probability)
        if best is not None:
            rules.append({**values, "segment_id": best[0].id, "confidence": best[2]})
    return rules


def with_inferred_rules(mined: pa.Table, inferred: list[dict[str, object]], depth: Mapping[str, int]) -> pa.Table:
    """The cold-start table: `mined` rules plus `inferred` ones, an inferred rule replacing a mined rule on the
    same context unless the mined one names a deeper segment (`depth` by segment id)."""
    rules = {_rule_key(r): r for r in mined.to_pylist()}
    for rule in inferred:
        key = _rule_key(rule)
        current = rules.get(key)
        if current is None or depth[current["segment_id"]] <= depth[rule["segment_id"]]:
            rules[key] = rule
    return pa.Table.from_pylist(list(rules.values()), schema=SCHEMAS[COLD_START])


def _rule_key(rule: Mapping[str, object]) -> tuple[object, ...]:
    return (*(rule.get(k) for k in COLD_START_KEYS), rule.get("context_json"))
