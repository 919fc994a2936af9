"""The OpenAPI document is valid, lists exactly the app's routes, and its request schemas accept exactly what
the gateway and the decision server accept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from aura.bundle.store import check_version
from aura.config import Settings, load_surfaces
from aura.edge.gateway import app as gateway_app
from aura.edge.gateway import convert, create_app
from aura.edge.gateway.openapi import build_openapi
from aura.edge.gateway.responses import ERROR_CODES
from aura.errors import InvalidRequest
from aura.server import validation
from tests.conftest import REPO
from tests.unit.test_gateway_convert import EVENT, SEED_FEEDBACK, SEED_RANK_REQUEST, SEED_SEARCH, with_

DOC = build_openapi()
SCHEMAS = DOC["components"]["schemas"]
PARAMETERS = DOC["components"]["parameters"]
SURFACES = load_surfaces(REPO / "config" / "surfaces.yaml")
REQUEST_FIELDS = {
    "RankRequest": convert.RANK_FIELDS,
    "UserContext": convert.USER_CTX_FIELDS,
    "Geo": convert.GEO_FIELDS,
    "FeedbackRequest": convert.FEEDBACK_FIELDS,
    "Reward": convert.REWARD_FIELDS,
    "FeedbackContext": convert.FEEDBACK_CONTEXT_FIELDS,
    "SearchRequest": convert.SEARCH_FIELDS,
    "SearchFilters": convert.SEARCH_FILTER_FIELDS,
    "RetrainRequest": convert.RETRAIN_FIELDS,
    "EventsRequest": convert.EVENTS_FIELDS,
    "Event": convert.EVENT_FIELDS,
    "EmptyObject": frozenset(),
}


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A JSON Schema validator that resolves refs within the document and asserts `format`."""
    return jsonschema.Draft202012Validator(
        {**schema, "components": DOC["components"]}, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def validator_for(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema."""
    return validator({"$ref": f"#/components/schemas/{name}"})


def accepted(check: Callable[[], object]) -> bool:
    """Whether `check` passes, False when it raises InvalidRequest."""
    try:
        check()
    except InvalidRequest:
        return False
    return True


def test_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0"
    validate(DOC)
    for name in SCHEMAS:
        jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])


def test_document_lists_exactly_the_app_routes() -> None:
    app = create_app(Settings())
    routes = {
        (r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method not in ("OPTIONS", "HEAD")
    }
    documented = {(method, path) for path, item in DOC["paths"].items() for method in item}
    assert documented == routes


@pytest.mark.parametrize(("schema", "fields"), REQUEST_FIELDS.items())
def test_request_schemas_accept_exactly_the_validated_fields(schema: str, fields: frozenset[str]) -> None:
    assert set(SCHEMAS[schema]["properties"]) == fields
    assert SCHEMAS[schema]["additionalProperties"] is False


def test_error_codes_are_documented() -> None:
    assert set(ERROR_CODES.values()) <= set(SCHEMAS["Error"]["properties"]["error"]["properties"]["code"]["enum"])


def test_operations_with_a_body_document_the_body_timeout() -> None:
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            assert ("408" in operation["responses"]) is ("requestBody" in operation), (method, path)
    description = DOC["components"]["responses"]["RequestTimeout"]["description"]
    assert f"within {gateway_app.BODY_READ_TIMEOUT:g} s" in description


def test_date_times_are_checked() -> None:
    assert "date-time" in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers
    assert not validator_for("Reward").is_valid({"type": "click", "value": 1, "timestamp": "yesterday"})


@pytest.mark.parametrize("name", REQUEST_FIELDS)
def test_request_schemas_take_null_for_exactly_the_optional_fields(name: str) -> None:
    schema = SCHEMAS[name]
    for field, field_schema in schema["properties"].items():
        assert validator(field_schema).is_valid(None) is (field not in schema.get("required", ())), field


def test_optional_bodies_may_be_null() -> None:
    for item in DOC["paths"].values():
        for operation in item.values():
            if "requestBody" in operation:
                body = operation["requestBody"]
                schema = body["content"]["application/json"]["schema"]
                assert validator(schema).is_valid(None) is not body["required"]


def check_rank(body: Any) -> None:
    validation.rank_query(convert.rank_request_from_json(body).SerializeToString(), SURFACES)


def check_feedback(body: Any) -> None:
    validation.feedback_reward(convert.feedback_request_from_json(body))


def check_search(body: Any) -> None:
    validation.search_limit(convert.search_request_from_json(body))


def check_events(body: Any) -> None:
    convert.events_from_json(body, received_at_ms=0, scrub=False)


# What the service does with a body of each schema: the gateway's conversion, then the decision server's rules.
SERVICE: dict[str, Callable[[Any], object]] = {
    "RankRequest": check_rank,
    "FeedbackRequest": check_feedback,
    "SearchRequest": check_search,
    "EventsRequest": check_events,
    "RetrainRequest": convert.retrain_request_from_json,
}


def changes(schema: str, seed: dict[str, Any], table: list[tuple[str, Any, bool]]) -> list[tuple[str, Any, bool]]:
    """(schema, body, accepted) rows: `seed` with each row's dotted path set to its value."""
    return [(schema, with_(seed, path, value), valid) for path, value, valid in table]


AGREEMENT = [
    ("RankRequest", SEED_RANK_REQUEST, True),
    ("RankRequest", {"surface_id": "homepage.hero", "user_ctx": {"anon_id": "a"}}, True),
    *changes(
        "RankRequest",
        SEED_RANK_REQUEST,
        [
            ("surface_id", None, False),
            ("user_ctx", None, False),
            ("user_ctx.anon_id", None, False),
            ("user_ctx.anon_id", "", False),
            ("user_ctx.anon_id", "a" * 128, True),
            ("user_ctx.anon_id", "a" * 129, False),
            ("user_ctx.anon_id", "Az09._:@/+=-", True),
            ("user_ctx.anon_id", "anon 1", False),
            ("user_ctx.anon_id", "anön", False),
            ("user_ctx.session_id", None, True),
            ("user_ctx.session_id", "", True),
            ("user_ctx.session_id", "s" * 128, True),
            ("user_ctx.session_id", "s" * 129, False),
            ("user_ctx.session_id", "s#1", False),
            ("user_ctx.device", None, True),
            ("user_ctx.device", "", True),
            ("user_ctx.device", "TaBlEt", True),
            ("user_ctx.device", "DES\N{KELVIN SIGN}TOP", False),
            ("user_ctx.device", "phone", False),
            ("user_ctx.device", "mobile ", False),
            ("user_ctx.referrer", None, True),
            ("user_ctx.referrer", "r" * 2048, True),
            ("user_ctx.referrer", "r" * 2049, False),
            ("user_ctx.page_type", None, True),
            ("user_ctx.page_type", "p" * 64, True),
            ("user_ctx.page_type", "p" * 65, False),
            ("user_ctx.consent", None, True),
            ("user_ctx.consent", ["c"] * 32, True),
            ("user_ctx.consent", ["c"] * 33, False),
            ("user_ctx.consent", ["c" * 64], True),
            ("user_ctx.consent", ["c" * 65], False),
            ("user_ctx.consent", [None], False),
            ("user_ctx.geo", None, True),
            ("user_ctx.geo.country", None, True),
            ("user_ctx.geo.country", "", True),
            ("user_ctx.geo.country", "de", True),
            ("user_ctx.geo.country", "USA", False),
            ("user_ctx.geo.country", "U1", False),
            ("user_ctx.geo.country", "ÜS", False),
            ("user_ctx.geo.region", None, True),
            ("user_ctx.geo.region", "r" * 64, True),
            ("user_ctx.geo.region", "r" * 65, False),
            ("candidates", None, True),
            ("candidates", ["c"] * 1000, True),
            ("candidates", ["c"] * 1001, False),
            ("candidates", ["c" * 128], True),
            ("candidates", ["c" * 129], False),
            ("candidates", [""], False),
            ("candidates", ["c 1"], False),
            ("candidates", [None], False),
            ("limit", None, True),
            ("limit", 0, False),
            ("limit", 5, True),
            ("context", None, True),
            ("context", {f"key{i}": "v" for i in range(32)}, True),
            ("context", {f"key{i}": "v" for i in range(33)}, False),
            ("context", {"": "v"}, False),
            ("context", {"k" * 64: "v"}, True),
            ("context", {"k" * 65: "v"}, False),
            ("context", {"campaign": "v" * 256}, True),
            ("context", {"campaign": "v" * 257}, False),
            ("context", {"campaign": None}, False),
            ("context.time_of_day", "Evening", True),
            ("context.time_of_day", "NIGHT", True),
            ("context.time_of_day", "", True),
            ("context.time_of_day", "noon", False),
            ("context.time_of_day", None, False),
            ("explain", None, True),
            ("explain", "yes", False),
        ],
    ),
    ("FeedbackRequest", SEED_FEEDBACK, True),
    *changes(
        "FeedbackRequest",
        SEED_FEEDBACK,
        [
            ("request_id", None, False),
            ("request_id", "", False),
            ("item_id", None, False),
            ("item_id", "c" * 128, True),
            ("item_id", "c" * 129, False),
            ("item_id", "c 1", False),
            ("reward", None, False),
            ("reward.type", None, False),
            ("reward.type", "like", False),
            ("reward.value", None, False),
            ("reward.value", 1.5, False),
            ("reward.timestamp", None, True),
            ("reward.timestamp", "", True),
            ("reward.timestamp", "2025-10-09T14:30:00.123456789+05:30", True),
            ("reward.timestamp", "2024-02-29T23:59:59-00:00", True),
            # rfc3339-validator takes only an upper-case T and Z, which RFC 3339 and the service do not require;
            # such timestamps are tested in test_gateway_convert.
            ("reward.timestamp", "20251009T143000Z", False),
            ("reward.timestamp", "2025-10-09 14:30:00Z", False),
            ("reward.timestamp", "2025-10-09T14:30:00", False),
            ("reward.timestamp", "2025-10-09T14:30Z", False),
            ("reward.timestamp", "2025-10-09", False),
            ("reward.timestamp", "2025-02-29T14:30:00Z", False),
            ("reward.timestamp", "2025-10-09T24:00:00Z", False),
            ("reward.timestamp", "2025-10-09T23:59:60Z", False),
            ("context", None, True),
            ("context.position", None, True),
            ("context.position", 1000, True),
            ("context.position", 1001, False),
            ("context.dwell_time", None, True),
            ("context.scroll_depth", None, True),
            ("context.scroll_depth", 1.1, False),
        ],
    ),
    ("SearchRequest", SEED_SEARCH, True),
    *changes(
        "SearchRequest",
        SEED_SEARCH,
        [
            ("query", None, False),
            ("query", "", False),
            ("query", " \t\n", False),
            ("query", "\N{IDEOGRAPHIC SPACE}", False),
            ("query", " q ", True),
            ("query", "q" * 1000, True),
            ("query", "q" * 1001, False),
            ("filters", None, True),
            ("filters.topics", None, True),
            ("filters.topics", ["t"] * 100, True),
            ("filters.topics", ["t"] * 101, False),
            ("filters.topics", [None], False),
            ("limit", None, True),
            ("limit", 100, True),
            ("limit", 101, False),
        ],
    ),
    *[
        ("EventsRequest", {"events": [{**EVENT, field: value}]}, valid)
        for field, value, valid in [
            ("surface_id", None, True),
            ("content_id", None, True),
            ("request_id", None, True),
            ("url", None, True),
            ("referrer", None, True),
            ("props", None, True),
            ("props", {"x": None}, True),
            ("event_id", None, False),
            ("type", "hover", False),
            ("ts", None, False),
            ("ts", 10**14 - 1, True),
            ("ts", 10**14, False),
            ("ts", "2025-10-09T14:30:00.250Z", True),
            ("ts", "20251009T143000Z", False),
            ("ts", "2025-10-09 14:30:00Z", False),
            ("ts", "", False),
        ]
    ],
    ("EventsRequest", {"events": None}, False),
    ("RetrainRequest", {}, True),
    ("RetrainRequest", {"reason": None}, True),
    ("RetrainRequest", {"reason": 1}, False),
]


@pytest.mark.parametrize(("schema", "body", "valid"), AGREEMENT)
def test_request_schemas_agree_with_validation(schema: str, body: dict[str, Any], valid: bool) -> None:
    assert accepted(lambda: SERVICE[schema](body)) is valid
    assert validator_for(schema).is_valid(body) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("a", True), ("Az09._:@/+=-", True), ("u" * 128, True), ("u" * 129, False), ("", False), ("a b", False)],
)
def test_user_id_parameter_agrees_with_validation(value: str, valid: bool) -> None:
    assert accepted(lambda: validation.check_id("user_id", convert.path_id(value, "user_id"))) is valid
    assert validator(PARAMETERS["UserId"]["schema"]).is_valid(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("v1", True),
        ("2025-10-09.1_a", True),
        ("v" * 128, True),
        ("v" * 129, False),
        ("", False),
        (".v1", False),
        ("_v1", False),
        ("v:1", False),
        ("v/1", False),
    ],
)
def test_version_parameter_agrees_with_validation(value: str, valid: bool) -> None:
    def check() -> None:
        check_version(validation.check_id("version", convert.path_id(value, "version")))

    assert accepted(check) is valid
    assert validator(PARAMETERS["Version"]["schema"]).is_valid(value) is valid
