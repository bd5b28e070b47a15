"""Error shapes of the admin API: every error carries `extensions.code`.

Codes: UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, BAD_USER_INPUT, CONFLICT (the contract's), plus
INTERNAL_SERVER_ERROR for masked internal failures (no message, stack trace or SQL leaves the
process; they are logged instead).
"""

from __future__ import annotations

import logging
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import MaskErrors

from router.services import ServiceError

log = logging.getLogger("router.graphql")

UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
NOT_FOUND = "NOT_FOUND"
BAD_USER_INPUT = "BAD_USER_INPUT"
CONFLICT = "CONFLICT"
INTERNAL = "INTERNAL_SERVER_ERROR"

DISABLED_MESSAGE = "The admin API is disabled: set ADMIN_PASSWORD on the router to enable it."


def api_error(code: str, message: str, field: str | None = None, **extra: Any) -> GraphQLError:
    extensions: dict[str, Any] = {"code": code}
    if field is not None:
        extensions["field"] = field
    extensions.update({k: v for k, v in extra.items() if v is not None})
    return GraphQLError(message, extensions=extensions)


def bad_input(message: str, field: str | None = None, **extra: Any) -> GraphQLError:
    return api_error(BAD_USER_INPUT, message, field, **extra)


def from_service_error(exc: ServiceError) -> GraphQLError:
    return api_error(exc.code, exc.message, exc.field, **exc.extra)


def is_internal(error: GraphQLError) -> bool:
    """An error to hide: raised by our code (not a GraphQLError) and not a refused admin operation."""
    original = error.original_error
    return original is not None and not isinstance(original, (GraphQLError, ServiceError))


class AdminErrors(MaskErrors):
    """MaskErrors that keeps GraphQL errors, turns ServiceErrors into coded errors, hides the rest.

    Errors without a code (query syntax, validation, depth limit, bad variables) get BAD_USER_INPUT.
    """

    def __init__(self) -> None:
        super().__init__(should_mask_error=is_internal, error_message="Internal server error.")

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        masked = super().anonymise_error(error)
        masked.extensions = {"code": INTERNAL}
        return masked

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        shaped = []
        for error in super()._process_errors(errors):
            original = error.original_error
            if isinstance(original, ServiceError):
                error = GraphQLError(
                    original.message,
                    nodes=error.nodes,
                    source=error.source,
                    positions=error.positions,
                    path=error.path,
                    extensions=from_service_error(original).extensions,
                )
            elif not (error.extensions or {}).get("code"):
                error.extensions = {**(error.extensions or {}), "code": BAD_USER_INPUT}
            shaped.append(error)
        return shaped


def log_unexpected(errors: list[GraphQLError]) -> None:
    for error in errors:
        if is_internal(error):
            log.error("GraphQL resolver failed at %s", error.path, exc_info=error.original_error)
