"""gRPC servicers: thin adapters from protos to the decision core and back, plus the admin surface."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from aura.bundle.format import EMBEDDING_DIM, EMBEDDING_MODEL
from aura.config import AppConfig
from aura.errors import InvalidRequest, NotFound, Unauthenticated
from aura.eventlog import EventLog
from aura.server._native import ExplorationLedger, planned_slate, serve_slate
from aura.server.decision import (
    DIVERSITY_SCAN_PER_SLOT,
    HOLDOUT_VARIANT,
    Decision,
    SegmentResolver,
    exploration_ledger,
    segment_resolution,
    segment_resolver,
    slate_decision,
    slate_plan,
)
from aura.server.decision_log import decision_log
from aura.server.erasure import ErasedUsers
from aura.server.posterior_state import EXAMINATION_WEIGHTS, FeedbackDedupe, examination_weight
from aura.server.request_id import RequestIdCodec
from aura.server.search import search
from aura.server.state import Serving, ServingHolder
from aura.server.validation import check_id, feedback_reward, parse_timestamp, rank_query, search_limit
from aura.server.wire import field_bytes
from aura.v1 import admin_service_pb2 as admin_pb
from aura.v1 import admin_service_pb2_grpc as admin_grpc
from aura.v1 import decision_service_pb2 as pb
from aura.v1 import decision_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

FEEDBACK_WINDOW_SECONDS = 30 * 86400


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class BundleControl(Protocol):
    """What the admin service needs from the node's bundle sync (implemented by aura.edge.sync.BundleSync)."""

    def status(self) -> Any: ...
    def activate(self, version: str) -> Any: ...
    def rollback(self) -> Any: ...
    def refresh(self) -> bool: ...


@dataclasses.dataclass
class ServerDeps:
    """Everything the servicers need, built by the process's composition root."""

    config: AppConfig
    holder: ServingHolder
    codec: RequestIdCodec
    decisions: EventLog
    feedback: EventLog
    admin_log: EventLog
    dedupe: FeedbackDedupe
    erased: ErasedUsers
    embed_query: Callable[[str], np.ndarray]
    control: BundleControl | None = None
    node_id: str = "edge"


def node_deps(
    config: AppConfig,
    holder: ServingHolder,
    state_dir: Path,
    embed_query: Callable[[str], np.ndarray],
    *,
    node_id: str,
    control: BundleControl | None = None,
) -> ServerDeps:
    """The dependencies of one server process whose node-local state (logs, dedupe, erasures) is in `state_dir`."""
    logs_root = state_dir / "logs"
    batching = {
        "flush_interval": min(1.0, config.settings.event_flush_interval),
        "batch_size": config.settings.event_batch_size,
    }
    return ServerDeps(
        config=config,
        holder=holder,
        codec=RequestIdCodec(config.settings.request_id_secret),
        decisions=decision_log(logs_root, node_id=node_id, **batching),
        feedback=EventLog(logs_root, "feedback", node_id=node_id, **batching),
        admin_log=EventLog(logs_root, "admin", node_id=node_id, **batching),
        dedupe=FeedbackDedupe(state_dir / "feedback-seen.u64"),
        erased=ErasedUsers(state_dir / "erased-users.txt"),
        embed_query=embed_query,
        control=control,
        node_id=node_id,
    )


EXPLANATION_FIELD = 10
"""RankResponse.explanation: the last field of the response, so Rank appends it to the compiled bytes."""


class SlateTables(NamedTuple):
    """What `serve_slate` reads per bundle and process, by position in this order (see aura.server._native)."""

    params: memoryview
    """The posterior parameters (writable: impressions add to the betas). The arrays are memoryviews, as in
    aura.server.decision.SlatePlan."""
    examination_weights: memoryview
    similar_offsets: memoryview
    similar_rows: memoryview
    variance_scale: float
    max_per_cluster: int
    scan_per_slot: int
    mac: Callable[[bytes], Any]
    bundle_tag: int
    item_fingerprints: tuple[int, ...]
    item_tails: tuple[bytes, ...]
    reason_heads: tuple[str, ...]
    content_ids: Sequence[str]
    surface_fields: dict[str, bytes]
    node_id: str
    bundle_version: str
    policy_version: str
    variant: str
    holdout_variant: str
    columns: Any
    """The decision log's buffer (aura.server._native.DecisionColumns)."""
    exploration: ExplorationLedger
    """The process's visitor shares and request rate, for each decision's exploration budget."""
    serving: Serving
    """The serving state these tables were made from (the fields from here on are not read by serve_slate)."""
    resolver: SegmentResolver
    """The segment resolver of `serving`, for planned_slate."""


class DecisionService(pb_grpc.DecisionServiceServicer):
    """Rank, Feedback, GetSegments and Search."""

    def __init__(self, deps: ServerDeps) -> None:
        self._deps = deps
        self._config = deps.config
        self._exploration = exploration_ledger(deps.config.policies)
        self._variant = deps.config.settings.bandit_algorithm
        self._tables: SlateTables | None = None

    def Rank(self, request: bytes, context: Any) -> bytes:
        """Rank content for one surface and visitor, log the decision, and return the serialized RankResponse.

        Rank takes and returns wire bytes: the compiled parser validates the request in one call, the compiled
        `planned_slate` resolves the segment and finds the plan of the request's kind, and the compiled
        `serve_slate` takes the decision from the plan to the response, exploration budget and seed included.
        It never waits, so it is a plain function (aura.server.app.guarded calls it without a coroutine).
        """
        serving = self._deps.holder.require()
        query = rank_query(request, self._config.surfaces)
        if query.anon_id and query.anon_id in self._deps.erased:
            query = query._replace(anon_id="", session_id="")
        tables = self._tables
        if tables is None or tables.serving is not serving:
            tables = self._prepare(serving)
        index = serving.index
        resolution = None
        planned = planned_slate(tables.resolver, index.plans, query)
        if planned is None:  # a kind of request not seen yet, or one that asks to explain or names candidates
            resolution = segment_resolution(index, tables.resolver, query)
            planned = slate_plan(index, query, resolution, self._config.policies), resolution.confidence
        plan, confidence = planned
        response, rate, drawn = serve_slate(tables, plan, query, confidence, query.explain)
        if drawn is None:
            return response
        # Only an explained request has the draw's details, and its plan is never memoized: it was resolved above.
        decision = slate_decision(plan, resolution, index.reason_heads, drawn, rate)
        return response + field_bytes(EXPLANATION_FIELD, self._explanation(serving, decision).SerializeToString())

    def _prepare(self, serving: Serving) -> SlateTables:
        """The tables of `serving` for serve_slate and planned_slate, made once per bundle swap."""
        index = serving.index
        policies = self._config.policies
        self._tables = SlateTables(
            memoryview(serving.posteriors.params),
            memoryview(EXAMINATION_WEIGHTS),
            memoryview(index.similar_offsets),
            memoryview(index.similar_rows),
            policies.decisioning.exploration.posterior_variance_scale,
            policies.decisioning.diversity.max_per_topic_cluster,
            DIVERSITY_SCAN_PER_SLOT,
            self._deps.codec.mac,
            serving.bundle_tag,
            serving.item_fingerprints,
            serving.response_parts.item_tails,
            index.reason_heads,
            index.bundle.content.ids,
            dict(serving.response_parts.surface_fields),
            self._deps.node_id,
            serving.version,
            policies.policy_version,
            self._variant,
            HOLDOUT_VARIANT,
            self._deps.decisions.queue.columns,
            self._exploration,
            serving,
            segment_resolver(index, policies, self._config.settings.consent_required),
        )
        return self._tables

    def _explanation(self, serving: Serving, decision: Decision) -> pb.Explanation:
        content_ids = serving.index.bundle.content.ids
        return pb.Explanation(
            removed=[pb.RemovedCandidate(content_id=content_ids[row], rule=rule) for row, rule in decision.removed],
            scores=[
                pb.ScoreExplanation(
                    content_id=content_ids[item.content_row],
                    posterior_alpha=item.alpha,
                    posterior_beta=item.beta,
                    posterior_mean=item.alpha / (item.alpha + item.beta),
                    sampled_value=item.sample,
                    freshness_multiplier=item.freshness,
                )
                for item in decision.items
            ],
            segment_source=decision.resolution.source,
            exploration_rate=decision.exploration_rate,
        )

    async def Feedback(self, request: pb.FeedbackRequest, context: Any) -> pb.FeedbackResponse:
        """Validate feedback, make it durable, then apply it to the node's posteriors once."""
        reward_type, value = feedback_reward(request)
        ref = self._deps.codec.decode(request.request_id)
        position = ref.position_of(request.item_id)
        if position == 0:
            raise InvalidRequest(f"item_id {request.item_id!r} was not part of decision {request.request_id}.")
        now = time.time()
        if now - ref.decided_at_ms / 1000 > FEEDBACK_WINDOW_SECONDS:
            raise InvalidRequest("the decision is older than the 30-day feedback window.")
        dedupe = self._deps.dedupe
        fingerprint = dedupe.fingerprint(request.request_id, request.item_id, reward_type)
        feedback_id = f"fb_{fingerprint:016x}"
        with dedupe.locked():
            seen = dedupe.contains(fingerprint)
        if seen:
            return pb.FeedbackResponse(status="accepted", feedback_id=feedback_id)

        serving = self._deps.holder.current
        cell_key = None
        if serving is not None and serving.bundle_tag == ref.bundle_tag:
            index = serving.index
            if ref.surface_index < len(index.surface_ids) and ref.segment_index < len(index.segment_ids):
                cell_key = (index.surface_ids[ref.surface_index], index.segment_ids[ref.segment_index])
        reward_ts = parse_timestamp("reward.timestamp", request.reward.timestamp) if request.reward.timestamp else None
        feedback_log = self._deps.feedback
        await feedback_log.append_durable(
            [
                feedback_log.record(
                    event_id=feedback_id,
                    ts=datetime.fromtimestamp(now, UTC),
                    reward_ts=reward_ts,
                    node_id=self._deps.node_id,
                    request_id=request.request_id,
                    decided_at=ref.decided_at_ms,
                    bundle_tag=f"{ref.bundle_tag:08x}",
                    surface_id=cell_key[0] if cell_key else None,
                    segment_id=cell_key[1] if cell_key else None,
                    item_id=request.item_id,
                    reward_type=reward_type,
                    reward_value=value,
                    position=position,
                    dwell_time=request.context.dwell_time,
                    scroll_depth=request.context.scroll_depth,
                )
            ]
        )
        with dedupe.locked():
            if not dedupe.contains(fingerprint):
                dedupe.add(fingerprint)
                if cell_key is not None and reward_type != "dismiss":
                    self._apply_reward(serving, cell_key, request.item_id, value, position)
        return pb.FeedbackResponse(status="accepted", feedback_id=feedback_id)

    @staticmethod
    def _apply_reward(serving: Serving, cell_key: tuple[str, str], item_id: str, value: float, position: int) -> None:
        cell = serving.index.cells.get(cell_key)
        row = serving.index.bundle.content.index_of.get(item_id)
        if cell is None or row is None:
            return
        cell_pos = int(np.searchsorted(cell.items, row))
        if cell_pos < cell.items.size and cell.items[cell_pos] == row:
            serving.posteriors.record_reward(cell.start + cell_pos, value, examination_weight(position))

    async def GetSegments(self, request: pb.GetSegmentsRequest, context: Any) -> pb.GetSegmentsResponse:
        """Return the visitor's precomputed segment assignment."""
        serving = self._deps.holder.require()
        user_id = check_id("user_id", request.user_id)
        assignment = None if user_id in self._deps.erased else serving.index.bundle.assignments.get(user_id)
        if assignment is None:
            raise NotFound(
                f"user {user_id} has no segment assignment in bundle {serving.version}; "
                "visitors without one are segmented per request from their context."
            )
        segment = serving.index.bundle.segments[assignment.segment_id]
        return pb.GetSegmentsResponse(
            user_id=user_id,
            segments=[
                pb.SegmentAssignment(
                    id=segment.id,
                    name=segment.name,
                    confidence=round(assignment.confidence, 4),
                    features=segment.features,
                    assigned_at=assignment.assigned_at,
                )
            ],
        )

    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        """Semantic k-NN search over the bundle's content index, with filters."""
        serving = self._deps.holder.require()
        limit = search_limit(request)
        vector = await asyncio.get_running_loop().run_in_executor(None, self._deps.embed_query, request.query)
        filters = request.filters
        hits = search(
            serving.search,
            vector,
            topics=tuple(filters.topics),
            personas=tuple(filters.personas),
            jurisdictions=tuple(filters.jurisdictions),
            limit=limit,
        )
        content = serving.index.bundle.content
        return pb.SearchResponse(
            results=[
                pb.SearchResult(
                    content_id=hit.content_id,
                    title=content.titles[hit.row],
                    url=content.urls[hit.row],
                    similarity=hit.similarity,
                    topics=content.topics[hit.row],
                    freshness_score=round(float(content.freshness_score[hit.row]), 4),
                )
                for hit in hits
            ]
        )


def _operator_only(method: Callable[..., Any]) -> Callable[..., Any]:
    """Guard a state-changing admin RPC: the call must carry `authorization: Bearer <AURA_ADMIN_TOKEN>`."""

    @functools.wraps(method)
    async def guarded(self: AdminService, request: Any, context: Any) -> Any:
        self._authorize(context)
        return await method(self, request, context)

    return guarded


class AdminService(admin_grpc.AdminServiceServicer):
    """Bundle status, activation, rollback, refresh, retraining requests and erasure.

    Status reads are open (like health); every RPC that changes the node needs the admin bearer token,
    and with no AURA_ADMIN_TOKEN configured those RPCs are disabled.
    """

    def __init__(self, deps: ServerDeps) -> None:
        self._deps = deps
        token = deps.config.settings.admin_token
        self._expected = f"Bearer {token}".encode() if token else b""

    def _authorize(self, context: Any) -> None:
        if not self._expected:
            raise Unauthenticated("the admin API is disabled: set AURA_ADMIN_TOKEN to enable it.")
        presented = dict(context.invocation_metadata() or ()).get("authorization", "")
        if not hmac.compare_digest(presented.encode(), self._expected):
            raise Unauthenticated("admin RPCs need the metadata 'authorization: Bearer <AURA_ADMIN_TOKEN>'.")

    def _control(self) -> BundleControl:
        if self._deps.control is None:
            raise NotFound("this server runs without bundle sync; bundle admin is unavailable.")
        return self._deps.control

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def GetBundleStatus(self, request: admin_pb.GetBundleStatusRequest, context: Any):
        """Report the serving bundle, the versions available and what each decision process of the node serves."""
        serving = self._deps.holder.current
        response = admin_pb.GetBundleStatusResponse()
        if serving is not None:
            manifest = serving.index.bundle.manifest
            response.active_version = serving.version
            response.loaded_at = _iso(serving.loaded_at)
            response.age_seconds = round(time.time() - serving.index.bundle.created_at.timestamp(), 3)
            response.bundles.append(
                admin_pb.BundleInfo(
                    version=manifest.bundle_version,
                    created_at=manifest.created_at,
                    policy_version=manifest.policy_version,
                    parent_version=manifest.parent_version or "",
                    active=True,
                )
            )
        if self._deps.control is not None:
            status = await self._blocking(self._deps.control.status)
            response.pinned = status.pinned is not None
            response.store_version = status.store_version or ""
            response.last_error = status.last_error or ""
            response.processes.extend(
                admin_pb.ProcessStatus(
                    pid=state.pid,
                    active_version=state.active_version,
                    loaded_at=state.loaded_at,
                    last_error=state.last_error,
                )
                for state in status.processes
            )
            for info in status.available:
                if info.version == response.active_version:
                    continue
                manifest = info.manifest
                response.bundles.append(
                    admin_pb.BundleInfo(
                        version=info.version,
                        created_at=manifest.created_at if manifest else "",
                        policy_version=manifest.policy_version if manifest else "",
                        parent_version=(manifest.parent_version or "") if manifest else "",
                        active=False,
                    )
                )
        return response

    @_operator_only
    async def ActivateBundle(self, request: admin_pb.ActivateBundleRequest, context: Any):
        """Pin this node to a version and load it now."""
        version = check_id("version", request.version)
        previous = self._active()
        await self._blocking(self._control().activate, version)
        return admin_pb.ActivateBundleResponse(active_version=self._active(), previous_version=previous)

    @_operator_only
    async def RollbackBundle(self, request: admin_pb.RollbackBundleRequest, context: Any):
        """Pin this node to the version served before the current one."""
        previous = self._active()
        await self._blocking(self._control().rollback)
        return admin_pb.RollbackBundleResponse(active_version=self._active(), previous_version=previous)

    @_operator_only
    async def RefreshContentIndex(self, request: admin_pb.RefreshContentIndexRequest, context: Any):
        """Check the store for a newer bundle now."""
        changed = await self._blocking(self._control().refresh)
        return admin_pb.RefreshContentIndexResponse(active_version=self._active(), changed=bool(changed))

    async def GetIndexerStatus(self, request: admin_pb.GetIndexerStatusRequest, context: Any):
        """Describe the serving content index."""
        serving = self._deps.holder.require()
        bundle = serving.index.bundle
        newest = float(bundle.content.published_at.max()) if len(bundle.content) else 0.0
        return admin_pb.GetIndexerStatusResponse(
            bundle_version=bundle.version,
            content_items=len(bundle.content),
            embedding_dim=EMBEDDING_DIM,
            embedding_model=EMBEDDING_MODEL,
            built_at=bundle.manifest.created_at,
            newest_content_at=_iso(newest) if newest else "",
        )

    @_operator_only
    async def TriggerRetraining(self, request: admin_pb.TriggerRetrainingRequest, context: Any):
        """Queue a retraining request for the batch, durably."""
        if len(request.reason) > 1000:
            raise InvalidRequest("reason must be at most 1000 characters.")
        job_id = f"job_{uuid.uuid4().hex[:16]}"
        await self._admin_event("retrain", job_id, request.reason)
        return admin_pb.TriggerRetrainingResponse(job_id=job_id, status="queued")

    @_operator_only
    async def EraseUser(self, request: admin_pb.EraseUserRequest, context: Any):
        """Forget a visitor on this node now and queue erasure of stored history for the batch."""
        user_id = check_id("user_id", request.user_id)
        erasure_id = f"er_{uuid.uuid4().hex[:16]}"
        await self._admin_event("erase_user", user_id, erasure_id)
        await self._blocking(self._deps.erased.add, user_id)
        return admin_pb.EraseUserResponse(user_id=user_id, status="erased", erasure_id=erasure_id)

    async def _admin_event(self, action: str, subject: str, note: str) -> None:
        admin_log = self._deps.admin_log
        await admin_log.append_durable(
            [
                admin_log.record(
                    event_id=uuid.uuid4().hex,
                    ts=datetime.now(UTC),
                    node_id=self._deps.node_id,
                    action=action,
                    subject=subject,
                    note=note,
                )
            ]
        )

    def _active(self) -> str:
        serving = self._deps.holder.current
        return serving.version if serving is not None else ""
