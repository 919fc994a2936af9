"""One error hierarchy for both transports: each error knows its gRPC code and its HTTP status."""

from __future__ import annotations

import grpc


class AuraError(Exception):
    """Base of every error AURA reports to a caller; the message is shown to the caller as is."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class InvalidRequest(AuraError):
    """The request is malformed or a field is out of range."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class ConsentRequired(AuraError):
    """The visitor has not granted the consent the operation needs."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class NotFound(AuraError):
    """A named thing (surface, user, bundle version) does not exist."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class PayloadTooLarge(AuraError):
    """The request body exceeds the configured size limit."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class RateLimited(AuraError):
    """The caller exceeded its request rate."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unauthenticated(AuraError):
    """The caller did not present valid credentials."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class NotReady(AuraError):
    """The node cannot serve yet, e.g. no bundle is loaded."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class BundleError(AuraError):
    """A bundle failed verification or loading; the serving bundle stays in place."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409


class ConfigError(ValueError):
    """The configuration is invalid; raised at start-up with a message naming the key."""


GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status_for(code: grpc.StatusCode) -> int:
    """Return the HTTP status the gateway answers for a gRPC status code (500 when unmapped)."""
    return GRPC_TO_HTTP.get(code, 500)
