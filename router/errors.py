"""Errors in OpenAI's shape: `{"error": {"message", "type", "code"}}` with the matching status."""

from __future__ import annotations

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """An error the client should see as-is."""

    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "code": self.code}})

    def response(self, headers: dict[str, str] | None = None) -> Response:
        return Response(self.body(), status_code=self.status, media_type="application/json", headers=headers)


def unauthorized(message: str = "Missing or invalid API key.") -> ApiError:
    return ApiError(401, message, "authentication_error", "invalid_api_key")


def forbidden(message: str) -> ApiError:
    return ApiError(403, message, "permission_error", "model_not_permitted")


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or no active backend serves it.",
        "invalid_request_error",
        "model_not_found",
    )


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code)


def too_large(limit_mb: float) -> ApiError:
    return ApiError(413, f"Request body is larger than {limit_mb:g} MB.", "invalid_request_error", "request_too_large")


def no_healthy_backend(model: str) -> ApiError:
    return ApiError(
        503, f"No healthy backend is available for model '{model}'.", "service_unavailable", "no_healthy_backend"
    )


def upstream_failed(message: str) -> ApiError:
    return ApiError(502, message, "upstream_error", "bad_gateway")


def upstream_timeout(message: str = "The upstream did not answer in time.") -> ApiError:
    return ApiError(504, message, "upstream_error", "upstream_timeout")


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
