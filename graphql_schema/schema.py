"""The admin schema: roots, the auth gate, error shaping and the query limits."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import strawberry
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import GraphQLError
from strawberry.extensions import QueryDepthLimiter, SchemaExtension
from strawberry.tools import merge_types

from graphql_schema.context import allowed_roots, public_only
from graphql_schema.descriptions import describe
from graphql_schema.errors import AdminErrors, log_unexpected
from graphql_schema.limits import KnownDocuments, QueryLimits, QueryLimitSettings
from graphql_schema.mutations import Mutation
from graphql_schema.queries import Query
from graphql_schema.quota_events import QuotaEventsSubscription
from graphql_schema.subscriptions import SharedEventExecution, Subscription
from graphql_schema.types import DEFAULT_PAGE
from router.config import Settings


class AdminAuth(SchemaExtension):
    """Refuses every operation but `login` (introspection included) without a valid admin token.

    Queries and mutations are answered with the context's auth error and nothing is executed;
    the subscription resolver checks the same (and WebSockets are refused at connection_init).
    """

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context.context
        auth_error: GraphQLError | None = getattr(context, "auth_error", None)
        ctx = self.execution_context
        if auth_error is not None and not public_only(ctx.graphql_document, ctx.operation_name, allowed_roots(context)):
            self.execution_context.result = GraphQLExecutionResult(data=None, errors=[auth_error])
        yield


class AdminSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # Refused operations (auth, not found, bad input...) are answers, not failures: log only the rest.
        log_unexpected(errors)


def build_schema(settings: Settings | None = None) -> AdminSchema:
    settings = settings or Settings()
    max_depth = settings.graphql_max_depth
    limits = QueryLimitSettings(
        max_query_chars=settings.graphql_max_query_kb * 1024,
        max_tokens=settings.graphql_max_tokens,
        max_aliases=settings.graphql_max_aliases,
        max_fragments=settings.graphql_max_fragments,
        max_cost=settings.graphql_max_cost,
        default_page=DEFAULT_PAGE,
        max_page=settings.graphql_max_page,
    )
    # Large documents are parsed and validated here, one at a time, off the event loop.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="graphql-parse")
    known = KnownDocuments()  # the documents clients repeat, parsed and validated once
    schema = AdminSchema(
        query=Query,
        mutation=Mutation,
        subscription=merge_types("Subscription", (Subscription, QuotaEventsSubscription)),
        execution_context_class=SharedEventExecution,  # a usage tick is executed once for all its subscribers
        extensions=[
            lambda: QueryLimits(limits, pool, known),
            AdminAuth,
            lambda: QueryDepthLimiter(max_depth=max_depth),
            AdminErrors,
        ],
    )
    describe(schema._schema)
    return schema
