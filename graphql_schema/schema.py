"""The admin schema: roots, the auth gate, error shaping and the depth limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import strawberry
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import FieldNode, GraphQLError, get_operation_ast
from strawberry.extensions import QueryDepthLimiter, SchemaExtension

from graphql_schema.descriptions import describe
from graphql_schema.errors import AdminErrors, log_unexpected
from graphql_schema.mutations import Mutation
from graphql_schema.queries import Query
from graphql_schema.subscriptions import Subscription
from router.config import Settings

# Root fields anyone may ask for (everything else needs an admin token).
PUBLIC_ROOT_FIELDS = frozenset({"login", "__typename"})
# Root fields a user's own API key may ask for.
VIEWER_ROOT_FIELDS = frozenset({"me", "__typename"})


def _public_only(execution_context: Any, allowed: frozenset[str] = PUBLIC_ROOT_FIELDS) -> bool:
    document = execution_context.graphql_document
    if document is None:
        return False
    operation = get_operation_ast(document, execution_context.operation_name)
    if operation is None:
        return False
    return all(
        isinstance(selection, FieldNode) and selection.name.value in allowed
        for selection in operation.selection_set.selections
    )


class AdminAuth(SchemaExtension):
    """Refuses every operation but `login` (introspection included) without a valid admin token.

    Queries and mutations are answered with the context's auth error and nothing is executed;
    the subscription resolver checks the same (and WebSockets are refused at connection_init).
    """

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context.context
        auth_error: GraphQLError | None = getattr(context, "auth_error", None)
        allowed = VIEWER_ROOT_FIELDS if getattr(context, "viewer", None) is not None else PUBLIC_ROOT_FIELDS
        if auth_error is not None and not _public_only(self.execution_context, allowed):
            self.execution_context.result = GraphQLExecutionResult(data=None, errors=[auth_error])
        yield


class AdminSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Refused operations (auth, not found, bad input...) are answers, not failures: log only the rest.
        log_unexpected(errors)


def build_schema(settings: Settings | None = None) -> AdminSchema:
    settings = settings or Settings()
    max_depth = settings.graphql_max_depth
    schema = AdminSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=[
            AdminAuth,
            lambda: QueryDepthLimiter(max_depth=max_depth),
            AdminErrors,
        ],
    )
    describe(schema._schema)
    return schema
