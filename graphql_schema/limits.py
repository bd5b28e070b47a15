"""What one GraphQL document may cost the router, checked before anything runs.

In order, for every operation (HTTP or WebSocket):
1. Without a valid admin token only `login` can run, so a document longer than
   UNAUTHENTICATED_MAX_QUERY is refused with the authentication error, unparsed.
2. Size: at most GRAPHQL_MAX_QUERY_KB; then parsing stops after GRAPHQL_MAX_TOKENS tokens
   (graphql-core's `max_tokens`). Parse errors carry `extensions.code = GRAPHQL_PARSE_FAILED`.
3. Validation (the standard rules plus depth, aliases, fragments) and then the cost estimate;
   failures carry `GRAPHQL_VALIDATION_FAILED`.
Documents up to CACHED_CHARS long are kept once parsed, and once they passed validation
(`KnownDocuments`): a client asks the same few again and again (the dashboard's pages and polls),
and parsing and validating one costs milliseconds of the event loop the API shares. The cost
estimate depends on the variables and runs every time.
Documents longer than OFFLOAD_CHARS are parsed and validated on a worker thread (one at a time),
so a large document never holds the event loop for long; graphql-core's own validation budgets
(overlapping fields, fragment work) are lowered to VALIDATION_BUDGET / FRAGMENT_WORK_BUDGET so
that a hostile document within the token limit is given up on after a few milliseconds.

Cost: every field counts 1; the fields under a list count once per expected item: the `first`
argument when the field has one (a variable's value, or the default page), else LIST_ESTIMATE.
`__schema` counts INTROSPECTION_COST (it is bounded by the schema's size, not by the query).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
    get_operation_ast,
    parse,
)
from graphql.validation import validation_context
from graphql.validation.rules import overlapping_fields_can_be_merged as overlapping_fields
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from graphql_schema.context import allowed_roots, public_only

PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"

UNAUTHENTICATED_MAX_QUERY = 1024  # characters: `login` fits many times over
OFFLOAD_CHARS = 2048
LIST_ESTIMATE = 10
INTROSPECTION_COST = 2000
_TRIVIAL = parse("{ __typename }")  # stands in for a document that could not be parsed
VALIDATION_BUDGET = 20_000  # graphql-core's default is 500,000 (about 0.5 s of comparisons)
FRAGMENT_WORK_BUDGET = 5_000  # graphql-core's default is 50,000


def lower_validation_budgets() -> None:
    """graphql-core reads these module attributes at each validation (its documented knobs)."""
    overlapping_fields.MAX_COMPLEXITY_BUDGET = VALIDATION_BUDGET
    validation_context.MAX_FRAGMENT_WORK = FRAGMENT_WORK_BUDGET


CACHED_CHARS = 16_384
CACHED_DOCUMENTS = 256


class KnownDocuments:
    """Parsed documents by (query text, token limit), least recently used out beyond `size`, and
    whether each passed validation with a given set of rules (only a pass is kept: the errors of a
    failed document are built again). Per process: a pure function of the text and the schema."""

    def __init__(self, size: int = CACHED_DOCUMENTS) -> None:
        self.size = size
        self._documents: OrderedDict[tuple[str, int], tuple[DocumentNode, set[tuple[str, ...]]]] = OrderedDict()

    def get(self, query: str, max_tokens: int) -> DocumentNode | None:
        entry = self._documents.get((query, max_tokens))
        if entry is None:
            return None
        self._documents.move_to_end((query, max_tokens))
        return entry[0]

    def put(self, query: str, max_tokens: int, document: DocumentNode) -> None:
        if len(query) > CACHED_CHARS:
            return
        self._documents[(query, max_tokens)] = (document, set())
        if len(self._documents) > self.size:
            self._documents.popitem(last=False)

    def passed(self, query: str, max_tokens: int, document: DocumentNode, rules: tuple[str, ...]) -> bool:
        entry = self._documents.get((query, max_tokens))
        return entry is not None and entry[0] is document and rules in entry[1]

    def mark_passed(self, query: str, max_tokens: int, document: DocumentNode, rules: tuple[str, ...]) -> None:
        entry = self._documents.get((query, max_tokens))
        if entry is not None and entry[0] is document:
            entry[1].add(rules)


def rules_key(rules: tuple[Any, ...]) -> tuple[str, ...]:
    """What a set of validation rules is, across operations: strawberry's depth limiter makes a new
    rule class per operation, alike for one schema (its limit is the schema's)."""
    return tuple(f"{rule.__module__}.{rule.__qualname__}" for rule in rules)


@dataclass(frozen=True)
class QueryLimitSettings:
    max_query_chars: int
    max_tokens: int
    max_aliases: int
    max_fragments: int
    max_cost: int
    default_page: int
    max_page: int


class QueryLimits(SchemaExtension):
    """Runs parsing and validation itself (see the module docstring), with the limits above."""

    def __init__(self, limits: QueryLimitSettings, pool: concurrent.futures.Executor, known: KnownDocuments) -> None:
        lower_validation_budgets()
        self.limits = limits
        self.pool = pool
        self.known = known

    async def on_parse(self) -> AsyncIterator[None]:
        ctx = self.execution_context
        query = ctx.query or ""
        auth_error: GraphQLError | None = getattr(ctx.context, "auth_error", None)
        if ctx.graphql_document is None and query:
            if auth_error is not None and len(query) > UNAUTHENTICATED_MAX_QUERY:
                self._refuse(auth_error)
            elif len(query) > self.limits.max_query_chars:
                self._refuse(
                    coded(
                        f"The query is {len(query)} characters long; the limit is {self.limits.max_query_chars}.",
                        PARSE_FAILED,
                    )
                )
            else:
                try:
                    ctx.graphql_document = await self._parse(query)
                except GraphQLError as error:
                    self._refuse(auth_error if auth_error is not None else with_code(error, PARSE_FAILED))
        yield

    async def _parse(self, query: str) -> DocumentNode:
        options = self._parse_options()
        document = self.known.get(query, options["max_tokens"])
        if document is None:
            document = await self._offload(len(query), parse, query, **options)
            self.known.put(query, options["max_tokens"], document)
        return document

    async def on_validate(self) -> AsyncIterator[None]:
        ctx = self.execution_context
        document = ctx.graphql_document
        if ctx.pre_execution_errors is None and document is not None:
            query, tokens, rules = ctx.query or "", self._parse_options()["max_tokens"], tuple(ctx.validation_rules)
            key = rules_key(rules)
            if self.known.passed(query, tokens, document, key):
                found = await self._offload(len(query), self._cost_errors, document)
            else:
                found = await self._offload(len(query), self._validate, document, rules)
                if not found:
                    self.known.mark_passed(query, tokens, document, key)
            auth_error: GraphQLError | None = getattr(ctx.context, "auth_error", None)
            if (
                found
                and auth_error is not None
                and not public_only(document, ctx.operation_name, allowed_roots(ctx.context))
            ):
                found = [auth_error]  # nothing about the schema for callers without a token
            ctx.pre_execution_errors = [with_code(error, VALIDATION_FAILED) for error in found]
        yield

    def _parse_options(self) -> dict[str, Any]:
        auth_error = getattr(self.execution_context.context, "auth_error", None)
        tokens = 200 if auth_error is not None else self.limits.max_tokens
        return {**self.execution_context.parse_options, "max_tokens": tokens}

    def _refuse(self, error: GraphQLError) -> None:
        """Answer `error` without running anything (strawberry skips parsing and validation)."""
        self.execution_context.graphql_document = _TRIVIAL
        self.execution_context.pre_execution_errors = [error]

    async def _offload(self, size: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if size <= OFFLOAD_CHARS:
            return fn(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def _validate(self, document: DocumentNode, rules: tuple[Any, ...]) -> list[GraphQLError]:
        schema: GraphQLSchema = self.execution_context.schema._schema
        errors = self._shape_errors(document)
        if errors:
            return errors
        errors = list(validate_document(schema, document, rules))
        if errors:
            return errors
        return self._cost_errors(document)

    def _cost_errors(self, document: DocumentNode) -> list[GraphQLError]:
        """The cost estimate's refusal, if any (it depends on the variables: never kept)."""
        schema: GraphQLSchema = self.execution_context.schema._schema
        operation = get_operation_ast(document, self.execution_context.operation_name)
        if operation is None:
            return []
        variables = self.execution_context.variables or {}
        estimate = _Cost(schema, _fragments(document), variables, self.limits)
        cost = estimate.of(operation.selection_set, schema.get_root_type(operation.operation), None, frozenset())
        if cost > self.limits.max_cost:
            return [
                GraphQLError(
                    f"The query would cost about {cost}; the limit is {self.limits.max_cost} "
                    "(lists count once per expected item: ask for fewer items or fewer fields).",
                    extensions={"cost": cost, "maxCost": self.limits.max_cost},
                )
            ]
        return []

    def _shape_errors(self, document: DocumentNode) -> list[GraphQLError]:
        """Aliases and fragments, counted before the (costlier) standard rules run."""
        fragments = _fragments(document)
        if len(fragments) > self.limits.max_fragments:
            return [GraphQLError(f"{len(fragments)} fragments found; the limit is {self.limits.max_fragments}.")]
        aliases = count_aliases(document)
        if aliases > self.limits.max_aliases:
            return [GraphQLError(f"{aliases} aliases found; the limit is {self.limits.max_aliases}.")]
        return []


def coded(message: str, code: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


def with_code(error: GraphQLError, code: str) -> GraphQLError:
    if not (error.extensions or {}).get("code"):
        error.extensions = {**(error.extensions or {}), "code": code}
    return error


def _fragments(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}


def _field_def(parent: GraphQLNamedType | None, name: str) -> GraphQLField | None:
    if isinstance(parent, (GraphQLObjectType, GraphQLInterfaceType)):
        field: GraphQLField | None = parent.fields.get(name)
        return field
    return None


def _page(field: FieldNode, variables: dict[str, Any], limits: QueryLimitSettings) -> int | None:
    """The `first` argument of a field (clamped to the page limits), or None if it has none."""
    for argument in field.arguments or ():
        if argument.name.value != "first":
            continue
        value: Any = None
        if isinstance(argument.value, IntValueNode):
            value = int(argument.value.value)
        elif isinstance(argument.value, VariableNode):
            value = variables.get(argument.value.name.value)
        size = value if isinstance(value, int) and not isinstance(value, bool) else limits.default_page
        return max(1, min(size, limits.max_page))
    return None


def count_aliases(document: DocumentNode) -> int:
    """Aliased fields in the operations, counted once per time each fragment is spread.

    Each fragment is counted once and reused (a fragment spread twice in each of 30 nested
    fragments would otherwise cost 2**30 visits); cycles count nothing (validation refuses them).
    """
    fragments = _fragments(document)
    memo: dict[str, int] = {}

    def in_set(selection_set: SelectionSetNode | None, path: frozenset[str]) -> int:
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += (1 if selection.alias else 0) + in_set(selection.selection_set, path)
            elif isinstance(selection, InlineFragmentNode):
                total += in_set(selection.selection_set, path)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in path or name not in fragments:
                    continue
                if name not in memo:
                    memo[name] = in_set(fragments[name].selection_set, path | {name})
                total += memo[name]
        return total

    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    return sum(in_set(operation.selection_set, frozenset()) for operation in operations)


class _Cost:
    """The cost estimate of one operation (see the module docstring); fragments are memoised."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: dict[str, FragmentDefinitionNode],
        variables: dict[str, Any],
        limits: QueryLimitSettings,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.limits = limits
        self.memo: dict[tuple[str, str, int | None], int] = {}

    def of(
        self,
        selection_set: SelectionSetNode | None,
        parent: GraphQLNamedType | None,
        page: int | None,
        path: frozenset[str],
    ) -> int:
        """The cost of a selection set under `parent`; `page` is a `first` given by a field above."""
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, page, path)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                typ = self.schema.get_type(condition.name.value) if condition else parent
                total += self.of(selection.selection_set, typ, page, path)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.spread(selection.name.value, page, path)
        return total

    def field(self, node: FieldNode, parent: GraphQLNamedType | None, page: int | None, path: frozenset[str]) -> int:
        name = node.name.value
        if name == "__schema":
            return INTROSPECTION_COST
        field = _field_def(parent, name)
        if field is None or node.selection_set is None:
            return 1
        own_page = _page(node, self.variables, self.limits)
        is_list = isinstance(get_nullable_type(field.type), GraphQLList)
        items = (page or LIST_ESTIMATE) if is_list and not name.startswith("__") else 1
        below = own_page if own_page is not None else (None if is_list else page)
        return 1 + items * self.of(node.selection_set, get_named_type(field.type), below, path)

    def spread(self, name: str, page: int | None, path: frozenset[str]) -> int:
        fragment = self.fragments.get(name)
        if fragment is None or name in path:
            return 0
        key = (name, fragment.type_condition.name.value, page)
        if key not in self.memo:
            typ = self.schema.get_type(fragment.type_condition.name.value)
            self.memo[key] = self.of(fragment.selection_set, typ, page, path | {name})
        return self.memo[key]
