"""The OpenAPI document is valid, lists exactly the app's routes, and its request schemas match validation."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from aura.config import Settings
from aura.edge.gateway import convert, create_app
from aura.edge.gateway.openapi import build_openapi
from aura.edge.gateway.responses import ERROR_CODES

DOC = build_openapi()
SCHEMAS = DOC["components"]["schemas"]


def validator_for(name: str) -> jsonschema.Draft202012Validator:
    """A JSON Schema validator for one component schema, resolving refs within the document."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": DOC["components"]})


def test_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"] == "3.1.0"
    validate(DOC)
    for name in SCHEMAS:
        jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])


def test_document_lists_exactly_the_app_routes() -> None:
    app = create_app(Settings())
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "OPTIONS"}
    documented = {(method, path) for path, item in DOC["paths"].items() for method in item}
    assert documented == routes


@pytest.mark.parametrize(
    ("schema", "fields"),
    [
        ("RankRequest", convert.RANK_FIELDS),
        ("UserContext", convert.USER_CTX_FIELDS),
        ("Geo", convert.GEO_FIELDS),
        ("FeedbackRequest", convert.FEEDBACK_FIELDS),
        ("Reward", convert.REWARD_FIELDS),
        ("FeedbackContext", convert.FEEDBACK_CONTEXT_FIELDS),
        ("SearchRequest", convert.SEARCH_FIELDS),
        ("SearchFilters", convert.SEARCH_FILTER_FIELDS),
        ("RetrainRequest", convert.RETRAIN_FIELDS),
        ("EventsRequest", convert.EVENTS_FIELDS),
        ("Event", convert.EVENT_FIELDS),
        ("EmptyObject", frozenset()),
    ],
)
def test_request_schemas_accept_exactly_the_validated_fields(schema: str, fields: frozenset[str]) -> None:
    assert set(SCHEMAS[schema]["properties"]) == fields
    assert SCHEMAS[schema]["additionalProperties"] is False


def test_error_codes_are_documented() -> None:
    assert set(ERROR_CODES.values()) <= set(SCHEMAS["Error"]["properties"]["error"]["properties"]["code"]["enum"])


@pytest.mark.parametrize(
    ("schema", "body", "valid"),
    [
        ("RankRequest", {"surface_id": "homepage.hero", "user_ctx": {"anon_id": "a"}, "limit": 5}, True),
        ("RankRequest", {"surface_id": "homepage.hero", "user_ctx": {"anon_id": "a"}, "limit": "five"}, False),
        ("RankRequest", {"surface_id": "homepage.hero", "user_ctx": {}}, False),
        ("FeedbackRequest", {"request_id": "r", "item_id": "c", "reward": {"type": "click", "value": 1}}, True),
        ("FeedbackRequest", {"request_id": "r", "item_id": "c", "reward": {"type": "like", "value": 1}}, False),
        ("Event", {"event_id": "e", "type": "click", "ts": 1, "anon_id": "a", "session_id": "s"}, True),
        (
            "Event",
            {"event_id": "e", "type": "click", "ts": "2025-10-09T14:30:00Z", "anon_id": "a", "session_id": "s"},
            True,
        ),
        ("Event", {"event_id": "e", "type": "hover", "ts": 1, "anon_id": "a", "session_id": "s"}, False),
    ],
)
def test_request_schemas_agree_with_validation(schema: str, body: dict[str, Any], valid: bool) -> None:
    assert validator_for(schema).is_valid(body) is valid
