"""The decision core: a pure function of (query, serving index, posteriors, traffic, seed).

No I/O and no clock: everything that varies per call comes in as an argument, so a decision can be
replayed from its logged seed, bundle version and posterior state. The numeric work (Thompson draws,
order, diversity, exploration, propensities) is the compiled `aura.server._native.draw_slate`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from aura.bundle.format import GLOBAL_SEGMENT
from aura.bundle.loader import Assignment, SegmentInfo, match_cold_start
from aura.config import ExplorationPolicy, Policies
from aura.errors import ConsentRequired
from aura.server._native import ExplorationLedger, draw_slate
from aura.server._native import exploration_budget as compiled_exploration_budget
from aura.server._native import resolve_segment as resolve_compiled
from aura.server.serving import DEVICE_BITS, CellView, EligiblePool, ServingIndex

HIGH_CONFIDENCE = 0.8
"""A segment confidence from which reasons say "high-confidence" (also in server/_resolve.c's plan key)."""
HOLDOUT_VARIANT = "holdout"
NO_CONTEXT: Mapping[str, str] = MappingProxyType({})


class RankQuery(NamedTuple):
    """A validated Rank request in domain terms (built by the compiled `aura.server.validation.rank_query`,
    which fills these fields in this order)."""

    surface_id: str
    limit: int
    anon_id: str = ""
    device: str = ""
    referrer_class: str = "direct"
    page_type: str = ""
    country: str = ""
    time_of_day: str = ""
    campaign: str = ""
    context: Mapping[str, str] = NO_CONTEXT
    """The request's free-form context map, read for the bundle's custom cold-start keys."""
    consent: frozenset[str] = frozenset()
    candidates: tuple[str, ...] = ()
    explain: bool = False
    session_id: str = ""
    referrer_host: str = ""
    """The referrer's host (the decision log keeps no more of the referrer)."""
    region: str = ""


class Traffic(NamedTuple):
    """Runtime inputs that are not part of the request."""

    user_explore_share: float = 0.0
    """The visitor's share of exploratory decisions so far."""
    requests_per_second: float = 0.0
    """The process's current request rate."""


class SegmentResolution(NamedTuple):
    """How the visitor was segmented."""

    segment: SegmentInfo
    confidence: float
    source: str
    """assignment, cold_start, popularity or no_consent."""
    holdout: bool


@dataclass(frozen=True, slots=True)
class ChosenItem:
    """One item of a decision with what produced it (a view built on demand, for explanations and tests)."""

    content_row: int
    posterior_row: int
    position: int
    score: float
    propensity: float
    explored: bool
    reason: str
    alpha: float | None
    """The draw's details (alpha, beta, sample, freshness) are None unless the query asked to explain."""
    beta: float | None
    sample: float | None
    freshness: float | None


class Decision(NamedTuple):
    """The outcome of `decide`: the slate, best first, as parallel lists (one value per slot)."""

    surface_id: str
    resolution: SegmentResolution
    cell_segment_id: str
    content_rows: list[int]
    posterior_rows: list[int]
    scores: list[float]
    propensities: list[float]
    reason_heads: Sequence[str]
    """Per content row, the first part of its reason (the serving index's `reason_heads`)."""
    reason_tail: str
    """The rest of every slot's reason but the explored one's, e.g. "+mobile+intent:learn+high-confidence"."""
    explored_reason_tail: str
    """The rest of the explored slot's reason ("" when no slot was explored)."""
    explored_slot: int
    """The slot the exploration budget filled, or -1."""
    samples: list[float] | None
    """The Beta draws behind the scores (score = sample x freshness); this and the next three are None unless
    the query asks to explain."""
    alphas: list[float] | None
    """The posterior parameters the draws used."""
    betas: list[float] | None
    freshness: list[float] | None
    exploration_rate: float
    eligible_count: int
    removed: tuple[tuple[int, str], ...]
    """(content row, rule) for each candidate a rule removed; filled only when the query asks to explain."""

    @property
    def reasons(self) -> list[str]:
        """Each slot's human-readable reason (the response builds them in compiled code from the parts)."""
        return [
            self.reason_heads[row] + (self.explored_reason_tail if slot == self.explored_slot else self.reason_tail)
            for slot, row in enumerate(self.content_rows)
        ]

    @property
    def items(self) -> tuple[ChosenItem, ...]:
        """The slate as one object per item (for explanations and tests, not the hot path)."""
        details = (
            zip(self.alphas, self.betas, self.samples, self.freshness, strict=True)
            if self.samples is not None
            else itertools.repeat((None, None, None, None))
        )
        return tuple(
            ChosenItem(row, posterior_row, slot + 1, score, propensity, slot == self.explored_slot, reason, *detail)
            for slot, (row, posterior_row, score, propensity, reason, detail) in enumerate(
                # Not strict: without details, `details` repeats for ever; the other lists have one length.
                zip(
                    self.content_rows,
                    self.posterior_rows,
                    self.scores,
                    self.propensities,
                    self.reasons,
                    details,
                    strict=False,
                )
            )
        )


class SegmentResolver(NamedTuple):
    """What segment resolution reads, for one serving index and policy; the compiled
    `aura.server._native.resolve_segment` and `planned_slate` read the fields by position, in this order."""

    assignments: Mapping[str, Assignment]
    cold_starts: dict
    """The index's memo of cold-start matches by context values (bounded)."""
    match_cold_start: Callable[[tuple[str, ...]], tuple[str, float] | None]
    context_keys: tuple[str, ...]
    """The request context keys the bundle's cold-start rules use, after aura.bundle.format.COLD_START_KEYS."""
    use_rules: bool
    assignment_threshold: float
    holdout_below: float
    consent_gate: bool
    """Refuse a request without personalization consent (ConsentRequired) rather than serve it unpersonalized."""
    consent_required: type[ConsentRequired]
    global_segment: str


def segment_resolver(index: ServingIndex, policies: Policies, consent_required: bool) -> SegmentResolver:
    """The SegmentResolver of a serving index under `policies`."""
    bundle = index.bundle
    segmentation = policies.segmentation
    return SegmentResolver(
        bundle.assignments,
        index.cold_starts,
        functools.partial(match_cold_start, bundle),
        bundle.cold_start_context_keys,
        segmentation.cold_start.use_rules,
        segmentation.confidence.assignment_threshold,
        segmentation.confidence.holdout_below,
        consent_required and policies.decisioning.eligibility.check_consent,
        ConsentRequired,
        GLOBAL_SEGMENT,
    )


def resolve_segment(
    index: ServingIndex, query: RankQuery, policies: Policies, consent_required: bool
) -> SegmentResolution:
    """Resolve the visitor's segment: precomputed assignment, else cold-start rules, else the global segment
    (the rules in full: the compiled `aura.server._native.resolve_segment`)."""
    return segment_resolution(index, segment_resolver(index, policies, consent_required), query)


def segment_resolution(index: ServingIndex, resolver: SegmentResolver, query: RankQuery) -> SegmentResolution:
    """`resolve_segment` with the index's resolver already made."""
    segment_id, confidence, source, holdout = resolve_compiled(resolver, query)
    return SegmentResolution(index.bundle.segments[segment_id], confidence, source, holdout)


def _remember(cache: dict, key: object, value: object, capacity: int):
    """Store `value` under `key` in a memo of at most `capacity` entries (emptied when full); return it."""
    if len(cache) >= capacity:
        cache.clear()
    cache[key] = value
    return value


class SlatePlan(NamedTuple):
    """What a slate needs that is the same for every request of one kind: the eligible pool of a cell, the
    identifiers the request id and the log record carry, the segment the response names and the reasons' tails.

    The compiled `aura.server._native.serve_slate` reads the fields by position, in this order. The pool's arrays
    are memoryviews of the EligiblePool's: Rank takes their buffers on every request, and a memoryview hands its
    buffer over without numpy's bookkeeping.
    """

    param_rows: memoryview
    freshness: memoryview
    propensity: memoryview
    clusters: memoryview
    content_rows: memoryview
    top_n: int
    """The diversity policy's top N on this surface (0 without diversity), before the query's limit caps it."""
    surface_id: str
    cell_segment_id: str
    """The segment of the cell drawn from (the global one when the visitor's segment has no cell here)."""
    surface_index: int
    segment_index: int
    """The cell's surface and segment as indexes into the serving index's sorted ids (for request ids)."""
    segment_id: str
    """The visitor's segment, as the response names it."""
    intent: str
    holdout: bool
    segment_source: str
    personalized: bool
    """False when the visitor gave no personalization consent: the log then keeps no anon or session id."""
    reason_tail: str
    explored_reason_tail: str
    removed: tuple[tuple[int, str], ...]
    """(content row, rule) for each candidate a rule removed; filled only when the query asks to explain."""

    @property
    def eligible_count(self) -> int:
        """How many items the pool holds."""
        return len(self.freshness)


PLAN_CACHE_SIZE = 4096
"""Plans kept per bundle. Several kinds of request share a pool; the plans are emptied with the pools memo."""


def slate_plan(index: ServingIndex, query: RankQuery, resolution: SegmentResolution, policies: Policies) -> SlatePlan:
    """The plan of a slate for `query` with its segment resolved; memoized per kind of request unless the query
    asks to explain or names candidates."""
    segment = resolution.segment
    memoized = not (query.explain or query.candidates)
    if memoized:
        # The key of aura.server._native.planned_slate, which looks plans up in compiled code.
        key = (
            query.surface_id, segment.id, resolution.source, resolution.holdout,
            resolution.confidence >= HIGH_CONFIDENCE, query.device, query.country, query.consent,
        )  # fmt: skip
        plan = index.plans.get(key)
        if plan is not None:
            return plan
    cell = index.cell(query.surface_id, segment.id)
    pool, removed = _eligible_pool(index, cell, query, policies)
    surface = index.surfaces[query.surface_id]
    plan = SlatePlan(
        memoryview(pool.param_rows), memoryview(pool.freshness), memoryview(pool.propensity),
        memoryview(pool.clusters), memoryview(pool.content_rows),
        policies.decisioning.diversity.enforce_in_top_n if surface.diversity else 0,
        query.surface_id, cell.segment_id, index.surface_index[query.surface_id], index.segment_index[cell.segment_id],
        segment.id, segment.intent, resolution.holdout, resolution.source, resolution.source != "no_consent",
        _reason_tail(index, query, resolution), _reason_tail(index, query, resolution, explored=True), removed,
    )  # fmt: skip
    return _remember(index.plans, key, plan, PLAN_CACHE_SIZE) if memoized else plan


def slate_decision(
    plan: SlatePlan,
    resolution: SegmentResolution,
    reason_heads: Sequence[str],
    drawn: tuple,
    exploration_rate: float,
) -> Decision:
    """The Decision of a slate that `draw_slate` drew from `plan`'s pool (`drawn`, its result)."""
    (
        content_rows, posterior_rows, scores, samples, alphas, betas, freshness, propensities, explored_slot, demoted
    ) = drawn  # fmt: skip
    removed = plan.removed + tuple((row, "diversity") for row in demoted) if demoted else plan.removed
    return Decision(
        plan.surface_id, resolution, plan.cell_segment_id, content_rows, posterior_rows, scores, propensities,
        reason_heads, plan.reason_tail, plan.explored_reason_tail if explored_slot >= 0 else "", explored_slot,
        samples, alphas, betas, freshness, exploration_rate, plan.eligible_count, removed,
    )  # fmt: skip


def decide(
    index: ServingIndex,
    params: np.ndarray,
    query: RankQuery,
    policies: Policies,
    traffic: Traffic,
    seed: int,
    *,
    consent_required: bool = True,
) -> Decision:
    """Rank content for one query: eligibility, Thompson sampling, freshness, diversity, exploration.

    `params` holds the posterior alphas of `index.bundle`'s rows followed by their betas (online state
    included); `seed` (a 64-bit unsigned integer the caller logs) determines every random draw, so the
    same seed and posterior state give the same decision. Rank serves the same decision, with its
    bookkeeping, through the compiled `serve_slate`.
    """
    resolution = resolve_segment(index, query, policies, consent_required)
    plan = slate_plan(index, query, resolution, policies)
    rate = exploration_budget(policies, traffic)
    limit = min(query.limit, plan.eligible_count)
    exploration = policies.decisioning.exploration
    drawn = draw_slate(
        params, plan.param_rows, plan.freshness, plan.propensity, plan.clusters, plan.content_rows,
        index.similar_offsets, index.similar_rows, exploration.posterior_variance_scale, seed, limit,
        min(plan.top_n, limit), policies.decisioning.diversity.max_per_topic_cluster, DIVERSITY_SCAN_PER_SLOT, rate,
        query.explain,
    )  # fmt: skip
    return slate_decision(plan, resolution, index.reason_heads, drawn, rate)


POOL_CACHE_SIZE = 1024
"""Pools kept per bundle (48 bytes of arrays per eligible item: 5 KiB for the bench's 97 items, 19 KiB for 388)."""


def _eligible_pool(
    index: ServingIndex, cell: CellView, query: RankQuery, policies: Policies
) -> tuple[EligiblePool, tuple[tuple[int, str], ...]]:
    """The cell's eligible items and, when explaining, which rule removed which candidate.

    The rules depend on few request values (consent scopes that unlock flags, jurisdiction, device),
    so the pool is memoized per cell and combination; `candidates` narrow it per request.
    """
    rules = policies.decisioning.eligibility
    unlocked = 0
    for scope in query.consent:
        unlocked |= index.consent_unlocks.get(scope, 0)
    jurisdiction_bits = index.jurisdiction_mask(query.country) if rules.check_jurisdiction else -1
    device = query.device if rules.check_device else ""
    key = (cell.surface_id, cell.segment_id, unlocked, jurisdiction_bits, device)
    cache = index.pools
    pool = None if query.explain or query.candidates else cache.get(key)
    if pool is not None:
        return pool, ()

    failures = _rule_failures(index, cell, unlocked, jurisdiction_bits, device, policies)
    rule_mask = cell.type_ok.copy()
    for _, failed in failures:
        rule_mask &= ~failed
    considered = cell.type_ok
    if query.candidates:
        wanted_rows = np.array(
            sorted(r for c in query.candidates if (r := index.bundle.content.index_of.get(c)) is not None),
            dtype=np.int32,
        )
        considered = considered & np.isin(cell.items, wanted_rows, assume_unique=True)
    pool = EligiblePool.of(cell, rule_mask & considered, index.n_posteriors)
    if not (query.explain or query.candidates):
        if len(cache) >= POOL_CACHE_SIZE:
            index.plans.clear()  # plans hold pools: emptied together, so at most POOL_CACHE_SIZE pools stay alive
        _remember(cache, key, pool, POOL_CACHE_SIZE)
    if not query.explain:
        return pool, ()
    removed = []
    for cell_pos in np.flatnonzero(considered & ~rule_mask):
        rule = next(name for name, failed in failures if failed[cell_pos])
        removed.append((int(cell.items[cell_pos]), rule))
    return pool, tuple(removed)


def _rule_failures(
    index: ServingIndex, cell: CellView, unlocked: int, jurisdiction_bits: int, device: str, policies: Policies
) -> list[tuple[str, np.ndarray]]:
    """Per eligibility rule in force, the cell positions it removes."""
    rules = policies.decisioning.eligibility
    failures: list[tuple[str, np.ndarray]] = []
    # A flag in flag_consents needs its consent scope, and every flag must be one the surface allows.
    if rules.check_consent:
        failures.append(("consent", (cell.consent_flags & np.uint32(~unlocked & 0xFFFFFFFF)) != 0))
    if rules.check_policy_flags:
        failures.append(("policy_flag", cell.disallowed_flags != 0))
    if rules.check_jurisdiction:
        wanted = np.uint64(jurisdiction_bits)
        failures.append(("jurisdiction", (cell.jurisdictions != 0) & ((cell.jurisdictions & wanted) == 0)))
    if device:
        device_bit = np.uint8(DEVICE_BITS[device])
        failures.append(("device", (cell.devices != 0) & ((cell.devices & device_bit) == 0)))
    return failures


DIVERSITY_SCAN_PER_SLOT = 8
"""How many candidates per top-N diversity slot the draw examines beyond the limit before it stops looking:
a cell that cannot be diversified costs no more than one that can."""


def exploration_budget(policies: Policies, traffic: Traffic) -> float:
    """The exploration budget of one decision: the global budget, throttled under high traffic; 0 past the
    visitor's cap (the compiled rule, which Rank's `ExplorationLedger` applies)."""
    exploration = policies.decisioning.exploration
    return compiled_exploration_budget(
        exploration.global_budget,
        exploration.per_user_cap,
        throttle_rps(exploration),
        traffic.user_explore_share,
        traffic.requests_per_second,
    )


def exploration_ledger(policies: Policies) -> ExplorationLedger:
    """A process's ledger of visitor shares and request rate, applying the policy's exploration budget."""
    exploration = policies.decisioning.exploration
    return ExplorationLedger(exploration.global_budget, exploration.per_user_cap, throttle_rps(exploration))


def throttle_rps(exploration: ExplorationPolicy) -> float:
    """The request rate above which the exploration budget shrinks (infinite when the policy does not throttle)."""
    return exploration.throttle_rps if exploration.throttle_high_traffic else math.inf


REASON_TAIL_CACHE_SIZE = 4096


def _reason_tail(index: ServingIndex, query: RankQuery, resolution: SegmentResolution, explored: bool = False) -> str:
    """The request-dependent part of an item's reason, e.g. "+mobile+intent:learn+high-confidence"."""
    segment = resolution.segment
    if explored:
        kind = "exploration"
    elif resolution.holdout:
        kind = "holdout:popular"
    elif resolution.source == "popularity":
        kind = "popular"
    elif resolution.confidence >= HIGH_CONFIDENCE and resolution.source != "no_consent":
        kind = "high-confidence"
    else:
        kind = ""
    key = (segment.id, query.device, kind)
    tail = index.reason_tails.get(key)
    if tail is None:
        device = query.device or segment.features.get("device_class", "")
        parts = (device, f"intent:{segment.intent}" if segment.intent else "", kind)
        tail = _remember(index.reason_tails, key, "".join("+" + part for part in parts if part), REASON_TAIL_CACHE_SIZE)
    return tail
