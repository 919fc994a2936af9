"""Off-policy evaluation of a candidate bundle against the serving one on logged decisions, and the promotion gate.

A decision shows a slate; the value of a policy is the expected reward per decision. A bundle's policy
is Thompson sampling over its posteriors, so the probability that it puts item `a` in the slate of a
cell is the bundle's `propensity` column (`pi(a)`), and the logging policy's is the logged propensity
(`mu(a)`, reconstructed by Monte Carlo over the logging bundle's posterior draws where it is missing).
With `w = pi / mu` per shown item and reward `r`, over `N` decisions:

- IPS   = sum(w * r) / N, unbiased when the reward of an item does not depend on its slate-mates;
- SNIPS = sum(w * r) / sum(w) * sum(K) / N, with `K` the target's slate size (`sum(pi)` of the cell),
  since `E[sum of a decision's w] = K`: lower variance, bounded by the reward range times `K`;
- DR    = (sum(DM) + sum(w * (r - q))) / N, with a reward model `q` (the posterior means of the
  serving bundle) and `DM = sum over the cell's items of pi(a) * q(a)`: unbiased if either the
  propensities or the model are right.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aura.batch.posteriors import PROPENSITY_DRAWS, thompson_propensity
from aura.bundle.format import GLOBAL_SEGMENT, POSTERIORS
from aura.errors import InvalidRequest

DEFAULT_MARGIN = 0.05
"""A candidate whose DR value is more than this share below the serving bundle's is not promoted."""
REPORT_KEY = "ope"
"""The manifest `reports` entry that holds `OpeReport.to_dict()`."""
LOGGED_SCHEMA = pa.schema(
    [
        pa.field("decision_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC")),
        pa.field("bundle_version", pa.string()),
        pa.field("surface_id", pa.string(), nullable=False),
        pa.field("segment_id", pa.string(), nullable=False),
        pa.field("content_id", pa.string(), nullable=False),
        pa.field("slate_size", pa.int32(), nullable=False),
        pa.field("propensity", pa.float64()),
        pa.field("reward", pa.float64(), nullable=False),
    ]
)
"""One row per item a logged decision showed: the input of the estimators."""


@dataclass(frozen=True)
class Cell:
    """One (surface, segment) cell of a bundle: its items and their inclusion probability and Beta posterior."""

    index: dict[str, int]
    inclusion: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean reward of each item."""
        return self.alpha / (self.alpha + self.beta)


class SlatePolicy:
    """A bundle's policy as the estimators see it: cells with inclusion probabilities and posterior means."""

    def __init__(self, posteriors: pa.Table, version: str | None = None) -> None:
        self.version = version
        columns = posteriors.select(["surface_id", "segment_id", "content_id", "alpha", "beta", "propensity"])
        rows: dict[tuple[str, str], list[tuple[str, float, float, float]]] = defaultdict(list)
        for surface, segment, content, alpha, beta, propensity in zip(
            *(columns[c].to_pylist() for c in columns.column_names), strict=True
        ):
            rows[(surface, segment)].append((content, alpha, beta, np.nan if propensity is None else propensity))
        self.cells: dict[tuple[str, str], Cell] = {
            key: Cell(
                index={content: i for i, (content, *_) in enumerate(items)},
                inclusion=np.array([p for *_, p in items], dtype=np.float64),
                alpha=np.array([a for _, a, _, _ in items], dtype=np.float64),
                beta=np.array([b for _, _, b, _ in items], dtype=np.float64),
            )
            for key, items in rows.items()
        }

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path) -> SlatePolicy:
        """The policy of a bundle directory (its posteriors table)."""
        path = Path(bundle_dir) / POSTERIORS
        if not path.is_file():
            raise InvalidRequest(f"bundle directory {bundle_dir} has no {POSTERIORS}.")
        return cls(pq.read_table(path), Path(bundle_dir).name)

    def cell(self, surface_id: str, segment_id: str) -> Cell | None:
        """The cell a decision in `segment_id` samples, falling back to `seg_global` like the edge."""
        return self.cells.get((surface_id, segment_id)) or self.cells.get((surface_id, GLOBAL_SEGMENT))


@dataclass(frozen=True)
class Estimate:
    """A policy's estimated reward per decision on a set of logged decisions."""

    ips: float
    snips: float
    dr: float
    decisions: int
    slots: int
    effective_sample_size: float
    """(sum w)^2 / sum w^2 over the shown items: how many slots the estimate effectively rests on."""


@dataclass(frozen=True)
class OpeReport:
    """A candidate bundle against the serving bundle on the same held-out decisions."""

    candidate_version: str | None
    serving_version: str | None
    candidate: Estimate
    serving: Estimate
    on_policy_reward: float
    """The mean logged reward per decision (what the logging policies actually earned)."""
    reconstructed_propensities: int
    dropped_slots: int
    margin: float

    @property
    def relative_change(self) -> float:
        """(candidate DR - serving DR) / serving DR; 0 when the serving value is 0."""
        return (self.candidate.dr - self.serving.dr) / self.serving.dr if self.serving.dr else 0.0

    @property
    def passed(self) -> bool:
        """The gate: the candidate's DR value is not more than `margin` below the serving bundle's."""
        return gate_passes({"candidate": asdict(self.candidate), "serving": asdict(self.serving)}, self.margin)

    def to_dict(self) -> dict[str, Any]:
        """The report as stored in the manifest (estimates rounded to 6 decimals)."""
        return {
            "candidate_version": self.candidate_version,
            "serving_version": self.serving_version,
            "candidate": _rounded(asdict(self.candidate)),
            "serving": _rounded(asdict(self.serving)),
            "on_policy_reward": round(self.on_policy_reward, 6),
            "reconstructed_propensities": self.reconstructed_propensities,
            "dropped_slots": self.dropped_slots,
            "margin": self.margin,
            "estimator": "dr",
            "relative_change": round(self.relative_change, 6),
            "passed": self.passed,
        }


def gate_passes(report: Mapping[str, Any], margin: float) -> bool:
    """Whether a stored report lets the candidate be promoted at `margin` (its DR not below serving * (1 - margin))."""
    if not 0 <= margin < 1:
        raise InvalidRequest(f"the OPE margin must be in [0, 1), got {margin}.")
    return float(report["candidate"]["dr"]) - float(report["serving"]["dr"]) * (1.0 - margin) >= -1e-12


def logged_slates(interactions: pa.Table) -> pa.Table:
    """The estimators' input from `aura.batch.events.load_interactions`: the items edge decisions showed.

    Keeps the impression rows of source `edge` (deduplicated, erasure-filtered and joined to their click
    rewards by the ingestion); the slate size is the number of items the decision showed.
    """
    with duckdb.connect() as con:
        con.register("interactions", interactions)
        return (
            con.sql(
                """
                SELECT request_id AS decision_id, ts, bundle_version, surface_id,
                       coalesce(segment_id, $global) AS segment_id, content_id,
                       count(*) OVER (PARTITION BY request_id)::INTEGER AS slate_size, propensity,
                       coalesce(reward, 0.0) AS reward
                FROM interactions
                WHERE type = 'impression' AND source = 'edge' AND request_id IS NOT NULL
                ORDER BY ts, request_id, position
                """,
                params={"global": GLOBAL_SEGMENT},
            )
            .to_arrow_table()
            .cast(LOGGED_SCHEMA)
        )


def latest_decisions(logged: pa.Table, fraction: float) -> pa.Table:
    """The most recent `fraction` of the logged decisions (whole decisions, by time): a held-out set."""
    if not 0 < fraction <= 1:
        raise InvalidRequest(f"the held-out fraction must be in (0, 1], got {fraction}.")
    ids = logged["decision_id"].to_pylist()
    order = list(dict.fromkeys(ids))
    keep = set(order[len(order) - max(1, round(len(order) * fraction)) :]) if order else set()
    return logged.filter(pa.array([i in keep for i in ids]))


def fill_propensities(
    logged: pa.Table,
    logging_policies: Mapping[str, SlatePolicy],
    fallback: SlatePolicy | None,
    seed: int = 0,
    draws: int = PROPENSITY_DRAWS,
    variance_scale: float = 1.0,
) -> tuple[np.ndarray, int]:
    """The logged propensities, with missing ones reconstructed; returns them and how many were reconstructed.

    A missing propensity is the Monte-Carlo share of Thompson draws from the logging bundle's posteriors
    (`logging_policies[bundle_version]`, else `fallback`) that put the item in a slate of the logged
    size in the decision's cell (drawn with the edge's `posterior_variance_scale`). It stays NaN when neither
    bundle has the cell or the item.
    """
    propensity = logged["propensity"].to_numpy(zero_copy_only=False).astype(np.float64)
    missing = np.flatnonzero(np.isnan(propensity))
    if missing.size == 0:
        return propensity, 0
    rng = np.random.default_rng(seed)
    versions = logged["bundle_version"].to_pylist()
    surfaces = logged["surface_id"].to_pylist()
    segments = logged["segment_id"].to_pylist()
    contents = logged["content_id"].to_pylist()
    sizes = logged["slate_size"].to_pylist()
    cache: dict[tuple[int, str, str, int], np.ndarray] = {}
    reconstructed = 0
    for i in missing:
        policy = logging_policies.get(versions[i] or "", fallback)
        cell = policy.cell(surfaces[i], segments[i]) if policy is not None else None
        if cell is None or contents[i] not in cell.index:
            continue
        key = (id(cell), surfaces[i], segments[i], sizes[i])
        if key not in cache:
            cache[key] = thompson_propensity(
                cell.alpha[None, :], cell.beta[None, :], sizes[i], rng, draws, variance_scale
            )[0]
        propensity[i] = cache[key][cell.index[contents[i]]]
        reconstructed += 1
    return propensity, reconstructed


def estimate(logged: pa.Table, propensity: np.ndarray, target: SlatePolicy, reward_model: SlatePolicy) -> Estimate:
    """IPS, SNIPS and DR estimates of `target`'s reward per decision; slots without a positive propensity
    are left out (their decisions still count)."""
    surfaces = logged["surface_id"].to_pylist()
    segments = logged["segment_id"].to_pylist()
    contents = logged["content_id"].to_pylist()
    decision_ids = logged["decision_id"].to_pylist()
    reward = logged["reward"].to_numpy().astype(np.float64)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(surfaces, segments, strict=True)):
        groups[key].append(i)
    pi = np.zeros(len(contents))
    q = np.zeros(len(contents))
    dm_total = k_total = 0.0
    for (surface, segment), rows in groups.items():
        cell, model = target.cell(surface, segment), reward_model.cell(surface, segment)
        n_decisions = len({decision_ids[i] for i in rows})
        if model is not None:
            q[rows] = [model.mean[model.index[contents[i]]] if contents[i] in model.index else 0.0 for i in rows]
        if cell is None:
            continue
        pi[rows] = [cell.inclusion[cell.index[contents[i]]] if contents[i] in cell.index else 0.0 for i in rows]
        inclusion = np.nan_to_num(cell.inclusion)
        if model is not None:
            means = np.array([model.mean[model.index[c]] if c in model.index else 0.0 for c in cell.index])
            dm_total += n_decisions * float(inclusion @ means)
        k_total += n_decisions * float(inclusion.sum())
    n = len(set(decision_ids))
    usable = np.isfinite(propensity) & (propensity > 0)
    w = np.where(usable, np.nan_to_num(pi) / np.where(usable, propensity, 1.0), 0.0)
    weighted = float(w @ reward)
    total_w = float(w.sum())
    return Estimate(
        ips=weighted / n if n else 0.0,
        snips=weighted / total_w * k_total / n if n and total_w > 0 else 0.0,
        dr=(dm_total + float(w @ (reward - q))) / n if n else 0.0,
        decisions=n,
        slots=int(usable.sum()),
        effective_sample_size=total_w**2 / float(w @ w) if total_w > 0 else 0.0,
    )


def compare(
    logged: pa.Table,
    candidate: SlatePolicy,
    serving: SlatePolicy,
    *,
    margin: float = DEFAULT_MARGIN,
    logging_policies: Mapping[str, SlatePolicy] | None = None,
    seed: int = 0,
    variance_scale: float = 1.0,
) -> OpeReport:
    """Estimate candidate and serving values on the same logged decisions with the serving posteriors as the
    reward model; missing propensities come from `logging_policies` by bundle version, else the serving one."""
    if not 0 <= margin < 1:
        raise InvalidRequest(f"the OPE margin must be in [0, 1), got {margin}.")
    propensity, reconstructed = fill_propensities(
        logged, logging_policies or {}, serving, seed, variance_scale=variance_scale
    )
    n = len(set(logged["decision_id"].to_pylist()))
    return OpeReport(
        candidate_version=candidate.version,
        serving_version=serving.version,
        candidate=estimate(logged, propensity, candidate, serving),
        serving=estimate(logged, propensity, serving, serving),
        on_policy_reward=float(logged["reward"].to_numpy().sum()) / n if n else 0.0,
        reconstructed_propensities=reconstructed,
        dropped_slots=int((~(np.isfinite(propensity) & (propensity > 0))).sum()),
        margin=margin,
    )


def _rounded(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
