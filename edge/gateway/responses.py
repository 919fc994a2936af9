"""JSON responses of the gateway, and its one error shape."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

ERROR_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    429: "rate_limited",
    499: "cancelled",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
    504: "deadline_exceeded",
}
"""The `error.code` of each HTTP status the gateway answers with; any other status has code "error"."""

OTHER_ERROR_CODE = "error"


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    """The gateway's one error shape: ``{"error": {"code": ..., "message": ..., "status": ...}}``."""
    code = ERROR_CODES.get(status, OTHER_ERROR_CODE)
    return json_response({"error": {"code": code, "message": message, "status": status}}, status)
