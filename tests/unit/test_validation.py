"""The compiled RankRequest parser: proto3 wire semantics, every validation rule, and hostile bytes."""

import contextlib
import math
import random
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from aura.errors import InvalidRequest, NotFound
from aura.server.decision import RankQuery
from aura.server.validation import check_id, feedback_reward, parse_timestamp, rank_query
from aura.v1 import common_pb2
from aura.v1 import decision_service_pb2 as pb

SURFACES = {"home.hero": SimpleNamespace(id="home.hero", max_items=5), "blog.sidebar": SimpleNamespace(max_items=3)}


def request(**fields) -> pb.RankRequest:
    user = fields.pop("user", {})
    message = pb.RankRequest(surface_id=fields.pop("surface_id", "home.hero"), **fields)
    message.user_ctx.CopyFrom(common_pb2.UserContext(**user))
    return message


def parse(message: pb.RankRequest | bytes, hour: int = 10) -> RankQuery:
    data = message if isinstance(message, bytes) else message.SerializeToString()
    return rank_query(data, SURFACES, hour)


def test_a_full_request_becomes_a_normalized_query() -> None:
    query = parse(
        request(
            limit=3,
            candidates=["c1", "c2"],
            context={"campaign": "spring", "time_of_day": "Evening", "plan": "pro"},
            explain=True,
            user={
                "anon_id": "u-1",
                "session_id": "s.9",
                "device": "Mobile",
                "referrer": "https://www.Google.com/search?q=x",
                "page_type": "Article",
                "consent": ["personalization", "analytics"],
                "geo": common_pb2.Geo(country="de", region="BE"),
            },
        )
    )
    assert query == RankQuery(
        surface_id="home.hero",
        limit=3,
        anon_id="u-1",
        device="mobile",
        referrer_class="search",
        page_type="article",
        country="DE",
        time_of_day="evening",
        campaign="spring",
        context={"campaign": "spring", "time_of_day": "Evening", "plan": "pro"},
        consent=frozenset({"personalization", "analytics"}),
        candidates=("c1", "c2"),
        explain=True,
        session_id="s.9",
        referrer_host="www.google.com",
        region="BE",
    )
    assert type(query) is RankQuery


def test_defaults_come_from_the_surface_and_the_clock() -> None:
    query = parse(request(surface_id="blog.sidebar"), hour=23)
    assert (query.limit, query.time_of_day, query.referrer_class, query.campaign) == (3, "night", "direct", "")
    assert query.consent == frozenset() and query.candidates == () and query.context == {}
    assert rank_query(request().SerializeToString(), SURFACES).time_of_day in {
        "morning",
        "afternoon",
        "evening",
        "night",
    }


def test_proto3_merge_rules_hold() -> None:
    first = request(limit=2, user={"anon_id": "a", "consent": ["x"], "geo": common_pb2.Geo(country="US")})
    second = pb.RankRequest(limit=4, context={"k": "v2"})
    second.user_ctx.CopyFrom(common_pb2.UserContext(device="tablet", consent=["y"], geo=common_pb2.Geo(region="CA")))
    data = first.SerializeToString() + second.SerializeToString()
    expected = pb.RankRequest.FromString(data)
    query = parse(data)
    assert query.limit == expected.limit == 4
    assert (query.anon_id, query.device) == ("a", "tablet")
    assert query.consent == frozenset(expected.user_ctx.consent) == {"x", "y"}
    assert (query.country, query.region) == ("US", "CA")


def test_unknown_fields_are_skipped() -> None:
    unknown = b"\x78\x05" + b"\x81\x01" + b"12345678" + b"\x85\x01" + b"1234" + b"\x8a\x01\x02hi"
    assert parse(request().SerializeToString() + unknown).surface_id == "home.hero"


@pytest.mark.parametrize(
    ("message", "error", "text"),
    [
        (request(surface_id=""), InvalidRequest, "surface_id is required."),
        (request(surface_id="nope"), NotFound, "unknown surface 'nope'; configured surfaces: blog.sidebar, home.hero."),
        (request(limit=6), InvalidRequest, "limit must be between 1 and 5 for surface home.hero, got 6."),
        (request(user={"anon_id": "a b"}), InvalidRequest, "user_ctx.anon_id must be 1-128 characters"),
        (request(user={"anon_id": "a" * 129}), InvalidRequest, "user_ctx.anon_id must be 1-128 characters"),
        (request(user={"anon_id": "abc\n"}), InvalidRequest, "user_ctx.anon_id must be"),
        (request(user={"session_id": "s;1"}), InvalidRequest, "user_ctx.session_id must be"),
        (
            request(user={"device": "Watch"}),
            InvalidRequest,
            "user_ctx.device must be one of mobile, desktop, tablet, got 'Watch'.",
        ),
        (
            request(user={"geo": common_pb2.Geo(country="USA")}),
            InvalidRequest,
            "user_ctx.geo.country must be an ISO 3166-1 alpha-2 code, got 'USA'.",
        ),
        (request(user={"device": "DES\u212aTOP"}), InvalidRequest, "user_ctx.device must be one of"),  # Kelvin sign
        (request(user={"geo": common_pb2.Geo(country="1A")}), InvalidRequest, "ISO 3166-1 alpha-2"),
        (request(user={"referrer": "é" * 2049}), InvalidRequest, "user_ctx.referrer must be at most 2048 characters."),
        (request(user={"page_type": "p" * 65}), InvalidRequest, "user_ctx.page_type must be at most 64 characters."),
        (
            request(user={"geo": common_pb2.Geo(country="US", region="r" * 65)}),
            InvalidRequest,
            "user_ctx.geo.region must be at most 64 characters.",
        ),
        (request(user={"consent": ["c"] * 33}), InvalidRequest, "user_ctx.consent must list at most 32 scopes"),
        (request(user={"consent": ["c" * 65]}), InvalidRequest, "user_ctx.consent must list at most 32 scopes"),
        (request(candidates=["c"] * 1001), InvalidRequest, "candidates must list at most 1000 content ids."),
        (request(candidates=["ok", ""]), InvalidRequest, "candidates[] must be 1-128 characters"),
        (request(context={f"k{i}": "v" for i in range(33)}), InvalidRequest, "context must have at most 32 entries."),
        (request(context={"": "v"}), InvalidRequest, "context keys must be 1-64"),
        (request(context={"k": "v" * 257}), InvalidRequest, "values at most 256 characters"),
        (
            request(context={"time_of_day": "Dusk"}),
            InvalidRequest,
            "context.time_of_day must be one of morning, afternoon, evening, night, got 'dusk'.",
        ),
    ],
)
def test_each_rule_refuses_with_its_message(message: pb.RankRequest, error: type, text: str) -> None:
    with pytest.raises(error) as caught:
        parse(message)
    assert text in str(caught.value)


def test_multibyte_text_is_measured_in_characters() -> None:
    query = parse(request(user={"referrer": "é" * 2048, "page_type": "ü" * 64, "geo": common_pb2.Geo(region="ö" * 64)}))
    assert (query.page_type, query.region) == ("ü" * 64, "ö" * 64)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"\x0a\x05home", "malformed"),  # a length past the end
        (b"\x0a", "malformed"),
        (b"\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "malformed"),  # a varint of 11 bytes
        (b"\x0b", "malformed"),  # a group
        (b"\x00\x01", "malformed"),  # field number 0
        (b"\x12\x03\x0a\x05a", "malformed"),  # a truncated user_ctx
        (b"\x0a\x02\xc3\x28", "not valid UTF-8"),
        (b"\x0a\x09home.hero\x12\x04\x32\x02\xff\xfe", "not valid UTF-8"),  # a consent scope
        (b"\x0a\x09home.hero\x2a\x04\x0a\x02\xff\xfe", "not valid UTF-8"),  # a context key
    ],
)
def test_bytes_that_are_not_a_rank_request_are_invalid(data: bytes, text: str) -> None:
    with pytest.raises(InvalidRequest, match=text):
        parse(data)


def test_random_and_mutated_bytes_never_crash() -> None:
    rng = random.Random(7)
    valid = request(user={"anon_id": "u1", "consent": ["personalization"]}, context={"a": "b"}).SerializeToString()
    for _ in range(5000):
        if rng.random() < 0.5:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(64)))
        else:
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.getrandbits(8)
            data = bytes(data)
        with contextlib.suppress(InvalidRequest, NotFound):
            assert type(parse(data)) is RankQuery


def test_a_query_parses_like_the_generated_classes_do() -> None:
    message = request(limit=2, user={"anon_id": "u1", "consent": ["personalization"]}, context={"a": "b"})
    query = parse(message)
    assert (query.surface_id, query.limit, query.anon_id, dict(query.context)) == (
        message.surface_id,
        message.limit,
        message.user_ctx.anon_id,
        dict(message.context),
    )


@pytest.mark.parametrize("value", ["a b", "abc\n", "a" * 129, "é"])
def test_ids_checked_in_python_follow_the_same_rule(value: str) -> None:
    with pytest.raises(InvalidRequest, match="must be 1-128 characters"):
        check_id("item_id", value)
    with pytest.raises(InvalidRequest, match="must be 1-128 characters"):
        parse(request(user={"anon_id": value}))


@pytest.mark.parametrize(
    ("referrer", "host", "kind"),
    [
        ("https://[x.com/a", "", "direct"),
        ("http://[::1", "", "direct"),
        ("https://Exa mple.com/", "exa mple.com", "other"),
    ],
)
def test_a_referrer_that_is_not_a_url_is_no_error(referrer: str, host: str, kind: str) -> None:
    query = parse(request(user={"referrer": referrer}))
    assert (query.referrer_host, query.referrer_class) == (host, kind)


def feedback(timestamp: str = "", dwell_time: float = 0.0) -> pb.FeedbackRequest:
    return pb.FeedbackRequest(
        request_id="req_1",
        item_id="c1",
        reward=pb.Reward(type=pb.REWARD_TYPE_CLICK, value=1.0, timestamp=timestamp),
        context=pb.FeedbackContext(dwell_time=dwell_time),
    )


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (feedback(dwell_time=math.nan), "context.dwell_time must be a finite number >= 0"),
        (feedback(dwell_time=math.inf), "context.dwell_time must be a finite number >= 0"),
        (feedback(dwell_time=-1.0), "context.dwell_time must be a finite number >= 0"),
        (feedback("9999-12-31T23:59:59-10:00"), "within years 1-9999 in UTC"),
        (feedback("0001-01-01T00:00:00+10:00"), "within years 1-9999 in UTC"),
        (feedback("yesterday"), "must be an RFC 3339 timestamp"),
    ],
)
def test_feedback_outside_the_storable_range_is_refused(message: pb.FeedbackRequest, text: str) -> None:
    with pytest.raises(InvalidRequest, match=text):
        feedback_reward(message)


def test_feedback_timestamps_are_read_into_utc() -> None:
    assert feedback_reward(feedback("2026-11-27T23:30:00-10:00", dwell_time=4.5)) == ("click", 1.0)
    assert parse_timestamp("ts", "2026-11-27T23:30:00-10:00") == datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
    assert parse_timestamp("ts", "2026-11-27T23:30:00") == datetime(2026, 11, 27, 23, 30, tzinfo=UTC)
