"""The OpenAPI 3.1 document of the gateway's HTTP API, served at /openapi.json.

Request schemas accept what the gateway and the decision server accept: the fields, required fields and
ranges of `convert`, null for an optional field (the gateway takes it as absent), and the decision server's
content rules (server/_request.c, server/validation.py), whichever of the two is stricter. Response schemas
are exact (`additionalProperties: false`), so a client can validate what it receives.
The admin response schemas are derived from the AdminService messages, which the admin routes return
field for field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from aura.bundle.store import SAFE_NAME
from aura.context import DEVICES, TIMES_OF_DAY
from aura.server._native import (
    MAX_CONSENT,
    MAX_CONSENT_LENGTH,
    MAX_CONTEXT_ENTRIES,
    MAX_CONTEXT_KEY,
    MAX_CONTEXT_VALUE,
    MAX_ID_LENGTH,
    MAX_PAGE_TYPE,
    MAX_REFERRER,
    MAX_REGION,
)
from aura.server.validation import ID_CHARACTERS, MAX_QUERY_LENGTH
from aura.v1 import admin_service_pb2 as admin_pb

from .convert import EVENT_TYPES, MAX_CANDIDATES, MAX_DWELL_SECONDS, MAX_EVENTS, MAX_LIMIT, MAX_LIST_ITEMS, REWARD_TYPES
from .responses import ERROR_CODES, OTHER_ERROR_CODE

Schema = dict[str, Any]

_ERRORS = {
    400: ("InvalidRequest", "The request is malformed or a field is out of range."),
    401: ("Unauthenticated", "The admin API is disabled or the bearer token is missing or wrong."),
    403: ("PermissionDenied", "The visitor has not granted the consent the request needs."),
    404: ("NotFound", "A named thing (surface, user, bundle version) does not exist."),
    408: ("RequestTimeout", "The request body did not arrive within 10 s; the gateway closes the connection."),
    409: ("Conflict", "The request conflicts with the node's state, e.g. a bundle failed verification."),
    413: ("PayloadTooLarge", "The request body exceeds AURA_MAX_BODY_BYTES."),
    429: ("RateLimited", "The client exceeded its request rate, or the server is overloaded."),
    500: ("Internal", "An internal error; the message is generic."),
    503: ("Unavailable", "The decision server is unreachable or not ready (no bundle loaded)."),
    504: ("DeadlineExceeded", "The decision server did not answer in time."),
    0: ("OtherError", "Any other error (e.g. a gRPC status without a listed HTTP status), in the same shape."),
}
_DEFAULT = {"default": {"$ref": "#/components/responses/OtherError"}}
_DECISION_ERRORS = (400, 413, 429, 500, 503, 504)
_ADMIN_ERRORS = (400, 401, 404, 409, 429, 500, 503, 504)

_VERSION_PATTERN = f"^{SAFE_NAME.pattern}$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(description: str, properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    schema: Schema = {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


def _exact(description: str, properties: dict[str, Schema]) -> Schema:
    """A response object: every listed property is always present."""
    return _object(description, properties, tuple(properties))


def _nullable(schema: Schema) -> Schema:
    """`schema` or null."""
    if "type" not in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    nullable = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _request(description: str, properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    """A request object: an optional property may also be null, which the gateway takes as absent."""
    return _object(
        description,
        {name: schema if name in required else _nullable(schema) for name, schema in properties.items()},
        required,
    )


def _id_rules(min_length: int = 1) -> Schema:
    """The keywords of an id as the decision server checks it: letters, digits and ._:@/+=-, at most 128."""
    return {
        "minLength": min_length,
        "maxLength": MAX_ID_LENGTH,
        "pattern": f"^[{ID_CHARACTERS}]{{{min_length},{MAX_ID_LENGTH}}}$",
    }


def _any_case(words: Iterable[str]) -> str:
    """An anchored pattern for the empty string or one of the lower-case ASCII `words` in any letter case."""
    alternatives = "|".join("".join(f"[{letter.upper()}{letter}]" for letter in word) for word in words)
    return f"^({alternatives})?$"


def _string(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _strings(description: str, max_items: int = MAX_LIST_ITEMS, **item: Any) -> Schema:
    return {"type": "array", "description": description, "items": {"type": "string", **item}, "maxItems": max_items}


def _number(description: str, **extra: Any) -> Schema:
    return {"type": "number", "description": description, **extra}


def _integer(description: str, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, **extra}


def _boolean(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def _array(description: str, items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "description": description, "items": items, **extra}


_PROTO_TYPES: dict[int, Schema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0},
}


def _message_schema(message: Descriptor, description: str) -> Schema:
    """The exact JSON schema of an AdminService message (scalars, repeated scalars, repeated messages)."""
    properties: dict[str, Schema] = {}
    for field in message.fields:
        item = _ref(field.message_type.name) if field.message_type else dict(_PROTO_TYPES[field.type])
        properties[field.name] = {"type": "array", "items": item} if field.is_repeated else item
    return _exact(description, properties)


def _schemas() -> dict[str, Schema]:
    unit = {"minimum": 0, "maximum": 1}
    return {
        "Error": _exact(
            "The body of every error response.",
            {
                "error": _exact(
                    "What went wrong.",
                    {
                        "code": _string(
                            "Machine-readable error code.",
                            enum=sorted({*ERROR_CODES.values(), OTHER_ERROR_CODE}),
                        ),
                        "message": _string("Human-readable explanation naming the offending field, if any."),
                        "status": _integer("The HTTP status code.", minimum=400, maximum=599),
                    },
                )
            },
        ),
        "Geo": _request(
            "The visitor's coarse location.",
            {
                "country": _string(
                    "ISO 3166-1 alpha-2 country code in either case, e.g. US; empty when unknown.",
                    pattern="^([A-Za-z]{2})?$",
                ),
                "region": _string("Subdivision code within the country, e.g. CA.", maxLength=MAX_REGION),
            },
        ),
        "UserContext": _request(
            "The visitor and the page view a decision is made for.",
            {
                "anon_id": _string("First-party pseudonymous visitor id.", **_id_rules()),
                "session_id": _string("The current session's id; empty when none.", **_id_rules(0)),
                "device": _string(
                    "Device class: mobile, desktop or tablet, in any letter case; empty when unknown.",
                    pattern=_any_case(DEVICES),
                ),
                "referrer": _string("The page's referrer URL; only its host is used.", maxLength=MAX_REFERRER),
                "page_type": _string(
                    "The kind of page the surface is on, e.g. index or article.", maxLength=MAX_PAGE_TYPE
                ),
                "consent": _strings(
                    "Consent scopes the visitor granted, e.g. personalization.",
                    MAX_CONSENT,
                    maxLength=MAX_CONSENT_LENGTH,
                ),
                "geo": _ref("Geo"),
            },
            ("anon_id",),
        ),
        "RankRequest": _request(
            "A request for a personalized ranking of one surface.",
            {
                "surface_id": _string("A configured surface, e.g. homepage.hero.", minLength=1),
                "user_ctx": _ref("UserContext"),
                "candidates": _strings("Restrict the ranking to these content ids.", MAX_CANDIDATES, **_id_rules()),
                "limit": _integer(
                    "Number of items wanted, at most the surface's max_items (its default).",
                    minimum=1,
                    maximum=MAX_LIMIT,
                ),
                "context": {
                    "type": "object",
                    "description": "Free-form request context such as campaign or time_of_day.",
                    "properties": {
                        "time_of_day": _string(
                            "morning, afternoon, evening or night, in any letter case; the current UTC hour's "
                            "when empty or absent.",
                            pattern=_any_case(TIMES_OF_DAY),
                        )
                    },
                    "propertyNames": {"minLength": 1, "maxLength": MAX_CONTEXT_KEY},
                    "additionalProperties": {"type": "string", "maxLength": MAX_CONTEXT_VALUE},
                    "maxProperties": MAX_CONTEXT_ENTRIES,
                },
                "explain": _boolean("Return an explanation of the decision."),
            },
            ("surface_id", "user_ctx"),
        ),
        "ItemMetadata": _exact(
            "Display metadata of a content item.",
            {
                "title": _string("The item's headline."),
                "url": _string("The item's canonical URL or path."),
                "topics": _array("The item's topics.", {"type": "string"}),
            },
        ),
        "RankedItem": _exact(
            "One item of a ranking.",
            {
                "content_id": _string("The item's content id."),
                "score": _number("The item's final ranking score."),
                "reason": _string("A short human-readable reason for showing the item."),
                "metadata": _ref("ItemMetadata"),
                "position": _integer("1-based position in the ranking.", minimum=1),
                "propensity": _number("Probability with which the policy placed the item in the slate.", **unit),
                "explored": _boolean("True when the exploration budget placed the item."),
            },
        ),
        "Segment": _exact(
            "The visitor's resolved micro-segment.",
            {
                "id": _string("Segment id, e.g. seg_learn_mobile_new."),
                "confidence": _number("Probability that the assignment is right.", **unit),
                "intent": _string("The segment's inferred intent, e.g. learn."),
            },
        ),
        "Experiment": _exact(
            "The experiment arm of the decision.",
            {
                "variant": _string("The arm's name."),
                "holdout": _boolean("True when the visitor is in the non-personalized holdout."),
            },
        ),
        "RemovedCandidate": _exact(
            "A candidate removed by a rule.",
            {
                "content_id": _string("The removed item."),
                "rule": _string("consent, jurisdiction, device, policy_flag or diversity."),
            },
        ),
        "ScoreExplanation": _exact(
            "What drove one returned item's score.",
            {
                "content_id": _string("The explained item."),
                "posterior_alpha": _number("Beta posterior alpha (successes plus prior)."),
                "posterior_beta": _number("Beta posterior beta (failures plus prior)."),
                "posterior_mean": _number("alpha / (alpha + beta)."),
                "sampled_value": _number("The Thompson draw from the posterior."),
                "freshness_multiplier": _number("Freshness decay applied to the draw."),
            },
        ),
        "Explanation": _exact(
            "Why these items: removed candidates and score drivers.",
            {
                "removed": _array("Candidates removed by eligibility and diversity rules.", _ref("RemovedCandidate")),
                "scores": _array("One explanation per returned item.", _ref("ScoreExplanation")),
                "segment_source": _string("How the segment was resolved: assignment, cold_start or default."),
                "exploration_rate": _number("Exploration probability in force for the decision.", **unit),
            },
        ),
        "RankResponse": _object(
            "A ranking decision.",
            {
                "request_id": _string("Identifies the decision; feedback refers to it. Also the X-Request-ID."),
                "surface": _string("The surface the ranking is for."),
                "items": _array("Ranked items, best first.", _ref("RankedItem")),
                "segment": _ref("Segment"),
                "experiment": _ref("Experiment"),
                "policy_version": _string("Version of the decision policy."),
                "cache_ttl": _integer("Seconds a client may cache the ranking.", minimum=0),
                "bundle_version": _string("The artifact bundle the decision was made with."),
                "seed": _string(
                    "Random seed of the decision's draws, for replay: an unsigned 64-bit integer as a decimal "
                    "string (protobuf's JSON mapping), since it can exceed what a JavaScript number holds exactly.",
                    pattern="^[0-9]{1,20}$",
                ),
                "explanation": _ref("Explanation"),
            },
            (
                "request_id",
                "surface",
                "items",
                "segment",
                "experiment",
                "policy_version",
                "cache_ttl",
                "bundle_version",
                "seed",
            ),
        ),
        "Reward": _request(
            "A reward signal.",
            {
                "type": _string("The kind of reward.", enum=list(REWARD_TYPES)),
                "value": _number("The reward's size.", **unit),
                "timestamp": _string(
                    "When the reward happened: an RFC 3339 date-time with an offset, or empty when unknown.",
                    anyOf=[{"format": "date-time"}, {"const": ""}],
                ),
            },
            ("type", "value"),
        ),
        "FeedbackContext": _request(
            "How the visitor met the item.",
            {
                "position": _integer("1-based position the item was shown at.", minimum=1, maximum=MAX_CANDIDATES),
                "dwell_time": _number("Seconds spent on the item.", minimum=0, maximum=MAX_DWELL_SECONDS),
                "scroll_depth": _number("Scrolled fraction of the page.", **unit),
            },
        ),
        "FeedbackRequest": _request(
            "A reward for an item of an earlier ranking.",
            {
                "request_id": _string("The request_id of the ranking.", minLength=1),
                "item_id": _string("The content id the reward is for; it must be in the ranking.", **_id_rules()),
                "reward": _ref("Reward"),
                "context": _ref("FeedbackContext"),
            },
            ("request_id", "item_id", "reward"),
        ),
        "FeedbackResponse": _exact(
            "Durable receipt of feedback.",
            {
                "status": _string("accepted once the feedback is on disk."),
                "feedback_id": _string("Identifies the feedback; retries get the same id."),
            },
        ),
        "SegmentAssignment": _exact(
            "One segment a visitor is assigned to.",
            {
                "id": _string("Segment id."),
                "name": _string("Human-readable segment name."),
                "confidence": _number("The assignment's confidence.", **unit),
                "features": {
                    "type": "object",
                    "description": "The segment's defining dimension values.",
                    "additionalProperties": {"type": "string"},
                },
                "assigned_at": _string("The as-of time of the history the assignment was computed from, RFC 3339."),
            },
        ),
        "SegmentsResponse": _exact(
            "A visitor's segments, most confident first.",
            {
                "user_id": _string("The visitor's anonymous id."),
                "segments": _array("The assignments.", _ref("SegmentAssignment")),
            },
        ),
        "SearchFilters": _request(
            "Keep results that share any listed value of each given filter.",
            {
                "topics": _strings("Topics."),
                "personas": _strings("Personas: beginner, intermediate, advanced."),
                "jurisdictions": _strings("Jurisdictions, e.g. US, EU."),
            },
        ),
        "SearchRequest": _request(
            "A semantic search.",
            {
                "query": _string(
                    "The text to search for; not only white space.", pattern=r"\S", maxLength=MAX_QUERY_LENGTH
                ),
                "filters": _ref("SearchFilters"),
                "limit": _integer("Number of results wanted; 10 when absent.", minimum=1, maximum=MAX_LIMIT),
            },
            ("query",),
        ),
        "SearchResult": _exact(
            "One search hit.",
            {
                "content_id": _string("The hit's content id."),
                "title": _string("The hit's title."),
                "url": _string("The hit's URL."),
                "similarity": _number("Cosine similarity between query and item.", minimum=-1, maximum=1),
                "topics": _array("The hit's topics.", {"type": "string"}),
                "freshness_score": _number("The hit's freshness score."),
            },
        ),
        "SearchResponse": _exact(
            "Search hits, most similar first.", {"results": _array("The hits.", _ref("SearchResult"))}
        ),
        "Event": _request(
            "One SDK event. E-mail addresses, phone numbers and IP addresses are scrubbed from free text, and "
            "query strings from url and referrer, before the event is stored.",
            {
                "event_id": _string("Client-generated unique id, for de-duplication.", minLength=1),
                "type": _string("The kind of event.", enum=list(EVENT_TYPES)),
                "ts": {
                    "description": "When the event happened: RFC 3339, or epoch milliseconds.",
                    "oneOf": [
                        {"type": "string", "format": "date-time"},
                        {"type": "integer", "minimum": 0, "maximum": 10**14 - 1},
                    ],
                },
                "anon_id": _string("First-party pseudonymous visitor id.", minLength=1),
                "session_id": _string("The session's id.", minLength=1),
                "surface_id": _string("The surface the event happened on."),
                "content_id": _string("The content item the event is about."),
                "request_id": _string("The ranking decision that showed the item."),
                "url": _string("The page URL."),
                "referrer": _string("The page's referrer URL."),
                "props": {
                    "type": "object",
                    "description": "Event properties (flat: strings, numbers, booleans or null).",
                    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                },
            },
            ("event_id", "type", "ts", "anon_id", "session_id"),
        ),
        "EventsRequest": _request(
            "A batch of SDK events.",
            {"events": _array("The events.", _ref("Event"), minItems=1, maxItems=MAX_EVENTS)},
            ("events",),
        ),
        "EventsResponse": _exact(
            "The batch is durably stored.", {"accepted": _integer("Number of events stored.", minimum=1)}
        ),
        "Health": _exact("The gateway process answers.", {"status": _string("Always ok.", enum=["ok"])}),
        "DetailedHealth": _exact(
            "Status of the gateway, the decision server and its serving bundle.",
            {
                "status": _string("ok when every component serves, else degraded.", enum=["ok", "degraded"]),
                "components": _exact(
                    "Per-component status.",
                    {
                        "gateway": _exact("This gateway process.", {"status": _string("Always ok.", enum=["ok"])}),
                        "decision_server": _exact(
                            "The gRPC decision server and its grpc.health.v1 status.",
                            {
                                "status": _string("Reachability.", enum=["ok", "not_serving", "unreachable"]),
                                "serving_status": _string("The grpc.health.v1 serving status."),
                                "message": _string("Why the server is unreachable; empty otherwise."),
                            },
                        ),
                        "bundle": _exact(
                            "The serving artifact bundle: version, age_seconds, loaded_at and last_error are those of "
                            "the decision process that answered, processes those of every process.",
                            {
                                "status": _string(
                                    "ok when every decision process serves the same version (a process's "
                                    "last_error is reported but does not change it); missing when the answering "
                                    "process serves none; degraded when another serves none or they serve "
                                    "different versions; unknown when the status could not be read.",
                                    enum=["ok", "degraded", "missing", "unknown"],
                                ),
                                "version": _string("Serving bundle version; empty before the first load."),
                                "age_seconds": _number("Age of the serving bundle since it was built."),
                                "loaded_at": _string("When the serving bundle was swapped in, RFC 3339."),
                                "last_error": _string("The last sync or load error; empty when none."),
                                "processes": _array(
                                    "The node's live decision processes by pid; empty when unknown.",
                                    _ref("ProcessStatus"),
                                ),
                            },
                        ),
                    },
                ),
            },
        ),
        "RetrainRequest": _request(
            "Optional body of a retraining request.", {"reason": _string("A note for the batch operators.")}
        ),
        "BundleInfo": _message_schema(admin_pb.BundleInfo.DESCRIPTOR, "One bundle version known to the node."),
        "ProcessStatus": _message_schema(
            admin_pb.ProcessStatus.DESCRIPTOR, "The bundle state of one decision process of the node."
        ),
        "BundleStatus": _message_schema(
            admin_pb.GetBundleStatusResponse.DESCRIPTOR,
            "The serving bundle, the versions available and what each decision process of the node serves.",
        ),
        "BundleSwitch": _message_schema(
            admin_pb.ActivateBundleResponse.DESCRIPTOR,
            "The serving version after and before an activation or rollback.",
        ),
        "IndexRefresh": _message_schema(
            admin_pb.RefreshContentIndexResponse.DESCRIPTOR, "The outcome of an immediate bundle sync."
        ),
        "IndexerStatus": _message_schema(
            admin_pb.GetIndexerStatusResponse.DESCRIPTOR, "The content index of the serving bundle."
        ),
        "RetrainJob": _message_schema(
            admin_pb.TriggerRetrainingResponse.DESCRIPTOR, "A queued segment model retraining request."
        ),
        "UserErasure": _message_schema(admin_pb.EraseUserResponse.DESCRIPTOR, "An acknowledged erasure."),
    }


def _request_id_header() -> dict[str, Any]:
    return {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}


def _json_reply(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _request_id_header(),
        "content": {"application/json": {"schema": _ref(schema)}},
    }


def _operation(
    operation_id: str,
    summary: str,
    replies: dict[str, Any],
    errors: tuple[int, ...],
    *,
    body: str | None = None,
    body_required: bool = True,
    admin: bool = False,
    parameters: tuple[str, ...] = (),
) -> dict[str, Any]:
    if body is not None:  # a body that arrives too slowly is answered with 408
        errors = tuple(sorted({*errors, 408}))
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["admin" if admin else "api"],
        "responses": {
            **replies,
            **{str(s): {"$ref": f"#/components/responses/{_ERRORS[s][0]}"} for s in errors},
            **_DEFAULT,
        },
    }
    if parameters:
        operation["parameters"] = [{"$ref": f"#/components/parameters/{name}"} for name in parameters]
    if body is not None:
        # The gateway takes an optional body of JSON null as absent.
        schema = _ref(body) if body_required else _nullable(_ref(body))
        operation["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": schema}}}
    if admin:
        operation["security"] = [{"adminBearer": []}]
    return operation


def _paths() -> dict[str, Any]:
    empty_body = "EmptyObject"
    return {
        "/v1/rank": {
            "post": _operation(
                "rank",
                "Rank content for a surface and visitor.",
                {"200": _json_reply("The ranking; X-Request-ID is its request_id.", "RankResponse")},
                (400, 403, 404, 413, 429, 500, 503, 504),
                body="RankRequest",
            )
        },
        "/v1/feedback": {
            "post": _operation(
                "feedback",
                "Report a reward for an item of an earlier ranking.",
                {"200": _json_reply("The feedback is durably recorded.", "FeedbackResponse")},
                (*_DECISION_ERRORS, 404, 409),
                body="FeedbackRequest",
            )
        },
        "/v1/segments/{user_id}": {
            "get": _operation(
                "getSegments",
                "Get a visitor's segment assignments.",
                {"200": _json_reply("The visitor's segments.", "SegmentsResponse")},
                (400, 404, 429, 500, 503, 504),
                parameters=("UserId",),
            )
        },
        "/v1/search": {
            "post": _operation(
                "search",
                "Search content by semantic similarity.",
                {"200": _json_reply("The hits.", "SearchResponse")},
                _DECISION_ERRORS,
                body="SearchRequest",
            )
        },
        "/v1/events": {
            "post": _operation(
                "ingestEvents",
                "Store a batch of SDK events (at most 500) in the durable event log.",
                {"202": _json_reply("The events are on disk.", "EventsResponse")},
                (400, 413, 429, 500, 503),
                body="EventsRequest",
            )
        },
        "/health": {
            "get": _operation(
                "health", "Liveness of the gateway process.", {"200": _json_reply("The gateway answers.", "Health")}, ()
            )
        },
        "/v1/health/detailed": {
            "get": _operation(
                "healthDetailed",
                "Status of the gateway, the decision server (grpc.health.v1) and its serving bundle.",
                {
                    "200": _json_reply("Every component serves.", "DetailedHealth"),
                    "503": _json_reply("A component does not serve.", "DetailedHealth"),
                },
                (429, 500),
            )
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of this gateway process.",
                "tags": ["ops"],
                "responses": {
                    "200": {
                        "description": "The Prometheus text exposition format.",
                        "headers": _request_id_header(),
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_DEFAULT,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "tags": ["ops"],
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "headers": _request_id_header(),
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_DEFAULT,
                },
            }
        },
        "/v1/admin/indexer/status": {
            "get": _operation(
                "getIndexerStatus",
                "Report the content index of the serving bundle.",
                {"200": _json_reply("The index status.", "IndexerStatus")},
                _ADMIN_ERRORS,
                admin=True,
            )
        },
        "/v1/admin/index/refresh": {
            "post": _operation(
                "refreshContentIndex",
                "Check the bundle store for a newer bundle now and load it; the node's other decision processes "
                "follow within a second.",
                {"200": _json_reply("The outcome of the sync.", "IndexRefresh")},
                _ADMIN_ERRORS,
                body=empty_body,
                body_required=False,
                admin=True,
            )
        },
        "/v1/admin/segments/retrain": {
            "post": _operation(
                "triggerRetraining",
                "Queue a segment model retraining request for the batch.",
                {"202": _json_reply("The request is queued.", "RetrainJob")},
                _ADMIN_ERRORS,
                body="RetrainRequest",
                body_required=False,
                admin=True,
            )
        },
        "/v1/admin/bundles": {
            "get": _operation(
                "getBundleStatus",
                "Report the serving bundle and the versions available.",
                {"200": _json_reply("The bundle status.", "BundleStatus")},
                _ADMIN_ERRORS,
                admin=True,
            )
        },
        "/v1/admin/bundles/{version}/activate": {
            "post": _operation(
                "activateBundle",
                "Pin this node to one bundle version.",
                {"200": _json_reply("The serving version changed.", "BundleSwitch")},
                _ADMIN_ERRORS,
                body=empty_body,
                body_required=False,
                admin=True,
                parameters=("Version",),
            )
        },
        "/v1/admin/bundles/rollback": {
            "post": _operation(
                "rollbackBundle",
                "Pin this node to the version served before the current one.",
                {"200": _json_reply("The serving version changed.", "BundleSwitch")},
                _ADMIN_ERRORS,
                body=empty_body,
                body_required=False,
                admin=True,
            )
        },
        "/v1/admin/users/{user_id}": {
            "delete": _operation(
                "eraseUser",
                "Forget a visitor on this node and queue the erasure of their history.",
                {"200": _json_reply("The visitor is erased on this node.", "UserErasure")},
                _ADMIN_ERRORS,
                admin=True,
                parameters=("UserId",),
            )
        },
    }


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway."""
    schemas = _schemas()
    schemas["EmptyObject"] = _request("No parameters; the body may be absent.", {})
    responses: dict[str, Any] = {}
    for name, description in _ERRORS.values():
        responses[name] = {
            "description": description,
            "headers": _request_id_header(),
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    responses["RateLimited"]["headers"]["Retry-After"] = {
        "description": "Seconds after which the client has a request token again.",
        "schema": {"type": "integer", "minimum": 1},
    }
    responses["Unauthenticated"]["headers"]["WWW-Authenticate"] = {
        "description": "The Bearer challenge.",
        "schema": {"type": "string"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AURA decision API",
            "version": "1.0.0",
            "description": (
                "Personalized ranking, feedback, segments, search and SDK event ingestion, served by the AURA "
                "gateway in front of the gRPC decision server (aura.v1). Every response carries X-Request-ID. "
                "Browsers from the origins in AURA_CORS_ORIGINS may call the API (preflight via OPTIONS)."
            ),
        },
        "tags": [
            {"name": "api", "description": "The public decision API."},
            {"name": "admin", "description": "Operator actions; need Authorization: Bearer <AURA_ADMIN_TOKEN>."},
            {"name": "ops", "description": "Metrics and this document."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "responses": responses,
            "parameters": {
                "UserId": {
                    "name": "user_id",
                    "in": "path",
                    "required": True,
                    "description": "The visitor's anonymous id.",
                    "schema": {"type": "string", **_id_rules()},
                },
                "Version": {
                    "name": "version",
                    "in": "path",
                    "required": True,
                    "description": (
                        "A bundle version: 1-128 letters, digits, '.', '_' or '-', the first a letter or digit."
                    ),
                    "schema": {"type": "string", "pattern": _VERSION_PATTERN, "maxLength": MAX_ID_LENGTH},
                },
            },
            "headers": {
                "RequestId": {
                    "description": "The rank request_id on /v1/rank, else the caller's X-Request-ID or a new id.",
                    "schema": {"type": "string"},
                }
            },
            "securitySchemes": {"adminBearer": {"type": "http", "scheme": "bearer"}},
        },
    }
