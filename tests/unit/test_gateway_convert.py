"""JSON <-> protobuf conversion of the gateway: exact messages, exact bodies, and the validation table."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aura.edge.gateway import convert
from aura.errors import InvalidRequest
from aura.server import validation
from aura.v1 import admin_service_pb2 as admin_pb
from aura.v1 import common_pb2 as common_pb
from aura.v1 import decision_service_pb2 as decision_pb

SEED_RANK_REQUEST: dict[str, Any] = {
    "surface_id": "homepage.hero",
    "user_ctx": {
        "anon_id": "anon_abc123",
        "session_id": "sess_xyz789",
        "device": "mobile",
        "referrer": "https://google.com",
        "page_type": "index",
        "consent": ["analytics", "personalization"],
        "geo": {"country": "US", "region": "CA"},
    },
    "candidates": ["c123", "c456", "c789"],
    "limit": 5,
    "context": {"campaign": "summer_sale", "time_of_day": "evening"},
}
SEED_FEEDBACK: dict[str, Any] = {
    "request_id": "req_a1b2c3",
    "item_id": "c123",
    "reward": {"type": "click", "value": 1.0, "timestamp": "2025-10-09T14:30:00Z"},
    "context": {"position": 1, "dwell_time": 45.2, "scroll_depth": 0.8},
}
SEED_SEARCH: dict[str, Any] = {
    "query": "how to optimize conversion rates",
    "filters": {"topics": ["marketing", "analytics"], "personas": ["intermediate"], "jurisdictions": ["US", "UK"]},
    "limit": 10,
}


def with_(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with the dotted `path` set to `value` (or removed when value is ...)."""
    body = orjson.loads(orjson.dumps(base))
    *parents, last = path.split(".")
    target = body
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return body


def test_rank_request_from_seed_example() -> None:
    assert convert.rank_request_from_json(SEED_RANK_REQUEST) == decision_pb.RankRequest(
        surface_id="homepage.hero",
        user_ctx=common_pb.UserContext(
            anon_id="anon_abc123",
            session_id="sess_xyz789",
            device="mobile",
            referrer="https://google.com",
            page_type="index",
            consent=["analytics", "personalization"],
            geo=common_pb.Geo(country="US", region="CA"),
        ),
        candidates=["c123", "c456", "c789"],
        limit=5,
        context={"campaign": "summer_sale", "time_of_day": "evening"},
    )


def test_rank_request_minimal_uses_defaults_and_null_means_absent() -> None:
    body = {"surface_id": "blog.index", "user_ctx": {"anon_id": "a1", "geo": None}, "limit": None, "explain": True}
    assert convert.rank_request_from_json(body) == decision_pb.RankRequest(
        surface_id="blog.index", user_ctx=common_pb.UserContext(anon_id="a1"), explain=True
    )


def test_feedback_request_from_seed_example() -> None:
    assert convert.feedback_request_from_json(SEED_FEEDBACK) == decision_pb.FeedbackRequest(
        request_id="req_a1b2c3",
        item_id="c123",
        reward=decision_pb.Reward(type=decision_pb.REWARD_TYPE_CLICK, value=1.0, timestamp="2025-10-09T14:30:00Z"),
        context=decision_pb.FeedbackContext(position=1, dwell_time=45.2, scroll_depth=0.8),
    )


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("click", decision_pb.REWARD_TYPE_CLICK),
        ("conversion", decision_pb.REWARD_TYPE_CONVERSION),
        ("engagement", decision_pb.REWARD_TYPE_ENGAGEMENT),
        ("dismiss", decision_pb.REWARD_TYPE_DISMISS),
    ],
)
def test_reward_types_map_to_the_enum(name: str, number: int) -> None:
    message = convert.feedback_request_from_json(with_(SEED_FEEDBACK, "reward.type", name))
    assert message.reward.type == number


def test_search_request_from_seed_example() -> None:
    assert convert.search_request_from_json(SEED_SEARCH) == decision_pb.SearchRequest(
        query="how to optimize conversion rates",
        filters=decision_pb.SearchFilters(
            topics=["marketing", "analytics"], personas=["intermediate"], jurisdictions=["US", "UK"]
        ),
        limit=10,
    )


INVALID = [
    # (converter, body, message fragment)
    ("rank", [], r"^The request body must be a JSON object, got array\.$"),
    ("rank", "text", r"^The request body must be a JSON object, got string\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "surface_id", ...), r"^surface_id is required\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "surface_id", ""), r"^surface_id must not be empty\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "surface_id", 7), r"^surface_id must be a string, got integer\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "user_ctx", ...), r"^user_ctx is required\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "user_ctx", "anon"), r"^user_ctx must be a JSON object, got string\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "user_ctx.anon_id", ...), r"^user_ctx\.anon_id is required\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "limit", "five"), r"^limit must be an integer, got string\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "limit", 2.5), r"^limit must be an integer, got number\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "limit", True), r"^limit must be an integer, got boolean\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "limit", 0), r"^limit must be between 1 and 100, got 0\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "limit", 101), r"^limit must be between 1 and 100, got 101\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "user_ctx.consent", "analytics"), r"consent must be a list of strings, got str"),
    ("rank", with_(SEED_RANK_REQUEST, "user_ctx.consent", ["a", 1]), r"^user_ctx\.consent\[1\] must be a string"),
    ("rank", with_(SEED_RANK_REQUEST, "user_ctx.geo", "US"), r"^user_ctx\.geo must be a JSON object, got string"),
    ("rank", with_(SEED_RANK_REQUEST, "user_ctx.geo.city", "SF"), r"^user_ctx\.geo\.city is not a known field"),
    ("rank", with_(SEED_RANK_REQUEST, "user_ctx.email", "x@y.z"), r"^user_ctx\.email is not a known field"),
    ("rank", with_(SEED_RANK_REQUEST, "surface", "x"), r"^surface is not a known field \(known fields: candidates"),
    ("rank", with_(SEED_RANK_REQUEST, "candidates", "c1"), r"^candidates must be a list of strings, got string"),
    ("rank", with_(SEED_RANK_REQUEST, "candidates", ["c"] * 1001), r"^candidates must have at most 1000 entries"),
    ("rank", with_(SEED_RANK_REQUEST, "context", ["a"]), r"^context must be a JSON object of strings, got array"),
    ("rank", with_(SEED_RANK_REQUEST, "context.hour", 20), r"^context\.hour must be a string, got integer\.$"),
    ("rank", with_(SEED_RANK_REQUEST, "explain", "yes"), r"^explain must be true or false, got string\.$"),
    ("feedback", with_(SEED_FEEDBACK, "request_id", ...), r"^request_id is required\.$"),
    ("feedback", with_(SEED_FEEDBACK, "item_id", 5), r"^item_id must be a string, got integer\.$"),
    ("feedback", with_(SEED_FEEDBACK, "reward", ...), r"^reward is required\.$"),
    ("feedback", with_(SEED_FEEDBACK, "reward.type", "like"), r"^reward\.type must be one of click, conversion, enga"),
    ("feedback", with_(SEED_FEEDBACK, "reward.value", ...), r"^reward\.value is required\.$"),
    ("feedback", with_(SEED_FEEDBACK, "reward.value", "1"), r"^reward\.value must be a number, got string\.$"),
    ("feedback", with_(SEED_FEEDBACK, "reward.value", 2), r"^reward\.value must be between 0 and 1, got 2\.$"),
    ("feedback", with_(SEED_FEEDBACK, "reward.timestamp", "yesterday"), r"^reward\.timestamp must be an RFC 3339"),
    ("feedback", with_(SEED_FEEDBACK, "reward.timestamp", "2025-10-09"), r"^reward\.timestamp must be an RFC 3339"),
    ("feedback", with_(SEED_FEEDBACK, "context.position", 0), r"^context\.position must be between 1 and 1000"),
    ("feedback", with_(SEED_FEEDBACK, "context.scroll_depth", 1.5), r"^context\.scroll_depth must be between 0 and 1"),
    ("feedback", with_(SEED_FEEDBACK, "context.mood", "ok"), r"^context\.mood is not a known field"),
    ("search", with_(SEED_SEARCH, "query", ...), r"^query is required\.$"),
    ("search", with_(SEED_SEARCH, "filters.topics", "x"), r"^filters\.topics must be a list of strings, got string"),
    ("search", with_(SEED_SEARCH, "filters.tags", []), r"^filters\.tags is not a known field"),
    ("search", with_(SEED_SEARCH, "limit", -1), r"^limit must be between 1 and 100, got -1\.$"),
    ("retrain", {"reason": 3}, r"^reason must be a string, got integer\.$"),
    ("retrain", {"why": "x"}, r"^why is not a known field \(known fields: reason\)\.$"),
    ("empty", {"force": True}, r"^force is not a known field \(known fields: none\)\.$"),
    ("empty", [], r"^The request body must be a JSON object, got array\.$"),
]

CONVERTERS = {
    "rank": convert.rank_request_from_json,
    "feedback": convert.feedback_request_from_json,
    "search": convert.search_request_from_json,
    "retrain": convert.retrain_request_from_json,
    "empty": convert.empty_body,
}


@pytest.mark.parametrize(("converter", "body", "message"), INVALID)
def test_invalid_bodies_are_rejected_naming_the_field(converter: str, body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        CONVERTERS[converter](body)


def test_optional_admin_bodies_may_be_absent() -> None:
    assert convert.retrain_request_from_json(None) == admin_pb.TriggerRetrainingRequest()
    assert convert.retrain_request_from_json({"reason": "drift"}) == admin_pb.TriggerRetrainingRequest(reason="drift")
    convert.empty_body(None)
    convert.empty_body({})


@pytest.mark.parametrize(("value", "message"), [("", r"^user_id must be 1 to 256"), ("u" * 257, r"^user_id must")])
def test_path_ids_are_bounded(value: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        convert.path_id(value, "user_id")


RANK_REPLY = decision_pb.RankResponse(
    request_id="req_a1b2c3",
    surface="homepage.hero",
    items=[
        decision_pb.RankedItem(
            content_id="c123",
            score=0.81,
            reason="beginner+mobile+intent:learn",
            metadata=common_pb.ItemMetadata(
                title="Getting Started Guide", url="/guides/getting-started", topics=["tutorial", "basics"]
            ),
            position=1,
            propensity=0.92,
        ),
        decision_pb.RankedItem(
            content_id="c987",
            score=0.72,
            reason="case-study+finance+high-confidence",
            metadata=common_pb.ItemMetadata(title="Finance Industry Case Study", url="/case-studies/finance"),
            position=2,
            propensity=0.08,
            explored=True,
        ),
    ],
    segment=common_pb.Segment(id="seg_learn_mobile_new", confidence=0.85, intent="learn"),
    experiment=common_pb.Experiment(variant="treatment_b", holdout=False),
    policy_version="2025-10-01",
    cache_ttl=300,
    bundle_version="20260101T000000Z-aaaaaa",
    seed=2**64 - 1,
)
RANK_BODY = {
    "request_id": "req_a1b2c3",
    "surface": "homepage.hero",
    "items": [
        {
            "content_id": "c123",
            "score": 0.81,
            "reason": "beginner+mobile+intent:learn",
            "metadata": {
                "title": "Getting Started Guide",
                "url": "/guides/getting-started",
                "topics": ["tutorial", "basics"],
            },
            "position": 1,
            "propensity": 0.92,
            "explored": False,
        },
        {
            "content_id": "c987",
            "score": 0.72,
            "reason": "case-study+finance+high-confidence",
            "metadata": {"title": "Finance Industry Case Study", "url": "/case-studies/finance", "topics": []},
            "position": 2,
            "propensity": 0.08,
            "explored": True,
        },
    ],
    "segment": {"id": "seg_learn_mobile_new", "confidence": 0.85, "intent": "learn"},
    "experiment": {"variant": "treatment_b", "holdout": False},
    "policy_version": "2025-10-01",
    "cache_ttl": 300,
    "bundle_version": "20260101T000000Z-aaaaaa",
    "seed": "18446744073709551615",
}


def test_rank_response_to_json_speaks_the_seed_shape() -> None:
    body = convert.rank_response_to_json(RANK_REPLY)
    assert body == RANK_BODY


def test_rank_response_explanation_only_when_sent() -> None:
    reply = decision_pb.RankResponse()
    reply.CopyFrom(RANK_REPLY)
    reply.explanation.CopyFrom(
        decision_pb.Explanation(
            removed=[decision_pb.RemovedCandidate(content_id="c5", rule="consent")],
            scores=[
                decision_pb.ScoreExplanation(
                    content_id="c123",
                    posterior_alpha=3.0,
                    posterior_beta=7.0,
                    posterior_mean=0.3,
                    sampled_value=0.41,
                    freshness_multiplier=0.9,
                )
            ],
            segment_source="cold_start",
            exploration_rate=0.08,
        )
    )
    assert convert.rank_response_to_json(reply)["explanation"] == {
        "removed": [{"content_id": "c5", "rule": "consent"}],
        "scores": [
            {
                "content_id": "c123",
                "posterior_alpha": 3.0,
                "posterior_beta": 7.0,
                "posterior_mean": 0.3,
                "sampled_value": 0.41,
                "freshness_multiplier": 0.9,
            }
        ],
        "segment_source": "cold_start",
        "exploration_rate": 0.08,
    }
    assert "explanation" not in convert.rank_response_to_json(RANK_REPLY)


def test_segments_search_and_feedback_responses() -> None:
    segments = decision_pb.GetSegmentsResponse(
        user_id="anon_abc123",
        segments=[
            decision_pb.SegmentAssignment(
                id="seg_learn_mobile_new",
                name="Learning-focused Mobile Users (New)",
                confidence=0.85,
                features={"intent": "learn", "device_class": "mobile"},
                assigned_at="2025-10-09T14:25:00Z",
            )
        ],
    )
    assert convert.segments_response_to_json(segments) == {
        "user_id": "anon_abc123",
        "segments": [
            {
                "id": "seg_learn_mobile_new",
                "name": "Learning-focused Mobile Users (New)",
                "confidence": 0.85,
                "features": {"intent": "learn", "device_class": "mobile"},
                "assigned_at": "2025-10-09T14:25:00Z",
            }
        ],
    }
    search = decision_pb.SearchResponse(
        results=[
            decision_pb.SearchResult(
                content_id="c456",
                title="Conversion Rate Optimization Guide",
                url="/guides/cro",
                similarity=0.89,
                topics=["marketing", "analytics", "optimization"],
                freshness_score=0.95,
            )
        ]
    )
    assert convert.search_response_to_json(search) == {
        "results": [
            {
                "content_id": "c456",
                "title": "Conversion Rate Optimization Guide",
                "url": "/guides/cro",
                "similarity": 0.89,
                "topics": ["marketing", "analytics", "optimization"],
                "freshness_score": 0.95,
            }
        ]
    }
    feedback = decision_pb.FeedbackResponse(status="accepted", feedback_id="fb_xyz789")
    assert convert.feedback_response_to_json(feedback) == {"status": "accepted", "feedback_id": "fb_xyz789"}


def test_admin_responses_map_field_for_field() -> None:
    status = admin_pb.GetBundleStatusResponse(
        active_version="v2",
        loaded_at="2026-01-01T00:00:00Z",
        age_seconds=60.5,
        pinned=True,
        store_version="v2",
        bundles=[admin_pb.BundleInfo(version="v2", created_at="2026-01-01T00:00:00Z", active=True)],
        processes=[admin_pb.ProcessStatus(pid=4242, active_version="v2", loaded_at="2026-01-01T00:00:00Z")],
    )
    assert convert.admin_response_to_json(status) == {
        "active_version": "v2",
        "loaded_at": "2026-01-01T00:00:00Z",
        "age_seconds": 60.5,
        "pinned": True,
        "store_version": "v2",
        "bundles": [
            {
                "version": "v2",
                "created_at": "2026-01-01T00:00:00Z",
                "policy_version": "",
                "parent_version": "",
                "active": True,
            }
        ],
        "last_error": "",
        "processes": [{"pid": 4242, "active_version": "v2", "loaded_at": "2026-01-01T00:00:00Z", "last_error": ""}],
    }


RECEIVED_AT = 1_760_000_000_000


def test_events_are_validated_scrubbed_and_shaped_for_the_log() -> None:
    body = {
        "events": [
            {
                "event_id": "e1",
                "type": "page_view",
                "ts": "2025-10-09T14:30:00.250Z",
                "anon_id": "anon_1",
                "session_id": "sess_1",
                "url": "https://shop.example.com/cart?email=jane@example.com#x",
                "referrer": "https://user:pw@www.google.com/search?q=crm",
                "props": {"note": "call +1 415 555 0100 or mail jane@example.com", "depth": 0.5, "ok": True, "n": None},
            },
            {
                "event_id": "e2",
                "type": "click",
                "ts": 1760000000123,
                "anon_id": "anon_1",
                "session_id": "sess_1",
                "surface_id": "homepage.hero",
                "content_id": "c123",
                "request_id": "req_1",
            },
        ]
    }
    records = convert.events_from_json(body, received_at_ms=RECEIVED_AT, scrub=True)
    assert records == [
        {
            "event_id": "e1",
            "ts": 1760020200250,
            "received_at": RECEIVED_AT,
            "type": "page_view",
            "anon_id": "anon_1",
            "session_id": "sess_1",
            "surface_id": "",
            "content_id": "",
            "request_id": "",
            "url": "https://shop.example.com/cart",
            "referrer": "https://www.google.com/search",
            "props_json": '{"note":"call [phone] or mail [email]","depth":0.5,"ok":true,"n":null}',
        },
        {
            "event_id": "e2",
            "ts": 1760000000123,
            "received_at": RECEIVED_AT,
            "type": "click",
            "anon_id": "anon_1",
            "session_id": "sess_1",
            "surface_id": "homepage.hero",
            "content_id": "c123",
            "request_id": "req_1",
            "url": "",
            "referrer": "",
            "props_json": "{}",
        },
    ]


def test_events_keep_text_when_scrubbing_is_disabled() -> None:
    event = {"event_id": "e", "type": "scroll", "ts": 1, "anon_id": "a", "session_id": "s", "url": "/p?x=1"}
    [record] = convert.events_from_json({"events": [event]}, received_at_ms=RECEIVED_AT, scrub=False)
    assert record["url"] == "/p?x=1"


EVENT = {"event_id": "e1", "type": "click", "ts": 1760000000000, "anon_id": "a", "session_id": "s"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, r"^events is required\.$"),
        ({"events": {}}, r"^events must be a list, got object\.$"),
        ({"events": []}, r"^events must hold 1 to 500 events, got 0\.$"),
        ({"events": [EVENT] * 501}, r"^events must hold 1 to 500 events, got 501\.$"),
        ({"events": [EVENT], "batch": 1}, r"^batch is not a known field"),
        ({"events": [EVENT, 5]}, r"^events\[1\] must be a JSON object, got integer\.$"),
        ({"events": [{**EVENT, "type": "hover"}]}, r"^events\[0\]\.type must be one of page_view, click, dwell"),
        ({"events": [{**EVENT, "anon_id": ""}]}, r"^events\[0\]\.anon_id must not be empty\.$"),
        ({"events": [{k: v for k, v in EVENT.items() if k != "ts"}]}, r"^events\[0\]\.ts is required\.$"),
        ({"events": [{**EVENT, "ts": "soon"}]}, r"^events\[0\]\.ts must be an RFC 3339 timestamp"),
        ({"events": [{**EVENT, "ts": -1}]}, r"^events\[0\]\.ts must be epoch milliseconds, got -1\.$"),
        ({"events": [{**EVENT, "ts": 1.5}]}, r"^events\[0\]\.ts must be an RFC 3339 string or epoch milliseconds"),
        ({"events": [{**EVENT, "props": []}]}, r"^events\[0\]\.props must be a JSON object, got array\.$"),
        ({"events": [{**EVENT, "props": {"x": {}}}]}, r"^events\[0\]\.props\.x must be a string, number, boolean"),
        ({"events": [{**EVENT, "ip": "1.2.3.4"}]}, r"^events\[0\]\.ip is not a known field"),
    ],
)
def test_invalid_event_batches(body: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        convert.events_from_json(body, received_at_ms=RECEIVED_AT, scrub=True)


NOT_RFC_3339 = [
    "20251009T143000Z",
    "2025-10-09 14:30:00Z",
    "2025-10-09T14:30:00",
    "2025-10-09T14:30Z",
    "2025-10-09",
    "2025-W41-4T14:30:00Z",
    "2025-10-09T14:30:00.Z",
    "2025-02-29T14:30:00Z",
    "2025-10-09T14:30:00+00:60",
]


@pytest.mark.parametrize("timestamp", NOT_RFC_3339)
def test_timestamps_must_be_rfc_3339(timestamp: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^reward\.timestamp must be an RFC 3339 timestamp"):
        convert.feedback_request_from_json(with_(SEED_FEEDBACK, "reward.timestamp", timestamp))
    with pytest.raises(InvalidRequest, match=r"^events\[0\]\.ts must be an RFC 3339 timestamp"):
        convert.events_from_json({"events": [{**EVENT, "ts": timestamp}]}, received_at_ms=RECEIVED_AT, scrub=False)


@pytest.mark.parametrize(
    ("timestamp", "epoch_ms"),
    [
        ("2025-10-09T14:30:00Z", 1760020200000),
        ("2025-10-09t14:30:00.25z", 1760020200250),
        ("2025-10-09T16:30:00+02:00", 1760020200000),
    ],
)
def test_rfc_3339_timestamps_are_accepted_in_either_case(timestamp: str, epoch_ms: int) -> None:
    message = convert.feedback_request_from_json(with_(SEED_FEEDBACK, "reward.timestamp", timestamp))
    assert message.reward.timestamp == timestamp
    validation.feedback_reward(message)  # the decision server accepts it too
    [record] = convert.events_from_json(
        {"events": [{**EVENT, "ts": timestamp}]}, received_at_ms=RECEIVED_AT, scrub=False
    )
    assert record["ts"] == epoch_ms
