"""Validation of incoming requests, once, at the boundary: proto in, domain query out, or InvalidRequest."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from aura.config import Surface
from aura.context import DEVICES, TIMES_OF_DAY, referrer_class, time_of_day
from aura.errors import InvalidRequest, NotFound
from aura.server.decision import RankQuery
from aura.v1 import decision_service_pb2 as pb

MAX_ID_LENGTH = 128
MAX_CANDIDATES = 1000
MAX_CONTEXT_ENTRIES = 32
MAX_CONTEXT_VALUE = 256
MAX_QUERY_LENGTH = 1000
MAX_SEARCH_RESULTS = 100
_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")

REWARD_TYPES: dict[int, str] = {
    pb.REWARD_TYPE_CLICK: "click",
    pb.REWARD_TYPE_CONVERSION: "conversion",
    pb.REWARD_TYPE_ENGAGEMENT: "engagement",
    pb.REWARD_TYPE_DISMISS: "dismiss",
}


_referrer_class = functools.lru_cache(maxsize=4096)(referrer_class)


def check_id(field: str, value: str, *, required: bool = True) -> str:
    """Return `value` if it is a well-formed id (letters, digits and ._:@/+=-, at most 128 chars)."""
    if not value:
        if required:
            raise InvalidRequest(f"{field} is required.")
        return value
    if not _ID.match(value):
        raise InvalidRequest(f"{field} must be 1-{MAX_ID_LENGTH} characters of letters, digits and ._:@/+=-.")
    return value


def rank_query(request: pb.RankRequest, surfaces: Mapping[str, Surface], now: datetime | None = None) -> RankQuery:
    """Validate a RankRequest against the configured surfaces and normalize its context."""
    if not request.surface_id:
        raise InvalidRequest("surface_id is required.")
    surface = surfaces.get(request.surface_id)
    if surface is None:
        raise NotFound(f"unknown surface {request.surface_id!r}; configured surfaces: {', '.join(sorted(surfaces))}.")
    limit = request.limit or surface.max_items
    if limit > surface.max_items:
        raise InvalidRequest(f"limit must be between 1 and {surface.max_items} for surface {surface.id}, got {limit}.")
    ctx = request.user_ctx
    check_id("user_ctx.anon_id", ctx.anon_id, required=False)
    check_id("user_ctx.session_id", ctx.session_id, required=False)
    device = ctx.device.lower()
    if device and device not in DEVICES:
        raise InvalidRequest(f"user_ctx.device must be one of {', '.join(DEVICES)}, got {ctx.device!r}.")
    country = ctx.geo.country
    if country and not _COUNTRY.match(country):
        raise InvalidRequest(f"user_ctx.geo.country must be an ISO 3166-1 alpha-2 code, got {country!r}.")
    if len(ctx.referrer) > 2048:
        raise InvalidRequest("user_ctx.referrer must be at most 2048 characters.")
    if len(ctx.page_type) > 64:
        raise InvalidRequest("user_ctx.page_type must be at most 64 characters.")
    consent = ctx.consent
    if len(consent) > 32 or max(map(len, consent), default=0) > 64:
        raise InvalidRequest("user_ctx.consent must list at most 32 scopes of at most 64 characters.")
    if len(request.candidates) > MAX_CANDIDATES:
        raise InvalidRequest(f"candidates must list at most {MAX_CANDIDATES} content ids.")
    for candidate in request.candidates:
        check_id("candidates[]", candidate)
    context = request.context
    if len(context) > MAX_CONTEXT_ENTRIES:
        raise InvalidRequest(f"context must have at most {MAX_CONTEXT_ENTRIES} entries.")
    for key, value in context.items():
        if not key or len(key) > 64 or len(value) > MAX_CONTEXT_VALUE:
            raise InvalidRequest(f"context keys must be 1-64 and values at most {MAX_CONTEXT_VALUE} characters.")
    given_time = context.get("time_of_day", "").lower()
    if given_time and given_time not in TIMES_OF_DAY:
        raise InvalidRequest(f"context.time_of_day must be one of {', '.join(TIMES_OF_DAY)}, got {given_time!r}.")
    return RankQuery(
        surface_id=surface.id,
        limit=limit,
        anon_id=ctx.anon_id,
        device=device,
        referrer_class=_referrer_class(ctx.referrer),
        page_type=ctx.page_type.lower(),
        country=country.upper(),
        time_of_day=given_time or time_of_day(now.hour if now else time.gmtime().tm_hour),
        campaign=context.get("campaign", ""),
        context=context,
        consent=frozenset(consent),
        candidates=tuple(request.candidates),
        explain=request.explain,
    )


def feedback_reward(request: pb.FeedbackRequest) -> tuple[str, float]:
    """Validate the reward of a FeedbackRequest; return (type name, value)."""
    check_id("item_id", request.item_id)
    if not request.request_id:
        raise InvalidRequest("request_id is required.")
    reward = request.reward
    name = REWARD_TYPES.get(reward.type)
    if name is None:
        raise InvalidRequest("reward.type must be one of click, conversion, engagement, dismiss.")
    if not 0.0 <= reward.value <= 1.0:
        raise InvalidRequest(f"reward.value must be in [0, 1], got {reward.value}.")
    if reward.timestamp:
        parse_timestamp("reward.timestamp", reward.timestamp)
    context = request.context
    if context.dwell_time < 0 or not 0.0 <= context.scroll_depth <= 1.0:
        raise InvalidRequest("context.dwell_time must be >= 0 and context.scroll_depth in [0, 1].")
    return name, reward.value


def parse_timestamp(field: str, value: str) -> datetime:
    """Parse an RFC 3339 timestamp (a trailing Z is accepted); naive times are taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{field} must be an RFC 3339 timestamp, got {value!r}.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def search_limit(request: pb.SearchRequest) -> int:
    """Validate a SearchRequest's query and return its effective limit."""
    if not request.query.strip():
        raise InvalidRequest("query is required.")
    if len(request.query) > MAX_QUERY_LENGTH:
        raise InvalidRequest(f"query must be at most {MAX_QUERY_LENGTH} characters.")
    limit = request.limit or 10
    if limit > MAX_SEARCH_RESULTS:
        raise InvalidRequest(f"limit must be between 1 and {MAX_SEARCH_RESULTS}, got {limit}.")
    return limit
