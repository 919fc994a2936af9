"""JSON <-> protobuf conversion for the gateway, written by hand for speed, with validation at the boundary.

Each `*_from_json` function takes a decoded JSON body and returns the request message, raising
`InvalidRequest` with a sentence naming the offending field (``limit must be an integer, got string.``).
Each `*_to_json` function returns a dict, ready for orjson, with the field names of the public HTTP API.
The `*_FIELDS` sets are the accepted fields of each JSON object; the OpenAPI document lists the same.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn

import orjson
from google.protobuf.message import Message

from aura.errors import InvalidRequest
from aura.pii import scrub_text, scrub_url
from aura.timeformat import parse_rfc3339
from aura.v1 import admin_service_pb2 as admin_pb
from aura.v1 import common_pb2 as common_pb
from aura.v1 import decision_service_pb2 as decision_pb

MAX_LIMIT = 100
MAX_CANDIDATES = 1000
MAX_LIST_ITEMS = 100
MAX_EVENTS = 500
MAX_ID_LENGTH = 256
MAX_DWELL_SECONDS = 31_536_000.0

RANK_FIELDS = frozenset({"surface_id", "user_ctx", "candidates", "limit", "context", "explain"})
USER_CTX_FIELDS = frozenset({"anon_id", "session_id", "device", "referrer", "page_type", "consent", "geo"})
GEO_FIELDS = frozenset({"country", "region"})
FEEDBACK_FIELDS = frozenset({"request_id", "item_id", "reward", "context"})
REWARD_FIELDS = frozenset({"type", "value", "timestamp"})
FEEDBACK_CONTEXT_FIELDS = frozenset({"position", "dwell_time", "scroll_depth"})
SEARCH_FIELDS = frozenset({"query", "filters", "limit"})
SEARCH_FILTER_FIELDS = frozenset({"topics", "personas", "jurisdictions"})
RETRAIN_FIELDS = frozenset({"reason"})
EVENTS_FIELDS = frozenset({"events"})
EVENT_FIELDS = frozenset(
    {
        "event_id",
        "type",
        "ts",
        "anon_id",
        "session_id",
        "surface_id",
        "content_id",
        "request_id",
        "url",
        "referrer",
        "props",
    }
)
EVENT_TYPES = ("page_view", "click", "dwell", "scroll", "conversion", "impression")

REWARD_TYPES: dict[str, int] = {
    "click": decision_pb.REWARD_TYPE_CLICK,
    "conversion": decision_pb.REWARD_TYPE_CONVERSION,
    "engagement": decision_pb.REWARD_TYPE_ENGAGEMENT,
    "dismiss": decision_pb.REWARD_TYPE_DISMISS,
}

_NO_FIELDS: frozenset[str] = frozenset()
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _invalid(where: str, problem: str) -> NoReturn:
    raise InvalidRequest(f"{where} {problem}.")


def _object(value: Any, path: str, fields: frozenset[str]) -> dict[str, Any]:
    """Check that `value` is a JSON object with no fields outside `fields`."""
    if type(value) is not dict:
        _invalid(path or "The request body", f"must be a JSON object, got {json_type(value)}")
    if not fields.issuperset(value):
        unknown = sorted(set(value) - fields)[0]
        known = ", ".join(sorted(fields)) or "none"
        _invalid(_at(path, unknown), f"is not a known field (known fields: {known})")
    return value


def _child(obj: dict[str, Any], key: str, path: str, fields: frozenset[str], *, required: bool = False) -> dict | None:
    value = obj.get(key)
    if value is None:
        if required:
            _invalid(_at(path, key), "is required")
        return None
    return _object(value, _at(path, key), fields)


def _string(obj: dict[str, Any], key: str, path: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            _invalid(_at(path, key), "is required")
        return ""
    if type(value) is not str:
        _invalid(_at(path, key), f"must be a string, got {json_type(value)}")
    if required and not value:
        _invalid(_at(path, key), "must not be empty")
    return value


def _strings(obj: dict[str, Any], key: str, path: str, max_items: int = MAX_LIST_ITEMS) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if type(value) is not list:
        _invalid(_at(path, key), f"must be a list of strings, got {json_type(value)}")
    if len(value) > max_items:
        _invalid(_at(path, key), f"must have at most {max_items} entries, got {len(value)}")
    for index, item in enumerate(value):
        if type(item) is not str:
            _invalid(f"{_at(path, key)}[{index}]", f"must be a string, got {json_type(item)}")
    return value


def _string_map(obj: dict[str, Any], key: str, path: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if type(value) is not dict:
        _invalid(_at(path, key), f"must be a JSON object of strings, got {json_type(value)}")
    if len(value) > MAX_LIST_ITEMS:
        _invalid(_at(path, key), f"must have at most {MAX_LIST_ITEMS} entries, got {len(value)}")
    for name, item in value.items():
        if type(item) is not str:
            _invalid(f"{_at(path, key)}.{name}", f"must be a string, got {json_type(item)}")
    return value


def _integer(obj: dict[str, Any], key: str, path: str, low: int, high: int, *, required: bool = False) -> int:
    """An integer in [low, high]; 0 when absent and not required."""
    value = obj.get(key)
    if value is None:
        if required:
            _invalid(_at(path, key), "is required")
        return 0
    if type(value) is not int:
        _invalid(_at(path, key), f"must be an integer, got {json_type(value)}")
    if not low <= value <= high:
        _invalid(_at(path, key), f"must be between {low} and {high}, got {value}")
    return value


def _number(obj: dict[str, Any], key: str, path: str, low: float, high: float, *, required: bool = False) -> float:
    """A number in [low, high]; 0.0 when absent and not required."""
    value = obj.get(key)
    if value is None:
        if required:
            _invalid(_at(path, key), "is required")
        return 0.0
    if type(value) is not float and type(value) is not int:
        _invalid(_at(path, key), f"must be a number, got {json_type(value)}")
    if not low <= value <= high:
        _invalid(_at(path, key), f"must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _boolean(obj: dict[str, Any], key: str, path: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if type(value) is not bool:
        _invalid(_at(path, key), f"must be true or false, got {json_type(value)}")
    return value


def _parse_rfc3339(value: str, where: str) -> datetime:
    try:
        return parse_rfc3339(value)
    except ValueError:
        _invalid(where, f"must be an RFC 3339 timestamp such as 2025-10-09T14:30:00Z, got {value!r}")


def path_id(value: str, name: str) -> str:
    """Validate an id taken from the URL path (user_id, version)."""
    if not value or len(value) > MAX_ID_LENGTH:
        _invalid(name, f"must be 1 to {MAX_ID_LENGTH} characters long")
    return value


def empty_body(body: Any) -> None:
    """Validate the body of an admin action that takes no parameters: absent or an empty JSON object."""
    if body is not None:
        _object(body, "", _NO_FIELDS)


def rank_request_from_json(body: Any) -> decision_pb.RankRequest:
    """Validate a /v1/rank body and build the RankRequest."""
    _object(body, "", RANK_FIELDS)
    surface_id = _string(body, "surface_id", "", required=True)
    user = _child(body, "user_ctx", "", USER_CTX_FIELDS, required=True)
    geo_json = _child(user, "geo", "user_ctx", GEO_FIELDS)
    geo = None
    if geo_json is not None:
        geo = common_pb.Geo(
            country=_string(geo_json, "country", "user_ctx.geo"), region=_string(geo_json, "region", "user_ctx.geo")
        )
    return decision_pb.RankRequest(
        surface_id=surface_id,
        user_ctx=common_pb.UserContext(
            anon_id=_string(user, "anon_id", "user_ctx", required=True),
            session_id=_string(user, "session_id", "user_ctx"),
            device=_string(user, "device", "user_ctx"),
            referrer=_string(user, "referrer", "user_ctx"),
            page_type=_string(user, "page_type", "user_ctx"),
            consent=_strings(user, "consent", "user_ctx"),
            geo=geo,
        ),
        candidates=_strings(body, "candidates", "", MAX_CANDIDATES),
        limit=_integer(body, "limit", "", 1, MAX_LIMIT),
        context=_string_map(body, "context", ""),
        explain=_boolean(body, "explain", ""),
    )


def feedback_request_from_json(body: Any) -> decision_pb.FeedbackRequest:
    """Validate a /v1/feedback body and build the FeedbackRequest."""
    _object(body, "", FEEDBACK_FIELDS)
    request_id = _string(body, "request_id", "", required=True)
    item_id = _string(body, "item_id", "", required=True)
    reward = _child(body, "reward", "", REWARD_FIELDS, required=True)
    reward_type = _string(reward, "type", "reward", required=True)
    if reward_type not in REWARD_TYPES:
        _invalid("reward.type", f"must be one of {', '.join(REWARD_TYPES)}, got {reward_type!r}")
    timestamp = _string(reward, "timestamp", "reward")
    if timestamp:
        _parse_rfc3339(timestamp, "reward.timestamp")
    context = _child(body, "context", "", FEEDBACK_CONTEXT_FIELDS) or {}
    return decision_pb.FeedbackRequest(
        request_id=request_id,
        item_id=item_id,
        reward=decision_pb.Reward(
            type=REWARD_TYPES[reward_type],
            value=_number(reward, "value", "reward", 0.0, 1.0, required=True),
            timestamp=timestamp,
        ),
        context=decision_pb.FeedbackContext(
            position=_integer(context, "position", "context", 1, MAX_CANDIDATES),
            dwell_time=_number(context, "dwell_time", "context", 0.0, MAX_DWELL_SECONDS),
            scroll_depth=_number(context, "scroll_depth", "context", 0.0, 1.0),
        ),
    )


def search_request_from_json(body: Any) -> decision_pb.SearchRequest:
    """Validate a /v1/search body and build the SearchRequest."""
    _object(body, "", SEARCH_FIELDS)
    filters = _child(body, "filters", "", SEARCH_FILTER_FIELDS) or {}
    return decision_pb.SearchRequest(
        query=_string(body, "query", "", required=True),
        filters=decision_pb.SearchFilters(
            topics=_strings(filters, "topics", "filters"),
            personas=_strings(filters, "personas", "filters"),
            jurisdictions=_strings(filters, "jurisdictions", "filters"),
        ),
        limit=_integer(body, "limit", "", 1, MAX_LIMIT),
    )


def retrain_request_from_json(body: Any) -> admin_pb.TriggerRetrainingRequest:
    """Validate the optional body of /v1/admin/segments/retrain ({"reason": "..."})."""
    if body is None:
        return admin_pb.TriggerRetrainingRequest()
    _object(body, "", RETRAIN_FIELDS)
    return admin_pb.TriggerRetrainingRequest(reason=_string(body, "reason", ""))


def _event_time_ms(event: dict[str, Any], where: str) -> int:
    value = event.get("ts")
    if value is None:
        _invalid(where, "is required")
    if type(value) is int:
        if not 0 <= value < 10**14:
            _invalid(where, f"must be epoch milliseconds, got {value}")
        return value
    if type(value) is not str:
        _invalid(where, f"must be an RFC 3339 string or epoch milliseconds, got {json_type(value)}")
    return int(_parse_rfc3339(value, where).timestamp() * 1000)


def _props_json(event: dict[str, Any], path: str, scrub: bool) -> str:
    props = event.get("props")
    if props is None:
        return "{}"
    if type(props) is not dict:
        _invalid(f"{path}.props", f"must be a JSON object, got {json_type(props)}")
    clean: dict[str, Any] = {}
    for key, value in props.items():
        if type(value) is str:
            clean[key] = scrub_text(value) if scrub else value
        elif value is None or type(value) in (int, float, bool):
            clean[key] = value
        else:
            _invalid(f"{path}.props.{key}", f"must be a string, number, boolean or null, got {json_type(value)}")
    return orjson.dumps(clean).decode()


def events_from_json(body: Any, *, received_at_ms: int, scrub: bool) -> list[dict[str, Any]]:
    """Validate a /v1/events batch and return records for the `events` stream of the event log.

    With `scrub`, free text loses e-mail addresses, phone numbers and IP addresses, and `url` and
    `referrer` lose their query strings.
    """
    _object(body, "", EVENTS_FIELDS)
    events = body.get("events")
    if type(events) is not list:
        _invalid("events", "is required" if events is None else f"must be a list, got {json_type(events)}")
    if not 1 <= len(events) <= MAX_EVENTS:
        _invalid("events", f"must hold 1 to {MAX_EVENTS} events, got {len(events)}")
    text = scrub_text if scrub else str
    url = scrub_url if scrub else str
    records = []
    for index, event in enumerate(events):
        path = f"events[{index}]"
        _object(event, path, EVENT_FIELDS)
        event_type = _string(event, "type", path, required=True)
        if event_type not in EVENT_TYPES:
            _invalid(f"{path}.type", f"must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
        records.append(
            {
                "event_id": _string(event, "event_id", path, required=True),
                "ts": _event_time_ms(event, f"{path}.ts"),
                "received_at": received_at_ms,
                "type": event_type,
                "anon_id": text(_string(event, "anon_id", path, required=True)),
                "session_id": text(_string(event, "session_id", path, required=True)),
                "surface_id": _string(event, "surface_id", path),
                "content_id": _string(event, "content_id", path),
                "request_id": _string(event, "request_id", path),
                "url": url(_string(event, "url", path)),
                "referrer": url(_string(event, "referrer", path)),
                "props_json": _props_json(event, path, scrub),
            }
        )
    return records


def _ranked_item(item: decision_pb.RankedItem) -> dict[str, Any]:
    metadata = item.metadata
    return {
        "content_id": item.content_id,
        "score": item.score,
        "reason": item.reason,
        "metadata": {"title": metadata.title, "url": metadata.url, "topics": list(metadata.topics)},
        "position": item.position,
        "propensity": item.propensity,
        "explored": item.explored,
    }


def _explanation(explanation: decision_pb.Explanation) -> dict[str, Any]:
    return {
        "removed": [{"content_id": r.content_id, "rule": r.rule} for r in explanation.removed],
        "scores": [
            {
                "content_id": s.content_id,
                "posterior_alpha": s.posterior_alpha,
                "posterior_beta": s.posterior_beta,
                "posterior_mean": s.posterior_mean,
                "sampled_value": s.sampled_value,
                "freshness_multiplier": s.freshness_multiplier,
            }
            for s in explanation.scores
        ],
        "segment_source": explanation.segment_source,
        "exploration_rate": explanation.exploration_rate,
    }


def rank_response_to_json(response: decision_pb.RankResponse) -> dict[str, Any]:
    """The /v1/rank response body; `explanation` only when the server sent one."""
    segment = response.segment
    experiment = response.experiment
    body = {
        "request_id": response.request_id,
        "surface": response.surface,
        "items": [_ranked_item(item) for item in response.items],
        "segment": {"id": segment.id, "confidence": segment.confidence, "intent": segment.intent},
        "experiment": {"variant": experiment.variant, "holdout": experiment.holdout},
        "policy_version": response.policy_version,
        "cache_ttl": response.cache_ttl,
        "bundle_version": response.bundle_version,
        "seed": str(response.seed),  # a uint64: a string, as in protobuf's JSON mapping, for JavaScript's doubles
    }
    if response.HasField("explanation"):
        body["explanation"] = _explanation(response.explanation)
    return body


def feedback_response_to_json(response: decision_pb.FeedbackResponse) -> dict[str, Any]:
    """The /v1/feedback response body."""
    return {"status": response.status, "feedback_id": response.feedback_id}


def segments_response_to_json(response: decision_pb.GetSegmentsResponse) -> dict[str, Any]:
    """The /v1/segments/{user_id} response body."""
    return {
        "user_id": response.user_id,
        "segments": [
            {
                "id": s.id,
                "name": s.name,
                "confidence": s.confidence,
                "features": dict(s.features),
                "assigned_at": s.assigned_at,
            }
            for s in response.segments
        ],
    }


def search_response_to_json(response: decision_pb.SearchResponse) -> dict[str, Any]:
    """The /v1/search response body."""
    return {
        "results": [
            {
                "content_id": r.content_id,
                "title": r.title,
                "url": r.url,
                "similarity": r.similarity,
                "topics": list(r.topics),
                "freshness_score": r.freshness_score,
            }
            for r in response.results
        ]
    }


def admin_response_to_json(message: Message) -> dict[str, Any]:
    """An AdminService response, field for field (repeated messages become lists of objects).

    The admin messages are flat apart from `GetBundleStatusResponse.bundles`, and admin calls are rare,
    so this one walks the descriptor instead of naming each field.
    """
    body: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            body[field.name] = [admin_response_to_json(v) for v in value] if field.message_type else list(value)
        elif field.message_type is not None:
            body[field.name] = admin_response_to_json(value)
        else:
            body[field.name] = value
    return body
