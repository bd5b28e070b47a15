"""Error shapes of the admin API: every error carries `extensions.code`.

Codes: UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, BAD_USER_INPUT, CONFLICT (the contract's),
GRAPHQL_PARSE_FAILED and GRAPHQL_VALIDATION_FAILED (Apollo's, for documents refused before they
run), plus INTERNAL_SERVER_ERROR for masked internal failures (no message, stack trace or SQL
leaves the process; they are logged instead).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import StreamExecutionResult

from router.services import BadInputError, ConflictError, NotFoundError, ServiceError

log = logging.getLogger("router.graphql")

UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
# A refused admin operation's code is its ServiceError subclass's.
NOT_FOUND = NotFoundError.code
BAD_USER_INPUT = BadInputError.code
CONFLICT = ConflictError.code
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


def shape(error: GraphQLError) -> GraphQLError:
    """The error as clients see it: internal failures masked, ServiceErrors coded, a code on all."""
    original = error.original_error
    if is_internal(error):
        return GraphQLError(
            "Internal server error.",
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions={"code": INTERNAL},
        )
    if isinstance(original, ServiceError):
        return GraphQLError(
            original.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions=from_service_error(original).extensions,
        )
    if not (error.extensions or {}).get("code"):
        error.extensions = {**(error.extensions or {}), "code": BAD_USER_INPUT}
    return error


class AdminErrors(SchemaExtension):
    """Applies `shape` to every answer, plain or streamed (a subscription's events).

    Parse and validation errors already carry GRAPHQL_PARSE_FAILED / GRAPHQL_VALIDATION_FAILED
    (graphql_schema.limits); what else has no code (a bad variable value) gets BAD_USER_INPUT.
    """

    def __init__(self) -> None:
        self._streamed = False

    def on_operation(self) -> Iterator[None]:
        self._streamed = False
        yield
        if not self._streamed:
            _shape_result(self.execution_context.result)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        self._streamed = True
        _shape_result(result)
        yield None


def _shape_result(result: object) -> None:
    errors = getattr(result, "errors", None)
    if errors:
        result.errors = [shape(error) for error in errors]  # type: ignore[attr-defined]


def log_unexpected(errors: list[GraphQLError]) -> None:
    for error in errors:
        if is_internal(error):
            log.error("GraphQL resolver failed at %s", error.path, exc_info=error.original_error)
