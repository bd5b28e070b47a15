"""Errors in OpenAI's shape: `{"error": {"message", "type", "code"}}` with the matching status."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
from starlette.responses import Response

from router.upstream import UpstreamError, UpstreamTimeout


class ApiError(Exception):
    """An error the client should see as-is."""

    def __init__(
        self, status: int, message: str, type_: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}  # e.g. Retry-After

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "code": self.code}})

    def response(self, headers: dict[str, str] | None = None) -> Response:
        headers = {**self.headers, **(headers or {})}
        return Response(self.body(), status_code=self.status, media_type="application/json", headers=headers)


def unauthorized(message: str = "Missing or invalid API key.") -> ApiError:
    return ApiError(401, message, "authentication_error", "invalid_api_key")


def forbidden(message: str) -> ApiError:
    return ApiError(403, message, "permission_error", "model_not_permitted")


def model_not_found(model: str, suggestions: Sequence[str] = ()) -> ApiError:
    """404 for a model nobody serves; `suggestions`: close names the caller may use (see `close_model_names`)."""
    hint = f" Models you may use with a similar name: {', '.join(suggestions)}." if suggestions else ""
    return ApiError(
        404,
        f"The model '{model}' does not exist or no active backend serves it.{hint} GET /v1/models lists them all.",
        "invalid_request_error",
        "model_not_found",
    )


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code)


def too_large(limit_mb: float) -> ApiError:
    return ApiError(413, f"Request body is larger than {limit_mb:g} MB.", "invalid_request_error", "request_too_large")


def no_healthy_backend(model: str, down: Sequence[tuple[str, float | None]] = (), now: float = 0.0) -> ApiError:
    """503 when every backend for `model` is cooling down: `down` is (name, until as a Unix time).

    The message says which backends and until when; Retry-After is the soonest of those times.
    """
    message = f"No healthy backend is available for model '{model}'."
    headers: dict[str, str] = {}
    times = [until for _, until in down if until is not None]
    if down:
        listed = ", ".join(
            f"{name} until {_iso(until)}" if until is not None else f"{name} (unhealthy)" for name, until in down[:10]
        )
        message += f" Unhealthy: {listed}."
    if times:
        wait = max(1, math.ceil(min(times) - now))
        headers["Retry-After"] = str(wait)
        message += f" Retry in {wait} s."
    return ApiError(503, message, "service_unavailable", "no_healthy_backend", headers)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def unknown_path(method: str, path: str, suggestion: str | None = None) -> ApiError:
    """404 for a path the router does not serve; `suggestion` is the /v1 path the caller probably meant."""
    hint = (
        f" Did you mean {method} {suggestion}? The OpenAI base URL of this router ends in /v1 "
        "(e.g. http://host:3000/v1)."
        if suggestion
        else ""
    )
    return ApiError(404, f"Unknown endpoint {method} {path}.{hint}", "invalid_request_error", "unknown_url")


def upstream_failed(message: str) -> ApiError:
    return ApiError(502, message, "upstream_error", "bad_gateway")


def upstream_timeout(message: str = "The upstream did not answer in time.") -> ApiError:
    return ApiError(504, message, "upstream_error", "upstream_timeout")


def upstream_error(exc: UpstreamError, unreachable: str) -> ApiError:
    """A backend that failed before its answer was complete: 504 when it timed out, else 502 `unreachable`."""
    if isinstance(exc, UpstreamTimeout):
        return upstream_timeout()
    return upstream_failed(unreachable)


def script_failed(script_name: str, message: str) -> ApiError:
    return ApiError(500, f"Script '{script_name}' failed: {message}", "script_error", "script_error")


def previous_response_not_found(response_id: str) -> ApiError:
    """As OpenAI answers a `previous_response_id` it does not know."""
    shown = response_id[:128]
    return ApiError(
        400, f"Previous response with id '{shown}' not found.", "invalid_request_error", "previous_response_not_found"
    )


def response_not_found(response_id: str) -> ApiError:
    """As OpenAI answers an unknown response id (also for a response of another user)."""
    return ApiError(404, f"Response with id '{response_id[:128]}' not found.", "invalid_request_error", None)


def internal_error() -> ApiError:
    return ApiError(
        500, "The router failed to handle this request; it has been logged.", "server_error", "internal_error"
    )


# --- errors raised outside a handler (routing, body caps) -----------------------------------

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def graphql_http_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error answered before any GraphQL operation ran, in GraphQL's shape with extensions.code."""
    code = _HTTP_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_SERVER_ERROR")
    body = orjson.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def http_error(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """The error shape of the route at `path`: GraphQL's for /graphql, OpenAI's everywhere else."""
    if path == "/graphql" or path.startswith("/graphql/"):
        return graphql_http_error(status, message, headers)
    code = _HTTP_CODES.get(status, "error").lower()
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return ApiError(status, message, type_, code).response(headers)
