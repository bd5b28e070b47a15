"""Descriptions for the schema's types and fields that do not carry one where they are defined.

A field's own `description=` wins; this fills the rest, so introspection, GraphiQL and the
printed schema describe everything (tests/test_graphql_conventions.py checks that nothing is left
undescribed, and that nothing here describes a field that no longer exists).
"""

from __future__ import annotations

from graphql import GraphQLInputObjectType, GraphQLObjectType, GraphQLSchema

_ID = "Stable identifier."
_CREATED = "When it was created (UTC)."
_UPDATED = "When it was last changed (UTC)."
_SINCE = "Only requests at or after this time (UTC)."
_UNTIL = "Only requests before this time (UTC)."

DESCRIPTIONS: dict[str, str] = {
    # --- roots ---
    "Query": "Reads: users, backends, permissions, scripts, request logs, usage, metrics, prices and limits.",
    "Mutation": "Changes; each applies to the very next /v1 request of every router process.",
    "Subscription": "Live events over a WebSocket at /graphql (graphql-transport-ws or graphql-ws).",
    "Mutation.createBackend": "Add an upstream server; it serves from the next request (its models are fetched now).",
    "Mutation.updateBackend": 'Change a backend; absent fields stay as they are, apiKey "" removes the key.',
    "Mutation.createPermission": "Let a user (without allBackends) use one backend.",
    "Mutation.deletePermission": "Take one backend away from a user.",
    "Mutation.createScript": "Save a script (its syntax is checked first); new scripts start inactive.",
    "Mutation.updateScript": "Change a script; new code is syntax-checked and replaces the live copy at once.",
    "Mutation.deleteScript": "Delete a script.",
    "Mutation.activateScript": "Run this script on live traffic from the next request.",
    "Mutation.deactivateScript": "Stop running this script on live traffic.",
    "Mutation.createModelPrice": "Add a price for a model name or glob, on one backend or all.",
    "Mutation.updateModelPrice": "Replace a price.",
    "Mutation.deleteModelPrice": "Delete a price; requests of that model then cost nothing.",
    # --- users ---
    "User": "Someone (or something) calling /v1 with their own API key.",
    "User.id": _ID,
    "User.name": "Unique name, as in the CLI (`llm-router users ...`) and the request log.",
    "User.email": "Contact address; optional.",
    "User.isActive": "False: the user's key is refused (401) from the next request.",
    "User.createdAt": _CREATED,
    "User.updatedAt": _UPDATED,
    "User.permissions": "The backends this user may use explicitly (see allBackends).",
    "User.limits": "The user's rate limits and budget.",
    "User.quota": "Where the user stands against those limits now.",
    "UserWithKey.user": "The user.",
    "UserWithKey.apiKey": "The whole API key: store it now, it is never shown again.",
    "CreateUserInput": "A new user.",
    "CreateUserInput.name": "Unique name: 1-128 letters, digits or '_', '.', '@', '-'.",
    "CreateUserInput.email": "Contact address; optional.",
    "UpdateUserInput": "Changes to a user; absent fields stay as they are.",
    "UpdateUserInput.name": "New unique name.",
    "UpdateUserInput.allBackends": "True: every backend, present and future; false: only its permissions.",
    "UpdateUserInput.isActive": "False locks the user's key out from the next request.",
    "Viewer.name": "The caller's user name.",
    "Viewer.limits": "The caller's own limits.",
    "Viewer.quota": "Where the caller stands against its limits now.",
    # --- backends ---
    "Backend": "An upstream OpenAI-compatible server the router forwards requests to.",
    "Backend.id": _ID,
    "Backend.hasApiKey": "Whether an upstream key is stored; the key itself is never readable.",
    "Backend.weight": "Share of traffic among the backends serving a model; 0 = only when the others fail.",
    "Backend.isActive": "False: no request goes there (nothing is deleted).",
    "Backend.createdAt": _CREATED,
    "Backend.updatedAt": _UPDATED,
    "Backend.limits": "The backend's rate and concurrency limits.",
    "Backend.quota": "Where the backend stands against those limits now.",
    "CreateBackendInput": "A new backend.",
    "CreateBackendInput.name": "Unique alias; also the [name] of auto-mode model names.",
    "CreateBackendInput.baseUrl": "OpenAI-compatible base URL with /v1 (requests go to baseUrl + /chat/completions).",
    "CreateBackendInput.modelFilter": "Keep upstream models whose id contains every space-separated term (* = any).",
    "CreateBackendInput.modelOverride": "Exactly these models; the upstream's /models is never asked.",
    "CreateBackendInput.modelAppend": "Models added after the (filtered) list.",
    "UpdateBackendInput": "Changes to a backend; absent fields stay as they are.",
    "UpdateBackendInput.name": "New unique alias.",
    "UpdateBackendInput.baseUrl": "New base URL (with /v1).",
    "UpdateBackendInput.weight": "New weight (0 = only when the others fail).",
    "UpdateBackendInput.isActive": "False: no request goes there.",
    "BackendMetrics": "Live and recent numbers of one backend.",
    "BackendMetrics.backend": "The backend.",
    "BackendMetrics.inFlight": "Requests in flight now (across processes with Redis).",
    "BackendMetrics.requests": "Requests since the given time.",
    "BackendMetrics.errors": "Of those, answered with a status of 400 or more, or with an error recorded.",
    "BackendMetrics.p50LatencyMs": "Median latency of those requests, in milliseconds.",
    "BackendMetrics.p95LatencyMs": "95th percentile latency, in milliseconds.",
    # --- permissions ---
    "Permission": "A user may use a backend (needed unless the user has allBackends).",
    "Permission.id": _ID,
    "Permission.createdAt": _CREATED,
    "Permission.user": "Who.",
    "Permission.backend": "May use which backend.",
    "CreatePermissionInput": "A user and a backend it may use.",
    "CreatePermissionInput.userId": "The user.",
    "CreatePermissionInput.backendId": "The backend.",
    # --- scripts ---
    "Script": "JavaScript hooks that rewrite requests and responses, run in a V8 isolate.",
    "Script.id": _ID,
    "Script.name": "A name for people; need not be unique.",
    "Script.type": "Where it runs: every request of a user, of a backend, or of a user to a backend.",
    "Script.isActive": "Only active scripts run on live traffic.",
    "Script.createdAt": _CREATED,
    "Script.updatedAt": _UPDATED,
    "ScriptType": "Which requests a script runs on.",
    "ScriptHook": "Which hook of a script to test.",
    "CreateScriptInput": "A new script (inactive unless isActive is true).",
    "CreateScriptInput.name": "A name for people.",
    "CreateScriptInput.type": "Where it runs; decides which of userId and backendId are needed.",
    "CreateScriptInput.userId": "The user, for PER_USER and PER_USER_BACKEND scripts.",
    "CreateScriptInput.backendId": "The backend, for PER_BACKEND and PER_USER_BACKEND scripts.",
    "CreateScriptInput.code": "JavaScript defining onRequest, onResponse and/or onStreamChunk.",
    "UpdateScriptInput": "Changes to a script; absent fields stay as they are.",
    "UpdateScriptInput.name": "New name.",
    "UpdateScriptInput.code": "New code (syntax-checked; replaces the live copy at once).",
    "UpdateScriptInput.userId": "New user target.",
    "UpdateScriptInput.backendId": "New backend target.",
    "UpdateScriptInput.priority": "New priority (lower runs first).",
    "UpdateScriptInput.isActive": "Run on live traffic or not.",
    "ScriptTestInput.hook": "The hook to run.",
    "ScriptTestResult": "What one test run of a hook did.",
    "ScriptTestResult.ok": "The hook returned a context without throwing or hitting a limit.",
    "ScriptTestResult.error": "Why it failed, with the line when known; null when ok.",
    "ScriptTestResult.durationMs": "How long the hook ran, in milliseconds.",
    # --- request logs and usage ---
    "RequestLog": "One finished /v1 request: who, where, what it cost and how it went (never prompts).",
    "RequestLog.id": _ID,
    "RequestLog.requestId": "The X-Request-ID the client got (its own, if it sent one).",
    "RequestLog.createdAt": "When the request arrived (UTC).",
    "RequestLog.userId": "The user's id; null when the request was refused before a user was known.",
    "RequestLog.userName": "The user's name at the time.",
    "RequestLog.backendId": "The backend of the last attempt; null when none was tried.",
    "RequestLog.backendName": "The backend's name at the time.",
    "RequestLog.model": "The model the client asked for.",
    "RequestLog.statusCode": "The HTTP status the client got.",
    "RequestLog.stream": "Whether the client asked for a stream.",
    "RequestLog.promptTokens": "Prompt tokens, as the upstream reported them.",
    "RequestLog.completionTokens": "Completion tokens, as the upstream reported them.",
    "RequestLog.totalTokens": "Prompt plus completion tokens.",
    "RequestLog.latencyMs": "From receiving the request to the end of the answer, in milliseconds.",
    "RequestLog.timeToFirstTokenMs": "Streams: time to the first relayed event, in ms; null for other requests.",
    "RequestLog.error": "What went wrong, in words; null on success.",
    "RequestLogFilter": "Which request-log rows to return (all conditions must hold).",
    "RequestLogFilter.userId": "Only this user's requests.",
    "RequestLogFilter.backendId": "Only requests whose last attempt went to this backend.",
    "RequestLogFilter.model": "Only requests for this model (exact name).",
    "RequestLogFilter.statusCode": "Only requests answered with this HTTP status.",
    "RequestLogFilter.errorsOnly": "Only requests answered with a status of 400 or more.",
    "RequestLogFilter.since": _SINCE,
    "RequestLogFilter.until": _UNTIL,
    "RequestLogPage": "One page of the request log, newest first.",
    "RequestLogPage.totalCount": "How many rows match the filter, in all pages.",
    "UsageFilter": "Which requests usage counts (all conditions must hold).",
    "UsageFilter.userId": "Only this user's requests.",
    "UsageFilter.backendId": "Only this backend's requests.",
    "UsageFilter.model": "Only this model's requests.",
    "UsageFilter.since": _SINCE,
    "UsageFilter.until": _UNTIL,
    "UsageGroupBy": "What usage rows are grouped by.",
    "TimeBucket": "The size of usage's time buckets (UTC).",
    "UsageRow": "Usage of one group (and time bucket). Fields of dimensions not grouped by are null.",
    "UsageRow.userId": "The user, when grouped by user.",
    "UsageRow.userName": "The user's name, when grouped by user.",
    "UsageRow.backendId": "The backend, when grouped by backend.",
    "UsageRow.backendName": "The backend's name, when grouped by backend.",
    "UsageRow.model": "The model, when grouped by model.",
    "UsageRow.requests": "Requests in the group.",
    "UsageRow.errors": "Of those, answered with a status of 400 or more, or with an error recorded.",
    "UsageRow.promptTokens": "Sum of prompt tokens.",
    "UsageRow.completionTokens": "Sum of completion tokens.",
    "UsageRow.totalTokens": "Sum of prompt and completion tokens.",
    "UsageRow.cachedTokens": "Sum of prompt tokens read from the upstream's prompt cache.",
    "UsageRow.reasoningTokens": "Sum of completion tokens spent on reasoning.",
    "UsageRow.avgLatencyMs": "Mean latency, in milliseconds.",
    # --- admin sessions ---
    "AdminSession": "A session token for the admin API, from login.",
    "AdminSession.token": "Send as `Authorization: Bearer <token>` instead of the password.",
    "AdminSession.expiresAt": "When the token stops working (ADMIN_SESSION_TTL_S after login).",
    # --- limits and prices ---
    "BudgetPeriod": "The calendar period a budget applies to (UTC).",
    "LimitsInput.rpm": "Requests per minute; null = unlimited.",
    "LimitsInput.tpm": "Tokens (prompt + completion) per minute; null = unlimited.",
    "LimitsInput.maxConcurrent": "Requests in flight at once; null = unlimited.",
    "LimitsInput.budgetUsd": "Spend allowed per budget period, in USD (users only); null = unlimited.",
    "LimitsInput.budgetPeriod": "The period budgetUsd applies to.",
    "QuotaState.periodStart": "Start of the current budget period (users with a budget).",
    "QuotaState.periodEnd": "End of the current budget period.",
    "ModelPrice.id": _ID,
    "ModelPrice.model": "A model name or a glob pattern such as gpt-4o*.",
    "ModelPrice.inputPerMTok": "USD per million prompt tokens.",
    "ModelPrice.outputPerMTok": "USD per million completion tokens.",
    "ModelPriceInput": "A price in USD per million tokens.",
    "ModelPriceInput.backendId": "Only on this backend; null = on every backend.",
    "ModelPriceInput.inputPerMTok": "USD per million prompt tokens.",
    "ModelPriceInput.cachedInputPerMTok": "USD per million prompt tokens read from the cache; null = inputPerMTok.",
    "ModelPriceInput.cacheWritePerMTok": "USD per million prompt tokens written to the cache; null = inputPerMTok.",
    "ModelPriceInput.outputPerMTok": "USD per million completion tokens.",
}

_BUILTIN = frozenset({"String", "Int", "Float", "Boolean", "ID"})


def schema_members(schema: GraphQLSchema) -> dict[str, object]:
    """Every type and field of the schema by name (`Type`, `Type.field`), without GraphQL's own."""
    members: dict[str, object] = {}
    for name, graphql_type in schema.type_map.items():
        if name.startswith("__") or name in _BUILTIN:
            continue
        members[name] = graphql_type
        if isinstance(graphql_type, (GraphQLObjectType, GraphQLInputObjectType)):
            for field_name, field in graphql_type.fields.items():
                members[f"{name}.{field_name}"] = field
    return members


def describe(schema: GraphQLSchema) -> None:
    """Give every type and field without a description the one in DESCRIPTIONS (its own wins)."""
    for name, member in schema_members(schema).items():
        text = DESCRIPTIONS.get(name)
        if text is not None and not getattr(member, "description", None):
            member.description = text  # type: ignore[attr-defined]


def undescribed(schema: GraphQLSchema) -> list[str]:
    return [name for name, member in schema_members(schema).items() if not getattr(member, "description", None)]
