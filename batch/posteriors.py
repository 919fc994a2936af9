"""Beta posteriors per surface x segment x item: decayed sufficient statistics, priors and propensities.

The sufficient statistics of a cell are its impressions and clicks, each event weighted by
`2 ** (-age_days / half_life_days)` at the build's `as_of`. Decay is multiplicative, so the statistics
of the previous bundle, decayed from its `as_of` to the new one, plus the new events give exactly the
statistics of a full rebuild (as long as visitors keep their segments). The aggregation is DuckDB SQL
over the `events` table that `aura.batch.build.register_site` creates.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from aura.bundle.format import GLOBAL_SEGMENT, POSTERIORS, SCHEMAS, Manifest
from aura.config import Surface

PRIOR_STRENGTH = 10.0
"""Pseudo-impressions of the empirical-Bayes prior of a `seg_global` cell, and the least of any cell."""
MAX_SEGMENT_PRIOR_STRENGTH = 1000.0
"""The most pseudo-impressions `segment_prior_strength` gives a segment cell's prior."""
TYPE_LIFT_STRENGTH = 5.0
"""Pseudo-clicks that shrink a segment's lift on one content type toward its lift on the whole surface."""
COHORT_STRENGTH = 3.0
"""Pseudo-impressions of the prior of new content, taken from its nearest neighbours."""
COHORT_NEIGHBOURS = 5
NEW_ITEM_IMPRESSIONS = 1.0
"""An item with fewer decayed impressions than this on a surface (all segments) is new there."""
DEFAULT_CTR = 0.05
"""Prior mean click rate when the event log has no impressions at all."""
DEFAULT_HALF_LIFE_DAYS = 30.0
PROPENSITY_DRAWS = 200
REPORT_KEY = "posteriors"
"""The manifest `reports` entry with the `as_of` and `half_life_days` of the decayed statistics."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EXACT = "DECIMAL(38, 12)"
"""Event weights are summed as fixed-point decimals: exact, so parallel aggregation is deterministic."""
_STATS_SCHEMA = pa.schema(
    [
        ("surface_id", pa.string()),
        ("segment_id", pa.string()),
        ("content_id", pa.string()),
        ("impressions", pa.float64()),
        ("clicks", pa.float64()),
    ]
)


@dataclass(frozen=True)
class PreviousStats:
    """The decayed statistics of a previous bundle, valid at `as_of` with `half_life_days`."""

    cells: pa.Table
    """surface_id, segment_id, content_id, impressions, clicks."""
    as_of: datetime
    half_life_days: float


def read_previous(bundle_dir: str | Path) -> PreviousStats | None:
    """The decayed statistics of a bundle directory, or None when it was built without them."""
    manifest = Manifest.read(bundle_dir)
    report = manifest.reports.get(REPORT_KEY)
    if not isinstance(report, dict) or "as_of" not in report or "half_life_days" not in report:
        return None
    cells = pq.read_table(Path(bundle_dir) / POSTERIORS, columns=_STATS_SCHEMA.names)
    if cells.num_rows and cells["impressions"].null_count:
        return None
    return PreviousStats(
        cells=cells.cast(_STATS_SCHEMA),
        as_of=datetime.fromisoformat(report["as_of"]),
        half_life_days=float(report["half_life_days"]),
    )


def decay_factor(days: float, half_life_days: float) -> float:
    """The weight an event `days` old keeps: 2 ** (-days / half_life_days)."""
    return 2.0 ** (-days / half_life_days)


def posterior_counts(
    con: duckdb.DuckDBPyConnection,
    segment_keys: pa.Table,
    user_leaves: pa.Table,
    eligible: Mapping[str, Sequence[str]],
    *,
    as_of: datetime,
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS,
    previous: PreviousStats | None = None,
    prior_strength: float = PRIOR_STRENGTH,
    content_types: Mapping[str, str] | None = None,
) -> pa.Table:
    """Decayed impressions and clicks and the prior mean per surface x segment x eligible item, sorted.

    `segment_keys` has `segment_id` and one column per segment dimension (null: any value);
    `user_leaves` has `anon_id` and the same dimension columns. A segment's cell pools the events of
    every visitor it covers (`seg_global` is everyone, unassigned visitors too). With `previous`, only
    events after `previous.as_of` are read and the previous statistics are decayed to `as_of`.

    The prior mean of an item in `seg_global` is the surface CTR (shrunk toward the site CTR); in a
    segment it is the item's global CTR (shrunk toward the surface CTR) times the segment's lift on
    the surface (its CTR, shrunk toward the surface CTR, over the surface CTR), refined per content type
    (`content_types`, content id to type): the segment's clicks on the type over the clicks its impressions
    of the type would get at the items' global CTRs, shrunk toward the segment's lift by
    `TYPE_LIFT_STRENGTH` pseudo-clicks. So a small cell starts from what its segment is known to prefer.
    """
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be positive, got {half_life_days}.")
    dimensions = [c for c in segment_keys.column_names if c != "segment_id"]
    if set(dimensions) != set(user_leaves.column_names) - {"anon_id"}:
        raise ValueError(
            f"segment keys have the dimensions {dimensions}, user leaves {user_leaves.column_names[1:]}; "
            "they must match."
        )
    since = _EPOCH
    carried = pa.Table.from_pylist([], schema=_STATS_SCHEMA)
    carry = 1.0
    if previous is not None:
        if previous.half_life_days != half_life_days:
            raise ValueError(
                f"the previous statistics decay with a half-life of {previous.half_life_days} days, "
                f"this build with {half_life_days}; rebuild in full."
            )
        since = previous.as_of
        carry = decay_factor((as_of - previous.as_of).total_seconds() / 86400.0, half_life_days)
        carried = previous.cells
    con.register(
        "eligible",
        pa.table(
            {
                "surface_id": pa.array([s for s, ids in eligible.items() for _ in ids], pa.string()),
                "content_id": pa.array([c for ids in eligible.values() for c in ids], pa.string()),
            }
        ),
    )
    con.register("segment_keys", segment_keys)
    types = content_types or {}
    item_ids = sorted({c for ids in eligible.values() for c in ids})
    con.register(
        "item_types",
        pa.table({"content_id": pa.array(item_ids, pa.string()), "content_type": [types.get(c, "") for c in item_ids]}),
    )
    con.register("user_leaves", user_leaves)
    con.register("carried", carried)
    dims = ", ".join(f'u."{d}"' for d in dimensions)
    match = " AND ".join(f'(s."{d}" IS NULL OR s."{d}" = l."{d}")' for d in dimensions) or "TRUE"
    return con.sql(
        f"""
        WITH weighted AS (
            SELECT e.surface_id, e.content_id, e.anon_id, e.type,
                   pow(2.0, -(epoch($as_of) - epoch(e.ts)) / 86400.0 / $half_life)::{_EXACT} AS w
            FROM events e JOIN eligible USING (surface_id, content_id)
            WHERE e.ts > $since AND e.ts <= $as_of
        ),
        per_leaf AS (
            SELECT w.surface_id, w.content_id{", " + dims if dims else ""},
                   coalesce(sum(w.w) FILTER (WHERE w.type = 'impression'), 0)::{_EXACT} AS impressions,
                   coalesce(sum(w.w) FILTER (WHERE w.type = 'click'), 0)::{_EXACT} AS clicks
            FROM weighted w LEFT JOIN user_leaves u USING (anon_id)
            GROUP BY ALL
        ),
        fresh AS (
            SELECT l.surface_id, s.segment_id, l.content_id, sum(l.impressions) AS impressions, sum(l.clicks) AS clicks
            FROM per_leaf l JOIN segment_keys s ON {match}
            GROUP BY ALL
        ),
        cells AS (
            SELECT surface_id, segment_id, content_id, sum(impressions) AS impressions, sum(clicks) AS clicks
            FROM (
                SELECT * FROM fresh
                UNION ALL
                SELECT surface_id, segment_id, content_id, (impressions * $carry)::{_EXACT}, (clicks * $carry)::{_EXACT}
                FROM carried
            )
            GROUP BY ALL
        ),
        grid AS (
            SELECT e.surface_id, k.segment_id, e.content_id,
                   coalesce(c.impressions, 0)::{_EXACT} AS impressions, coalesce(c.clicks, 0)::{_EXACT} AS clicks
            FROM eligible e CROSS JOIN (SELECT segment_id FROM segment_keys) k
            LEFT JOIN cells c
              ON c.surface_id = e.surface_id AND c.segment_id = k.segment_id AND c.content_id = e.content_id
        ),
        global_cells AS (SELECT * FROM grid WHERE segment_id = $global),
        site AS (
            SELECT coalesce(sum(clicks)::DOUBLE / nullif(sum(impressions)::DOUBLE, 0), $default_ctr) AS ctr
            FROM global_cells
        ),
        surface_ctr AS (
            SELECT g.surface_id,
                   (sum(g.clicks)::DOUBLE + $strength * any_value(site.ctr)) / (sum(g.impressions)::DOUBLE + $strength)
                   AS ctr
            FROM global_cells g CROSS JOIN site GROUP BY g.surface_id
        ),
        segment_lift AS (
            SELECT g.surface_id, g.segment_id,
                   (sum(g.clicks)::DOUBLE + $strength * any_value(s.ctr)) / (sum(g.impressions)::DOUBLE + $strength)
                   / any_value(s.ctr) AS lift
            FROM grid g JOIN surface_ctr s USING (surface_id) GROUP BY g.surface_id, g.segment_id
        ),
        item_ctr AS (
            SELECT g.surface_id, g.content_id,
                   (g.clicks::DOUBLE + $strength * s.ctr) / (g.impressions::DOUBLE + $strength) AS ctr
            FROM global_cells g JOIN surface_ctr s USING (surface_id)
        ),
        type_lift AS (
            SELECT g.surface_id, g.segment_id, t.content_type,
                   (sum(g.clicks)::DOUBLE + $type_strength * any_value(l.lift))
                   / (sum((g.impressions::DOUBLE * i.ctr)::{_EXACT})::DOUBLE + $type_strength) AS lift
            FROM grid g
            JOIN item_types t USING (content_id)
            JOIN item_ctr i USING (surface_id, content_id)
            JOIN segment_lift l USING (surface_id, segment_id)
            GROUP BY g.surface_id, g.segment_id, t.content_type
        )
        SELECT g.surface_id, g.segment_id, g.content_id,
               g.impressions::DOUBLE AS impressions, g.clicks::DOUBLE AS clicks,
               CASE WHEN g.segment_id = $global THEN s.ctr ELSE least(i.ctr * l.lift, 0.999) END AS prior_mean
        FROM grid g
        JOIN surface_ctr s USING (surface_id)
        JOIN item_ctr i USING (surface_id, content_id)
        JOIN item_types t USING (content_id)
        JOIN type_lift l USING (surface_id, segment_id, content_type)
        ORDER BY g.surface_id, g.segment_id, g.content_id
        """,
        params={
            "as_of": as_of,
            "since": since,
            "half_life": half_life_days,
            "carry": carry,
            "global": GLOBAL_SEGMENT,
            "default_ctr": DEFAULT_CTR,
            "strength": prior_strength,
            "type_strength": TYPE_LIFT_STRENGTH,
        },
    ).to_arrow_table()


def cohort_priors(
    counts: pa.Table,
    content_ids: Sequence[str],
    embeddings: np.ndarray,
    *,
    prior_strength: float = PRIOR_STRENGTH,
    cohort_strength: float = COHORT_STRENGTH,
    neighbours: int = COHORT_NEIGHBOURS,
) -> tuple[np.ndarray, np.ndarray]:
    """Prior means and strengths for the rows of `posterior_counts`, new content taking its cohort's.

    An item is new on a surface when it has fewer than `NEW_ITEM_IMPRESSIONS` decayed impressions in
    `seg_global`. In every segment cell, a new item's prior mean is the similarity-weighted posterior
    mean of its `neighbours` nearest seen items (cosine over `embeddings`, rows as `content_ids`) in
    that same cell, with `cohort_strength` pseudo-impressions; other rows keep their prior, with
    `prior_strength` pseudo-impressions in `seg_global` and `segment_prior_strength`'s in segments.
    """
    prior_mean = counts["prior_mean"].to_numpy().astype(np.float64)
    impressions = counts["impressions"].to_numpy()
    clicks = counts["clicks"].to_numpy()
    strength = segment_prior_strength(counts, prior_mean, prior_strength)
    posterior_mean = (prior_strength * prior_mean + clicks) / (prior_strength + impressions)
    row_of = {cid: i for i, cid in enumerate(content_ids)}
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    surfaces = counts["surface_id"].to_numpy(zero_copy_only=False)
    segments = counts["segment_id"].to_numpy(zero_copy_only=False)
    items = counts["content_id"].to_numpy(zero_copy_only=False)
    for start, stop in _runs(surfaces):
        cell_bounds = [(start + a, start + b) for a, b in _runs(segments[start:stop])]
        global_cell = next(((a, b) for a, b in cell_bounds if segments[a] == GLOBAL_SEGMENT), None)
        if global_cell is None:
            continue
        first, last = global_cell
        new = impressions[first:last] < NEW_ITEM_IMPRESSIONS
        if not new.any() or new.all():
            continue
        vectors = unit[[row_of[c] for c in items[first:last]]]
        similarity = vectors[new] @ vectors[~new].T
        k = min(neighbours, similarity.shape[1])
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.maximum(np.take_along_axis(similarity, nearest, axis=1), 0.0) + 1e-6
        weights /= weights.sum(axis=1, keepdims=True)
        new_at, seen_at = np.flatnonzero(new), np.flatnonzero(~new)
        for a, _ in cell_bounds:
            cohort = posterior_mean[a + seen_at][nearest]
            prior_mean[a + new_at] = (weights * cohort).sum(axis=1)
            strength[a + new_at] = cohort_strength
    return prior_mean, strength


def segment_prior_strength(counts: pa.Table, prior_mean: np.ndarray, least: float = PRIOR_STRENGTH) -> np.ndarray:
    """Pseudo-impressions of every row's prior: `least` in `seg_global`; in the other segments, per surface,
    m (1 - m) / v - 1 for the mean m (1 - m) of their prior means and v the variance of their true CTRs
    around the prior means, estimated by moments from the clicks (between `least` and
    `MAX_SEGMENT_PRIOR_STRENGTH`). A segment's cells are sparse: the less their CTRs stray from what the
    prior expects, the more the prior should weigh against a few clicks."""
    strength = np.full(counts.num_rows, least)
    impressions = counts["impressions"].to_numpy()
    clicks = counts["clicks"].to_numpy()
    segmented = counts["segment_id"].to_numpy(zero_copy_only=False) != GLOBAL_SEGMENT
    surfaces = counts["surface_id"].to_numpy(zero_copy_only=False)
    for start, stop in _runs(surfaces):
        rows = np.arange(start, stop)[segmented[start:stop]]
        n, m = impressions[rows], np.clip(prior_mean[rows], 1e-3, 1 - 1e-3)
        if not rows.size or not (n**2).sum():
            continue
        excess = ((clicks[rows] - n * m) ** 2 - n * m * (1 - m)).sum() / (n**2).sum()
        fitted = (m * (1 - m)).mean() / excess - 1 if excess > 0 else MAX_SEGMENT_PRIOR_STRENGTH
        strength[rows] = min(max(fitted, least), MAX_SEGMENT_PRIOR_STRENGTH)
    return strength


def beta_parameters(
    impressions: np.ndarray,
    clicks: np.ndarray,
    prior_mean: np.ndarray,
    prior_strength: float | np.ndarray = PRIOR_STRENGTH,
) -> tuple[np.ndarray, np.ndarray]:
    """alpha = s * m + clicks, beta = s * (1 - m) + max(impressions - clicks, 0), with m clipped into (0, 1)."""
    mean = np.clip(prior_mean, 1e-3, 1 - 1e-3)
    alpha = prior_strength * mean + clicks
    beta = prior_strength * (1 - mean) + np.maximum(impressions - clicks, 0)
    return np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)


def thompson_propensity(
    alpha: np.ndarray,
    beta: np.ndarray,
    top_n: int,
    rng: np.random.Generator,
    draws: int = PROPENSITY_DRAWS,
    variance_scale: float = 1.0,
) -> np.ndarray:
    """For (cells, items) arrays, the Monte-Carlo share of Thompson draws that rank each item in its cell's top n
    (draws from Beta(alpha / s, beta / s) for the edge's `posterior_variance_scale` s)."""
    alpha, beta = alpha / variance_scale, beta / variance_scale
    cells, items = alpha.shape
    if top_n >= items:
        return np.ones((cells, items), dtype=np.float32)
    hits = np.zeros(cells * items, dtype=np.int64)
    offsets = (np.arange(cells) * items)[None, :, None]
    per_chunk = max(1, 4_000_000 // max(1, cells * items))
    for start in range(0, draws, per_chunk):
        n = min(per_chunk, draws - start)
        samples = rng.beta(alpha, beta, size=(n, cells, items))
        top = np.argpartition(-samples, top_n - 1, axis=2)[:, :, :top_n]
        hits += np.bincount((top + offsets).ravel(), minlength=cells * items)
    return (hits / draws).astype(np.float32).reshape(cells, items)


def posterior_table(
    counts: pa.Table,
    prior_mean: np.ndarray,
    prior_strength: np.ndarray,
    surfaces: Mapping[str, Surface],
    n_segments: int,
    seed: int,
    progress: bool = False,
    variance_scale: float = 1.0,
) -> pa.Table:
    """The bundle's posteriors table: Beta parameters, Thompson propensities (for draws with the edge's
    `posterior_variance_scale`) and the decayed statistics."""
    impressions = counts["impressions"].to_numpy()
    clicks = counts["clicks"].to_numpy()
    alpha, beta = beta_parameters(impressions, clicks, prior_mean, prior_strength)
    propensity = np.empty(counts.num_rows, dtype=np.float32)
    surface_col = counts["surface_id"].to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(seed)
    runs = list(_runs(surface_col))
    for start, stop in tqdm(runs, desc="posteriors", unit="surface", disable=None if progress else True):
        shape = (n_segments, (stop - start) // n_segments)
        top_n = surfaces[surface_col[start]].max_items
        propensity[start:stop] = thompson_propensity(
            alpha[start:stop].reshape(shape), beta[start:stop].reshape(shape), top_n, rng, variance_scale=variance_scale
        ).ravel()
    return pa.table(
        {
            "surface_id": counts["surface_id"],
            "segment_id": counts["segment_id"],
            "content_id": counts["content_id"],
            "alpha": alpha,
            "beta": beta,
            "propensity": propensity,
            "impressions": impressions,
            "clicks": clicks,
        },
        schema=SCHEMAS[POSTERIORS],
    )


def stats_report(as_of: datetime, half_life_days: float, incremental_from: str | None) -> dict[str, object]:
    """The manifest report that lets the next build continue from this bundle's statistics."""
    return {
        "as_of": as_of.astimezone(UTC).isoformat(),
        "half_life_days": half_life_days,
        "incremental_from": incremental_from,
    }


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive values."""
    bounds = np.flatnonzero(np.r_[True, values[1:] != values[:-1], True])
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
