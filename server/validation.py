"""Validation of incoming requests, once, at the boundary: wire bytes or protos in, domain values out."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from aura.config import Surface
from aura.context import referrer_class, referrer_host
from aura.errors import InvalidRequest, NotFound
from aura.server._native import MAX_ID_LENGTH, parse_rank_request
from aura.server.decision import RankQuery
from aura.v1 import decision_service_pb2 as pb

MAX_QUERY_LENGTH = 1000
MAX_SEARCH_RESULTS = 100
ID_CHARACTERS = "A-Za-z0-9._:@/+=-"
"""The characters of an id, as a regex character class's contents."""
_ID = re.compile(f"[{ID_CHARACTERS}]{{1,{MAX_ID_LENGTH}}}")

REWARD_TYPES: dict[int, str] = {
    pb.REWARD_TYPE_CLICK: "click",
    pb.REWARD_TYPE_CONVERSION: "conversion",
    pb.REWARD_TYPE_ENGAGEMENT: "engagement",
    pb.REWARD_TYPE_DISMISS: "dismiss",
}


def check_id(field: str, value: str, *, required: bool = True) -> str:
    """Return `value` if it is a well-formed id (letters, digits and ._:@/+=-, at most 128 chars)."""
    if not value:
        if required:
            raise InvalidRequest(f"{field} is required.")
        return value
    if not _ID.fullmatch(value):
        raise InvalidRequest(f"{field} must be 1-{MAX_ID_LENGTH} characters of letters, digits and ._:@/+=-.")
    return value


def _referrer_fields(referrer: str) -> tuple[str, str]:
    return referrer_host(referrer), referrer_class(referrer)


_parse_rank_request = functools.partial(
    parse_rank_request, RankQuery, InvalidRequest, NotFound, functools.lru_cache(maxsize=4096)(_referrer_fields)
)


def rank_query(request: bytes, surfaces: Mapping[str, Surface], hour: int = -1) -> RankQuery:
    """Validate a RankRequest (wire bytes) against the configured surfaces and normalize its context.

    The compiled parser applies every rule of the Rank API: InvalidRequest for malformed bytes or a broken
    rule, NotFound for an unknown surface. `hour` (UTC, 0-23) sets the time of day when the request's
    context has none; -1 means now.
    """
    return _parse_rank_request(surfaces, request, hour)


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
    if not (0.0 <= context.dwell_time < math.inf and 0.0 <= context.scroll_depth <= 1.0):
        raise InvalidRequest("context.dwell_time must be a finite number >= 0 and context.scroll_depth in [0, 1].")
    return name, reward.value


def parse_timestamp(field: str, value: str) -> datetime:
    """Parse an RFC 3339 timestamp (T and Z in either case) into UTC; naive times are taken as UTC.

    The time must lie within years 1-9999 in UTC, what the logs can store.
    """
    try:
        parsed = datetime.fromisoformat(value.upper())
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"{field} must be an RFC 3339 timestamp within years 1-9999 in UTC, got {value!r}."
        ) from None


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
