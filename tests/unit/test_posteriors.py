"""Posteriors: decayed statistics, hierarchical priors, incremental == full rebuild, cohort priors for new content."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aura.batch.posteriors import (
    COHORT_STRENGTH,
    MAX_SEGMENT_PRIOR_STRENGTH,
    PRIOR_STRENGTH,
    TYPE_LIFT_STRENGTH,
    PreviousStats,
    beta_parameters,
    cohort_priors,
    decay_factor,
    posterior_counts,
    read_previous,
    segment_prior_strength,
    stats_report,
    thompson_propensity,
)
from aura.bundle.format import GLOBAL_SEGMENT, MANIFEST, POSTERIORS, Manifest

NOW = datetime(2025, 10, 1, tzinfo=UTC)
NO_DECAY = 1e12
DIMS = ("intent", "device_class")
KEYS = pa.table(
    {
        "segment_id": [GLOBAL_SEGMENT, "seg_learn", "seg_learn_mobile", "seg_buy"],
        "intent": [None, "learn", "learn", "buy"],
        "device_class": [None, None, "mobile", None],
    },
    schema=pa.schema([("segment_id", pa.string()), ("intent", pa.string()), ("device_class", pa.string())]),
)
LEAVES = pa.table(
    {
        "anon_id": ["u1", "u2", "u3"],
        "intent": ["learn", "learn", "buy"],
        "device_class": ["mobile", "desktop", "mobile"],
    }
)


def _events(rows: list[tuple[str, str, str, datetime]]) -> duckdb.DuckDBPyConnection:
    """A connection with an `events` table of (anon_id, content_id, type, ts) on the surface "hero"."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    table = pa.table(
        {
            "anon_id": [r[0] for r in rows],
            "surface_id": ["hero"] * len(rows),
            "content_id": [r[1] for r in rows],
            "type": [r[2] for r in rows],
            "ts": pa.array([r[3] for r in rows], pa.timestamp("ms", tz="UTC")),
        }
    )
    con.register("raw", table)
    con.execute("CREATE TEMP TABLE events AS SELECT * FROM raw")
    return con


def _cells(counts: pa.Table) -> dict[tuple[str, str], dict[str, float]]:
    return {(r["segment_id"], r["content_id"]): r for r in counts.to_pylist()}


def test_tiny_log_arithmetic_without_decay() -> None:
    # u1 (learn, mobile): a1 4 impressions 1 click, a2 2 impressions; u9 (unassigned): a1 6 impressions 3 clicks.
    log = [("u1", "a1", "impression")] * 4 + [("u1", "a1", "click"), *[("u1", "a2", "impression")] * 2]
    log += [("u9", "a1", "impression")] * 6 + [("u9", "a1", "click")] * 3 + [("u9", "zz", "click")]
    con = _events([(u, c, t, NOW - timedelta(hours=1)) for u, c, t in log])
    counts = posterior_counts(con, KEYS, LEAVES, {"hero": ["a1", "a2"]}, as_of=NOW, half_life_days=NO_DECAY)
    cells = _cells(counts)
    s = PRIOR_STRENGTH
    surface = (4 + s * 4 / 12) / (12 + s)  # the site CTR (4 clicks / 12 impressions) shrunk by s
    a1, a2 = (4 + s * surface) / (10 + s), (0 + s * surface) / (2 + s)
    learn_lift = (1 + s * surface) / (6 + s) / surface
    buy_lift = (0 + s * surface) / (0 + s) / surface
    # Both items have one (unknown) content type: the segment's clicks on it over the clicks its impressions
    # would get at the items' global CTRs, shrunk toward the segment's lift.
    t = TYPE_LIFT_STRENGTH
    learn_factor = (1 + t * learn_lift) / (4 * a1 + 2 * a2 + t)
    expected = {
        (GLOBAL_SEGMENT, "a1"): (10, 4, surface),
        (GLOBAL_SEGMENT, "a2"): (2, 0, surface),
        ("seg_learn", "a1"): (4, 1, a1 * learn_factor),
        ("seg_learn", "a2"): (2, 0, a2 * learn_factor),
        ("seg_learn_mobile", "a1"): (4, 1, a1 * learn_factor),
        ("seg_learn_mobile", "a2"): (2, 0, a2 * learn_factor),
        ("seg_buy", "a1"): (0, 0, a1 * buy_lift),
        ("seg_buy", "a2"): (0, 0, a2 * buy_lift),
    }
    assert cells.keys() == expected.keys()
    for key, (impressions, clicks, prior) in expected.items():
        got = cells[key]
        assert (got["impressions"], got["clicks"], got["prior_mean"]) == pytest.approx((impressions, clicks, prior))
    assert [(r["segment_id"], r["content_id"]) for r in counts.to_pylist()] == sorted(expected)


def test_a_segment_prior_follows_its_lift_on_each_content_type() -> None:
    # Both items have the same global CTR; learners click only the guide, buyers only the product.
    log = [(u, c, "impression") for u in ("u1", "u3") for c in ("g1", "p1") for _ in range(5)]
    log += [("u1", "g1", "click")] * 2 + [("u3", "p1", "click")] * 2
    con = _events([(u, c, t, NOW - timedelta(hours=1)) for u, c, t in log])
    types = {"g1": "guide", "p1": "product"}
    counts = posterior_counts(
        con, KEYS, LEAVES, {"hero": ["g1", "p1"]}, as_of=NOW, half_life_days=NO_DECAY, content_types=types
    )
    prior = {key: row["prior_mean"] for key, row in _cells(counts).items()}
    assert prior[("seg_learn", "g1")] > prior[(GLOBAL_SEGMENT, "g1")] > prior[("seg_learn", "p1")]
    assert prior[("seg_buy", "p1")] > prior[(GLOBAL_SEGMENT, "p1")] > prior[("seg_buy", "g1")]


def test_events_decay_by_their_age_and_future_events_are_ignored() -> None:
    rows = [("u1", "a1", "impression", NOW - timedelta(days=d)) for d in (0, 10, 20)]
    rows += [("u1", "a1", "click", NOW - timedelta(days=10)), ("u1", "a1", "click", NOW + timedelta(days=1))]
    counts = posterior_counts(_events(rows), KEYS, LEAVES, {"hero": ["a1"]}, as_of=NOW, half_life_days=10)
    global_cell = _cells(counts)[(GLOBAL_SEGMENT, "a1")]
    assert global_cell["impressions"] == pytest.approx(1 + 0.5 + 0.25)
    assert global_cell["clicks"] == pytest.approx(0.5)
    assert decay_factor(30, 10) == 0.125


def _random_log(seed: int, n: int, days: int) -> list[tuple[str, str, str, datetime]]:
    rng = np.random.default_rng(seed)
    users = ["u1", "u2", "u3", "u4"]
    rows = []
    for _ in range(n):
        ts = NOW - timedelta(seconds=int(rng.integers(days * 86400)))
        user, item = users[rng.integers(4)], f"a{rng.integers(6)}"
        rows.append((user, item, "impression", ts))
        if rng.random() < 0.2 + 0.1 * int(item[1]) / 6:
            rows.append((user, item, "click", ts))
    return rows


def _previous(counts: pa.Table, as_of: datetime, half_life: float) -> PreviousStats:
    return PreviousStats(
        cells=counts.select(["surface_id", "segment_id", "content_id", "impressions", "clicks"]),
        as_of=as_of,
        half_life_days=half_life,
    )


def test_incremental_equals_full_rebuild() -> None:
    con = _events(_random_log(3, 3000, 60))
    eligible = {"hero": [f"a{i}" for i in range(6)]}
    checkpoints = [NOW - timedelta(days=40), NOW - timedelta(days=25, hours=3), NOW - timedelta(days=1)]
    previous = None
    for as_of in checkpoints:
        counts = posterior_counts(con, KEYS, LEAVES, eligible, as_of=as_of, half_life_days=14, previous=previous)
        previous = _previous(counts, as_of, 14)
    full = posterior_counts(con, KEYS, LEAVES, eligible, as_of=checkpoints[-1], half_life_days=14)
    assert counts["segment_id"].to_pylist() == full["segment_id"].to_pylist()
    assert counts["content_id"].to_pylist() == full["content_id"].to_pylist()
    for column in ("impressions", "clicks", "prior_mean"):
        np.testing.assert_allclose(counts[column].to_numpy(), full[column].to_numpy(), rtol=1e-9)
    assert full["impressions"].to_numpy().sum() > 0


@pytest.mark.parametrize(
    ("keys", "previous", "message"),
    [
        (KEYS.drop(["device_class"]), None, "they must match"),
        (KEYS, PreviousStats(pa.table({}), NOW, 7.0), "half-life of 7.0 days"),
    ],
)
def test_posterior_counts_rejects_mismatches(keys: pa.Table, previous: PreviousStats | None, message: str) -> None:
    con = _events([("u1", "a1", "impression", NOW)])
    with pytest.raises(ValueError, match=message):
        posterior_counts(con, keys, LEAVES, {"hero": ["a1"]}, as_of=NOW, half_life_days=14, previous=previous)


def test_read_previous_round_trip(tmp_path: Path) -> None:
    cells = pa.table(
        {
            "surface_id": ["hero"],
            "segment_id": [GLOBAL_SEGMENT],
            "content_id": ["a1"],
            "alpha": [1.5],
            "beta": [9.0],
            "propensity": pa.array([1.0], pa.float32()),
            "impressions": [4.25],
            "clicks": [0.5],
        }
    )
    pq.write_table(cells, tmp_path / POSTERIORS)
    manifest = Manifest(
        "v1", "2025-10-01T00:00:00Z", "p1", None, {}, reports={"posteriors": stats_report(NOW, 14, None)}
    )
    (tmp_path / MANIFEST).write_text(manifest.to_json())
    previous = read_previous(tmp_path)
    assert previous is not None and previous.as_of == NOW and previous.half_life_days == 14
    assert previous.cells.to_pylist() == [
        {"surface_id": "hero", "segment_id": GLOBAL_SEGMENT, "content_id": "a1", "impressions": 4.25, "clicks": 0.5}
    ]
    pq.write_table(cells.set_column(6, "impressions", pa.nulls(1, pa.float64())), tmp_path / POSTERIORS)
    assert read_previous(tmp_path) is None


def test_new_content_starts_at_its_cohort() -> None:
    # Two cohorts of seen items in embedding space: x-axis items click at 40%, y-axis items at 2%.
    ids = ["hi1", "hi2", "hi3", "lo1", "lo2", "lo3", "new_hi", "new_lo"]
    embeddings = np.array(
        [[1, 0.1, 0], [1, -0.1, 0], [1, 0, 0.1], [0.1, 1, 0], [-0.1, 1, 0], [0, 1, 0.1], [1, 0.05, 0.05], [0.05, 1, 0]]
    )
    seen = {"hi1": (200, 80), "hi2": (200, 80), "hi3": (200, 80), "lo1": (200, 4), "lo2": (200, 4), "lo3": (200, 4)}
    rows = [
        {"surface_id": "hero", "segment_id": seg, "content_id": cid, "prior_mean": 0.2}
        | dict(zip(("impressions", "clicks"), seen.get(cid, (0.0, 0.0)), strict=True))
        for seg in (GLOBAL_SEGMENT, "seg_learn")
        for cid in sorted(ids)
    ]
    counts = pa.Table.from_pylist(rows)
    prior_mean, strength = cohort_priors(counts, ids, embeddings.astype(np.float32), neighbours=3)
    by_key = {(r["segment_id"], r["content_id"]): (m, s) for r, m, s in zip(rows, prior_mean, strength, strict=True)}
    for segment in (GLOBAL_SEGMENT, "seg_learn"):
        high, low = by_key[(segment, "new_hi")], by_key[(segment, "new_lo")]
        assert high[0] == pytest.approx((0.2 * PRIOR_STRENGTH + 80) / (PRIOR_STRENGTH + 200), rel=1e-6)
        assert low[0] == pytest.approx((0.2 * PRIOR_STRENGTH + 4) / (PRIOR_STRENGTH + 200), rel=1e-6)
        assert high[1] == low[1] == COHORT_STRENGTH
        assert by_key[(segment, "hi1")] == (0.2, PRIOR_STRENGTH)
    alpha, beta = beta_parameters(np.zeros(2), np.zeros(2), prior_mean[[6, 7]], strength[[6, 7]])
    assert alpha[0] / (alpha[0] + beta[0]) > 0.35 > 0.05 > alpha[1] / (alpha[1] + beta[1])


def test_thompson_propensity_fills_exactly_top_n_per_draw() -> None:
    alpha = np.array([[50.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    beta = np.array([[5.0, 50.0, 50.0, 50.0, 50.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    propensity = thompson_propensity(alpha, beta, top_n=2, rng=np.random.default_rng(0))
    np.testing.assert_allclose(propensity.sum(axis=1), [2.0, 2.0], atol=1e-6)
    assert propensity[0, 0] == 1.0
    assert thompson_propensity(alpha, beta, top_n=5, rng=np.random.default_rng(0)).min() == 1.0


def test_thompson_propensity_follows_the_posterior_variance_scale() -> None:
    alpha = np.array([[6.0, 4.0, 4.0, 4.0]])
    beta = np.array([[44.0, 46.0, 46.0, 46.0]])
    exact = thompson_propensity(alpha, beta, top_n=1, rng=np.random.default_rng(0), draws=2000)
    sharpened = thompson_propensity(alpha, beta, 1, np.random.default_rng(0), 2000, variance_scale=0.05)
    assert exact[0, 0] < 0.7 < 0.9 < sharpened[0, 0]


def test_segment_prior_strength_follows_how_far_segment_cells_stray_from_their_prior() -> None:
    def strength(clicks: list[float]) -> np.ndarray:
        n = len(clicks)
        counts = pa.table(
            {
                "surface_id": ["hero"] * (n + 1),
                "segment_id": [GLOBAL_SEGMENT] + [f"seg_{i}" for i in range(n)],
                "impressions": [1000.0] * (n + 1),
                "clicks": [100.0, *clicks],
            }
        )
        return segment_prior_strength(counts, np.full(n + 1, 0.1))

    # Clicks as the prior expects: the prior should weigh most; clicks far from it: little.
    assert strength([100.0, 100.0, 100.0, 100.0]).tolist() == [PRIOR_STRENGTH] + [MAX_SEGMENT_PRIOR_STRENGTH] * 4
    spread = strength([20.0, 180.0, 40.0, 160.0])
    assert spread[0] == PRIOR_STRENGTH
    # Variance of the true CTRs around 0.1: ((0.08^2 + 0.06^2) / 2 - 0.09 / 1000); m (1 - m) / v - 1.
    assert spread[1:] == pytest.approx(0.09 / ((0.08**2 + 0.06**2) / 2 - 0.09 / 1000) - 1)
