"""The decision core: a pure function of (query, serving index, posteriors, traffic, seeded generator).

No I/O and no clock: everything that varies per call comes in as an argument, so a decision can be
replayed from its logged seed, bundle version and posterior state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aura.bundle.format import GLOBAL_SEGMENT
from aura.bundle.loader import SegmentInfo, match_cold_start
from aura.config import Policies
from aura.context import jurisdictions_of
from aura.errors import ConsentRequired
from aura.server.serving import DEVICE_BITS, CellView, ServingIndex

PERSONALIZATION = "personalization"
HOLDOUT_VARIANT = "holdout"


@dataclass(frozen=True)
class RankQuery:
    """A validated Rank request in domain terms."""

    surface_id: str
    limit: int
    anon_id: str = ""
    device: str = ""
    referrer_class: str = "direct"
    page_type: str = ""
    country: str = ""
    time_of_day: str = ""
    campaign: str = ""
    consent: frozenset[str] = frozenset()
    candidates: tuple[str, ...] = ()
    explain: bool = False


@dataclass(frozen=True)
class Traffic:
    """Runtime inputs that are not part of the request."""

    user_explore_share: float = 0.0
    """The visitor's share of exploratory decisions so far."""
    requests_per_second: float = 0.0
    """The process's current request rate."""


@dataclass(frozen=True)
class SegmentResolution:
    """How the visitor was segmented."""

    segment: SegmentInfo
    confidence: float
    source: str
    """assignment, cold_start, popularity or no_consent."""
    holdout: bool


@dataclass(slots=True)
class ChosenItem:
    """One item of a decision with what produced it."""

    content_row: int
    posterior_row: int
    position: int
    score: float
    propensity: float
    explored: bool
    reason: str
    alpha: float
    beta: float
    sample: float
    freshness: float


@dataclass(frozen=True)
class Decision:
    """The outcome of `decide`."""

    surface_id: str
    resolution: SegmentResolution
    cell_segment_id: str
    items: tuple[ChosenItem, ...]
    exploration_rate: float
    eligible_count: int
    removed: tuple[tuple[int, str], ...]
    """(content row, rule) for each candidate a rule removed; filled only when the query asks to explain."""


def resolve_segment(
    index: ServingIndex, query: RankQuery, policies: Policies, consent_required: bool
) -> SegmentResolution:
    """Resolve the visitor's segment: precomputed assignment, else cold-start rules, else the global segment."""
    segments = index.bundle.segments
    global_segment = segments[GLOBAL_SEGMENT]
    if PERSONALIZATION not in query.consent:
        if consent_required and policies.decisioning.eligibility.check_consent:
            raise ConsentRequired(
                "personalization consent is required: user_ctx.consent must include 'personalization'."
            )
        return SegmentResolution(global_segment, 1.0, "no_consent", holdout=False)

    confidence_policy = policies.segmentation.confidence
    segment_id, confidence, source = GLOBAL_SEGMENT, 1.0, "popularity"
    assignment = index.bundle.assignments.get(query.anon_id) if query.anon_id else None
    if assignment is not None and assignment.confidence >= confidence_policy.assignment_threshold:
        segment_id, confidence, source = assignment.segment_id, assignment.confidence, "assignment"
    elif policies.segmentation.cold_start.use_rules:
        match = _cold_start(index, query)
        if match is not None:
            segment_id, confidence = match
            source = "cold_start"
    if confidence < confidence_policy.holdout_below:
        return SegmentResolution(global_segment, 1.0, source, holdout=True)
    return SegmentResolution(segments[segment_id], confidence, source, holdout=False)


def _cold_start(index: ServingIndex, query: RankQuery) -> tuple[str, float] | None:
    # The order of aura.bundle.format.COLD_START_KEYS.
    values = (query.device, query.referrer_class, query.page_type, query.country, query.time_of_day, query.campaign)
    return match_cold_start(index.bundle, values)


def decide(
    index: ServingIndex,
    alpha: np.ndarray,
    beta: np.ndarray,
    query: RankQuery,
    policies: Policies,
    traffic: Traffic,
    rng: np.random.Generator,
    *,
    consent_required: bool = True,
) -> Decision:
    """Rank content for one query: eligibility, Thompson sampling, freshness, diversity, exploration.

    `alpha` and `beta` are the posterior arrays of `index.bundle` (online state included); `rng` is
    seeded by the caller, who logs the seed.
    """
    resolution = resolve_segment(index, query, policies, consent_required)
    cell = index.cell(query.surface_id, resolution.segment.id)
    surface = index.surfaces[query.surface_id]
    eligible, removed = _eligibility(index, cell, query, policies)
    positions = np.flatnonzero(eligible)
    exploration_rate = _exploration_rate(policies, traffic)
    if positions.size == 0:
        return Decision(query.surface_id, resolution, cell.segment_id, (), exploration_rate, 0, removed)

    a = alpha[cell.start : cell.stop][positions]
    b = beta[cell.start : cell.stop][positions]
    samples = rng.beta(a, b)
    freshness = cell.freshness[positions]
    scores = samples * freshness
    order = np.argsort(-scores, kind="stable")

    limit = min(query.limit, positions.size)
    if surface.diversity:
        chosen, demoted = _diversify(index, cell, positions, order, limit, policies)
        if query.explain:
            removed += tuple((int(cell.items[positions[i]]), "diversity") for i in demoted)
    else:
        chosen = [int(i) for i in order[:limit]]

    explored_slot = -1
    if chosen and positions.size > len(chosen) and exploration_rate > 0 and rng.random() < exploration_rate:
        in_slate = set(chosen)
        explored_slot = int(rng.integers(len(chosen)))
        pick = int(rng.integers(positions.size))
        while pick in in_slate:  # rejection sampling: the slate is a small part of the eligible set
            pick = int(rng.integers(positions.size))
        chosen[explored_slot] = pick
    pool_size = max(1, positions.size - len(chosen) + 1)

    slate = np.asarray(chosen, dtype=np.intp)
    cell_positions = positions[slate]
    propensities = _slate_propensities(
        cell.propensity[cell_positions], exploration_rate, len(chosen), pool_size, positions.size
    )
    reason_tail = _reason_tail(query, resolution)
    items = tuple(
        ChosenItem(
            content_row=content_row,
            posterior_row=cell.start + cell_pos,
            position=slot + 1,
            score=score,
            propensity=propensity,
            explored=slot == explored_slot,
            reason=index.reason_heads[content_row]
            + (reason_tail if slot != explored_slot else _reason_tail(query, resolution, explored=True)),
            alpha=alpha_value,
            beta=beta_value,
            sample=sample,
            freshness=fresh,
        )
        for slot, (content_row, cell_pos, score, propensity, alpha_value, beta_value, sample, fresh) in enumerate(
            zip(
                cell.items[cell_positions].tolist(),
                cell_positions.tolist(),
                scores[slate].tolist(),
                propensities.tolist(),
                a[slate].tolist(),
                b[slate].tolist(),
                samples[slate].tolist(),
                freshness[slate].tolist(),
                strict=True,
            )
        )
    )
    return Decision(
        query.surface_id, resolution, cell.segment_id, items, exploration_rate, int(positions.size), removed
    )


ELIGIBILITY_CACHE_SIZE = 4096


def _eligibility(
    index: ServingIndex, cell: CellView, query: RankQuery, policies: Policies
) -> tuple[np.ndarray, tuple[tuple[int, str], ...]]:
    """Return the eligible mask over the cell and, when explaining, which rule removed which candidate.

    The rules depend on few request values (consent scopes that unlock flags, jurisdiction, device),
    so their combined mask is memoized per cell and combination.
    """
    rules = policies.decisioning.eligibility
    unlocked = 0
    for scope in query.consent:
        unlocked |= index.consent_unlocks.get(scope, 0)
    jurisdiction_bits = index.jurisdiction_mask(jurisdictions_of(query.country)) if rules.check_jurisdiction else -1
    device = query.device if rules.check_device else ""
    key = (cell.surface_id, cell.segment_id, unlocked, jurisdiction_bits, device)
    cache = index.eligibility_cache
    rule_mask = None if query.explain else cache.get(key)
    failures: list[tuple[str, np.ndarray]] = []
    if rule_mask is None:
        if rules.check_policy_flags or rules.check_consent:
            blocked = cell.blocked_flags & np.uint32(~unlocked & 0xFFFFFFFF)
            if rules.check_consent:
                failures.append(("consent", (blocked & np.uint32(index.consent_flag_bits)) != 0))
            if rules.check_policy_flags:
                failures.append(("policy_flag", (blocked & np.uint32(~index.consent_flag_bits & 0xFFFFFFFF)) != 0))
        if rules.check_jurisdiction:
            wanted = np.uint64(jurisdiction_bits)
            failures.append(("jurisdiction", (cell.jurisdictions != 0) & ((cell.jurisdictions & wanted) == 0)))
        if device:
            device_bit = np.uint8(DEVICE_BITS[device])
            failures.append(("device", (cell.devices != 0) & ((cell.devices & device_bit) == 0)))
        rule_mask = cell.type_ok.copy()
        for _, failed in failures:
            rule_mask &= ~failed
        rule_mask.flags.writeable = False
        if len(cache) >= ELIGIBILITY_CACHE_SIZE:
            cache.clear()
        cache[key] = rule_mask

    considered = cell.type_ok
    if query.candidates:
        wanted_rows = np.array(
            sorted(r for c in query.candidates if (r := index.bundle.content.index_of.get(c)) is not None),
            dtype=np.int32,
        )
        considered = considered & np.isin(cell.items, wanted_rows, assume_unique=True)
    eligible = rule_mask & considered if query.candidates else rule_mask
    if not query.explain:
        return eligible, ()
    removed = []
    for cell_pos in np.flatnonzero(considered & ~eligible):
        rule = next(name for name, failed in failures if failed[cell_pos])
        removed.append((int(cell.items[cell_pos]), rule))
    return eligible, tuple(removed)


DIVERSITY_SCAN_PER_SLOT = 8
"""How many candidates per top-N slot the diversity pass examines before it stops looking."""


def _diversify(
    index: ServingIndex, cell: CellView, positions: np.ndarray, order: np.ndarray, limit: int, policies: Policies
) -> tuple[list[int], list[int]]:
    """Greedy diversity over the score order: within the top N, at most `max_per_topic_cluster` per
    cluster and a minimum cosine distance between items; what is skipped moves below the top N.

    The scan is bounded (DIVERSITY_SCAN_PER_SLOT candidates per slot), so a cell that cannot be
    diversified costs no more than one that can.
    """
    diversity = policies.decisioning.diversity
    top_n = min(diversity.enforce_in_top_n, limit)
    embeddings = index.bundle.content.embeddings
    max_similarity = 1.0 - diversity.min_topic_distance
    check_distance = diversity.min_topic_distance > 0.0
    chosen: list[int] = []
    chosen_vectors = np.empty((max(top_n, 1), embeddings.shape[1]), dtype=embeddings.dtype)
    per_cluster: dict[int, int] = {}
    deferred: list[int] = []
    window = order[: min(order.size, limit + DIVERSITY_SCAN_PER_SLOT * top_n)]
    window_positions = positions[window]
    clusters = cell.clusters[window_positions].tolist()
    candidates = zip(window.tolist(), clusters, cell.items[window_positions].tolist(), strict=True)
    cursor = 0
    for i, cluster, content_row in candidates:
        if len(chosen) == top_n:
            break
        cursor += 1
        if per_cluster.get(cluster, 0) >= diversity.max_per_topic_cluster:
            deferred.append(i)
            continue
        vector = embeddings[content_row]
        if check_distance and chosen and float((chosen_vectors[: len(chosen)] @ vector).max()) > max_similarity:
            deferred.append(i)
            continue
        chosen_vectors[len(chosen)] = vector
        chosen.append(i)
        per_cluster[cluster] = per_cluster.get(cluster, 0) + 1
    rest = deferred + order[cursor : cursor + limit].tolist()
    chosen.extend(rest[: limit - len(chosen)])
    shown = set(chosen)
    return chosen, [i for i in deferred if i not in shown]


def _exploration_rate(policies: Policies, traffic: Traffic) -> float:
    exploration = policies.decisioning.exploration
    if traffic.user_explore_share >= exploration.per_user_cap:
        return 0.0
    rate = exploration.global_budget
    if exploration.throttle_high_traffic and traffic.requests_per_second > exploration.throttle_rps:
        rate *= exploration.throttle_rps / traffic.requests_per_second
    return rate


def _slate_propensities(batch_estimates: np.ndarray, rate: float, slate: int, pool: int, eligible: int) -> np.ndarray:
    """Marginal probability that each item is in the slate under Thompson sampling plus the exploration budget.

    Thompson sampling's inclusion probability comes from the batch's Monte-Carlo estimate (uniform
    slate/eligible where the bundle has none); the exploration part is exact: with probability `rate`
    one slot is given to a uniform pick among the `pool` items that sampling left out.
    """
    sampled = np.clip(np.where(np.isfinite(batch_estimates), batch_estimates, slate / eligible), 0.0, 1.0)
    kept = sampled * (1.0 - rate / slate)
    added = rate * (1.0 - sampled) / pool
    return np.minimum(1.0, kept + added)


def _reason_tail(query: RankQuery, resolution: SegmentResolution, explored: bool = False) -> str:
    """The request-dependent part of an item's reason, e.g. "+mobile+intent:learn+high-confidence"."""
    parts = [""]
    device = query.device or resolution.segment.features.get("device_class", "")
    if device:
        parts.append(device)
    if resolution.segment.intent:
        parts.append(f"intent:{resolution.segment.intent}")
    if explored:
        parts.append("exploration")
    elif resolution.holdout:
        parts.append("holdout:popular")
    elif resolution.confidence >= 0.8 and resolution.source != "no_consent":
        parts.append("high-confidence")
    return "+".join(parts)
