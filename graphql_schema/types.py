"""The admin API's GraphQL types, enums and inputs (names as in the contract)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from graphql_schema.context import AdminContext
from graphql_schema.errors import NOT_FOUND, api_error, bad_input
from graphql_schema.limits_types import Limits, QuotaState, Subject, quota_state
from router import analytics_queries
from router import limits as lim
from router.catalog import backend_limits, user_limits
from router.hooks import script_test_context
from router.models.core import Backend as BackendModel
from router.models.core import Permission as PermissionModel
from router.models.core import Script as ScriptModel
from router.models.core import User as UserModel
from router.protocols.translate import BACKEND_APIS
from router.routing import CheckResult, HealthStatus
from router.upstream_auth import effective_auth_header
from router.urls import redact_url

# --- enums ---------------------------------------------------------------------------------------


@strawberry.enum(name="ScriptType")
class ScriptTypeEnum(Enum):
    PER_USER = "PER_USER"
    PER_BACKEND = "PER_BACKEND"
    PER_USER_BACKEND = "PER_USER_BACKEND"


@strawberry.enum
class ScriptHook(Enum):
    ON_REQUEST = "onRequest"
    ON_RESPONSE = "onResponse"
    ON_STREAM_CHUNK = "onStreamChunk"


@strawberry.enum
class UsageGroupBy(Enum):
    USER = "user"
    BACKEND = "backend"
    MODEL = "model"


@strawberry.enum(
    description="A request format a backend speaks natively. A request in a format that a backend does not speak "
    "is translated where a translation exists (MESSAGES and RESPONSES to CHAT_COMPLETIONS, CHAT_COMPLETIONS to "
    "MESSAGES); otherwise that backend is not a candidate."
)
class BackendApi(Enum):
    CHAT_COMPLETIONS = "chat_completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    MESSAGES = "messages"


@strawberry.enum
class TimeBucket(Enum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"


# --- entities --------------------------------------------------------------------------------------


# User and Backend share their limits and quota fields: one resolver each, the quota's by scope.
def _limits(root: UserType | BackendType) -> Limits:
    return Limits.of(root.limits_data)


def _quota(scope: str) -> Callable[[UserType | BackendType, Info[AdminContext, None]], Awaitable[QuotaState]]:
    async def resolve(root: UserType | BackendType, info: Info[AdminContext, None]) -> QuotaState:
        return await quota_state(info, Subject(int(root.id), root.name, root.limits_data), scope)

    return resolve


@strawberry.type(name="User")
class UserType:
    id: strawberry.ID
    name: str
    email: str | None
    is_active: bool
    all_backends: bool = strawberry.field(description="May use every backend, present and future (the '*' permission).")
    api_key_prefix: str = strawberry.field(
        description="The first characters of the API key, enough to recognise it; never the whole key."
    )
    created_at: datetime
    updated_at: datetime
    limits_data: strawberry.Private[lim.Limits] = lim.NO_LIMITS

    @strawberry.field
    async def permissions(self, info: Info[AdminContext, None]) -> list[PermissionType]:
        rows = await info.context.admin.list_permissions(user_id=self.id)
        return [PermissionType.from_model(p) for p in rows]

    limits = strawberry.field(resolver=_limits)
    quota = strawberry.field(resolver=_quota("user"))

    @classmethod
    def from_model(cls, user: UserModel) -> UserType:
        return cls(
            id=strawberry.ID(str(user.id)),
            name=user.name,
            email=user.email,
            is_active=user.is_active,
            all_backends=user.all_backends,
            api_key_prefix=user.api_key_prefix,
            created_at=user.created_at,
            updated_at=user.updated_at,
            limits_data=user_limits(user),
        )


@strawberry.type(description="A user together with a freshly issued API key: the only time the whole key is shown.")
class UserWithKey:
    user: UserType
    api_key: str


@strawberry.type(name="Backend")
class BackendType:
    id: strawberry.ID
    name: str = strawberry.field(
        description="Unique alias; also the [name] in auto-mode model names such as [local]llama-3."
    )
    base_url: str = strawberry.field(description="Credentials in the URL (user:password@) are shown as ***.")
    has_api_key: bool
    model_filter: str | None = strawberry.field(
        description="Space-separated terms that every listed model must contain; * is a wildcard."
    )
    model_override: list[str] | None = strawberry.field(
        description="When set, the backend's model list is exactly this and /models is not asked."
    )
    model_append: list[str] | None = strawberry.field(description="Appended after the (filtered) model list.")
    weight: int
    is_active: bool
    apis: list[BackendApi] = strawberry.field(
        description="The request formats this backend speaks natively (default: all)."
    )
    auth_header: str | None = strawberry.field(
        description="The header the upstream key goes in: authorization (Authorization: Bearer <key>), x-api-key, "
        "or another header name such as api-key (Azure OpenAI), carrying the bare key. "
        "null: chosen from baseUrl (x-api-key for anthropic.com, else authorization).",
    )
    created_at: datetime
    updated_at: datetime
    limits_data: strawberry.Private[lim.Limits] = lim.NO_LIMITS

    @strawberry.field(description="The header the upstream key is sent in: authHeader, or the one baseUrl implies.")
    def effective_auth_header(self) -> str:
        return effective_auth_header(self.base_url, self.auth_header)

    @strawberry.field(description="The models this backend serves, resolved from the above.")
    def models(self, info: Info[AdminContext, None]) -> list[str]:
        return list(info.context.runtime.models.ordered_models_of(int(self.id)))

    @strawberry.field(description="False while the router avoids this backend after repeated failures.")
    def healthy(self, info: Info[AdminContext, None]) -> bool:
        return info.context.runtime.health.is_healthy(int(self.id))

    @strawberry.field(description="Why the backend is unhealthy and since when, and its latest active health check.")
    def health(self, info: Info[AdminContext, None]) -> BackendHealth:
        return BackendHealth.from_status(info.context.runtime.health.status(int(self.id)))

    limits = strawberry.field(resolver=_limits)
    quota = strawberry.field(resolver=_quota("backend"))

    @classmethod
    def from_model(cls, backend: BackendModel) -> BackendType:
        return cls(
            id=strawberry.ID(str(backend.id)),
            name=backend.name,
            base_url=redact_url(backend.base_url),
            has_api_key=bool(backend.api_key),
            model_filter=backend.model_filter,
            model_override=list(backend.model_override) if backend.model_override is not None else None,
            model_append=list(backend.model_append) if backend.model_append is not None else None,
            weight=backend.weight,
            is_active=backend.is_active,
            apis=[BackendApi(api) for api in backend.apis or BACKEND_APIS if api in BACKEND_APIS],
            auth_header=backend.auth_header,
            created_at=backend.created_at,
            updated_at=backend.updated_at,
            limits_data=backend_limits(backend),
        )


def _utc(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


@strawberry.type(description="One active health check: a GET of the backend's /models within HEALTH_CHECK_TIMEOUT_S.")
class HealthCheck:
    at: datetime = strawberry.field(description="When the check was made.")
    ok: bool = strawberry.field(description="The backend answered in time, without a 5xx and without refusing its key.")
    latency_ms: float = strawberry.field(description="Time to the whole answer (or to giving up), in milliseconds.")
    error: str | None = strawberry.field(description="What went wrong, in words; null when ok.")

    @classmethod
    def from_result(cls, result: CheckResult) -> HealthCheck:
        at = datetime.fromtimestamp(result.at, UTC)
        return cls(at=at, ok=result.ok, latency_ms=result.latency_ms, error=result.error)


@strawberry.type(description="A backend's health as this router process sees it (shared across processes with Redis).")
class BackendHealth:
    healthy: bool = strawberry.field(description="False while requests avoid this backend.")
    reason: str | None = strawberry.field(
        description="Why it is unhealthy: the failed health check or the last failed request. Null when healthy."
    )
    since: datetime | None = strawberry.field(description="When it became unhealthy. Null when healthy.")
    retry_at: datetime | None = strawberry.field(
        description="End of the current cooldown: when requests may be tried on it again. Null when healthy."
    )
    last_check: HealthCheck | None = strawberry.field(
        description="The latest active health check (null before the first, or with HEALTH_CHECK_INTERVAL_S=0)."
    )

    @classmethod
    def from_status(cls, status: HealthStatus) -> BackendHealth:
        return cls(
            healthy=status.healthy,
            reason=status.reason,
            since=_utc(status.since),
            retry_at=_utc(status.retry_at),
            last_check=HealthCheck.from_result(status.last_check) if status.last_check else None,
        )


@strawberry.type(description="The result of testConnection: what one GET of the backend's /models found, just now.")
class ConnectionTest:
    backend: BackendType = strawberry.field(description="The backend, with its health after this test.")
    ok: bool = strawberry.field(description="Usable: reachable, no 5xx, key accepted. It counts as a health check.")
    reachable: bool = strawberry.field(description="The backend answered at all (any HTTP status).")
    status_code: int | None = strawberry.field(description="HTTP status of /models; null when there was no answer.")
    latency_ms: float = strawberry.field(description="Time to the whole answer (or to giving up), in milliseconds.")
    models: list[str] = strawberry.field(description="The model ids the backend's /models listed (before filters).")
    error: str | None = strawberry.field(description="What went wrong, in words; null when ok.")


async def load_user(info: Info[AdminContext, None], user_id: int | None) -> UserType | None:
    """The user with this id (batched by the request's DataLoader); None without an id or when it is gone."""
    if user_id is None:
        return None
    user = await info.context.loaders.users.load(user_id)
    return UserType.from_model(user) if user else None


async def load_backend(info: Info[AdminContext, None], backend_id: int | None) -> BackendType | None:
    """The backend with this id (batched by the request's DataLoader); None without an id or when it is gone."""
    if backend_id is None:
        return None
    backend = await info.context.loaders.backends.load(backend_id)
    return BackendType.from_model(backend) if backend else None


@strawberry.type(name="Permission")
class PermissionType:
    id: strawberry.ID
    created_at: datetime
    user_id: strawberry.Private[int]
    backend_id: strawberry.Private[int]

    # Both can be gone when the permission was read just before its user or backend was deleted
    # (deleting either deletes its permissions): a NOT_FOUND error then, not a masked internal one.
    @strawberry.field
    async def user(self, info: Info[AdminContext, None]) -> UserType:
        user = await load_user(info, self.user_id)
        if user is None:
            raise api_error(NOT_FOUND, f"User {self.user_id} of permission {self.id} no longer exists.")
        return user

    @strawberry.field
    async def backend(self, info: Info[AdminContext, None]) -> BackendType:
        backend = await load_backend(info, self.backend_id)
        if backend is None:
            raise api_error(NOT_FOUND, f"Backend {self.backend_id} of permission {self.id} no longer exists.")
        return backend

    @classmethod
    def from_model(cls, permission: PermissionModel) -> PermissionType:
        return cls(
            id=strawberry.ID(str(permission.id)),
            created_at=permission.created_at,
            user_id=permission.user_id,
            backend_id=permission.backend_id,
        )


@strawberry.type(name="Script")
class ScriptObjectType:
    id: strawberry.ID
    name: str
    type: ScriptTypeEnum
    code: str = strawberry.field(
        description="JavaScript defining onRequest(context) and/or onResponse(context), optionally async and exported."
    )
    is_active: bool
    priority: int = strawberry.field(description="Lower runs first among scripts of the same type.")
    created_at: datetime
    updated_at: datetime
    user_id: strawberry.Private[int | None]
    backend_id: strawberry.Private[int | None]

    @strawberry.field(description="Set for PER_USER and PER_USER_BACKEND scripts.")
    async def user(self, info: Info[AdminContext, None]) -> UserType | None:
        return await load_user(info, self.user_id)

    @strawberry.field(description="Set for PER_BACKEND and PER_USER_BACKEND scripts.")
    async def backend(self, info: Info[AdminContext, None]) -> BackendType | None:
        return await load_backend(info, self.backend_id)

    @classmethod
    def from_model(cls, script: ScriptModel) -> ScriptObjectType:
        return cls(
            id=strawberry.ID(str(script.id)),
            name=script.name,
            type=ScriptTypeEnum(str(script.type.value if isinstance(script.type, Enum) else script.type)),
            code=script.code,
            is_active=script.is_active,
            priority=script.priority,
            created_at=script.created_at,
            updated_at=script.updated_at,
            user_id=script.user_id,
            backend_id=script.backend_id,
        )


@strawberry.type
class ScriptTestResult:
    ok: bool
    context: JSON | None = strawberry.field(description="The context as the hook returned it.")
    logs: list[str] = strawberry.field(description="What the script wrote with console.log and friends.")
    error: str | None
    duration_ms: float


# --- analytics -------------------------------------------------------------------------------------


def _opt_id(value: int | None) -> strawberry.ID | None:
    return strawberry.ID(str(value)) if value is not None else None


@strawberry.type(name="RequestLog")
class RequestLogEntry:
    id: strawberry.ID
    request_id: str
    created_at: datetime
    user_id: strawberry.ID | None
    user_name: str | None
    backend_id: strawberry.ID | None
    backend_name: str | None
    model: str | None
    endpoint: str = strawberry.field(description="The /v1 path that was called, e.g. /v1/chat/completions.")
    status_code: int
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = strawberry.field(
        description="Prompt tokens served from the upstream's prompt cache (OpenAI cached_tokens, "
        "Anthropic cache_read_input_tokens)."
    )
    cache_write_tokens: int = strawberry.field(
        description="Prompt tokens written to the upstream's prompt cache (Anthropic cache_creation_input_tokens)."
    )
    reasoning_tokens: int = strawberry.field(
        description="Completion tokens spent on reasoning (completion_tokens_details.reasoning_tokens, "
        "output_tokens_details.reasoning_tokens)."
    )
    latency_ms: float
    time_to_first_token_ms: float | None
    error: str | None
    attempts: int = strawberry.field(description="Upstream attempts made (more than 1 after failover).")
    translated_to: str | None = strawberry.field(
        default=None,
        description="The upstream API path the request was translated to (e.g. /chat/completions for a "
        "/v1/messages call on a chat-only backend); null when it went upstream in the API it was called in.",
    )
    cost_usd: float | None = strawberry.field(
        default=None, description="What this request cost by the matching model price; null when no price matches."
    )
    attempt_errors: list[str] = strawberry.field(
        default_factory=list,
        description="Why each failed attempt failed, in order ('backend: reason'), also when a later attempt "
        "succeeded after failover; empty when the first attempt answered.",
    )
    skipped_before: int = strawberry.field(
        default=0,
        description="requestLogged only: matching requests this subscription left out just before this one "
        "(over its maxPerSecond, or dropped because the client read too slowly); 0 in queries.",
    )

    @classmethod
    def from_row(cls, row: Any) -> RequestLogEntry:
        """From a stored row (RequestLog model) or a live RequestRecord: same attribute names."""
        return cls(
            id=strawberry.ID(str(row.id)),
            request_id=row.request_id,
            created_at=row.created_at,
            user_id=_opt_id(row.user_id),
            user_name=row.user_name,
            backend_id=_opt_id(row.backend_id),
            backend_name=row.backend_name,
            model=row.model,
            endpoint=row.endpoint,
            status_code=row.status_code,
            stream=bool(row.stream),
            prompt_tokens=row.prompt_tokens or 0,
            completion_tokens=row.completion_tokens or 0,
            total_tokens=row.total_tokens or 0,
            cached_tokens=row.cached_tokens or 0,
            cache_write_tokens=row.cache_write_tokens or 0,
            reasoning_tokens=row.reasoning_tokens or 0,
            latency_ms=float(row.latency_ms or 0.0),
            time_to_first_token_ms=row.ttft_ms,
            error=row.error,
            attempts=row.attempts or 0,
            translated_to=row.translated_to,
            cost_usd=getattr(row, "cost_usd", None),
            attempt_errors=_attempt_errors(getattr(row, "attempt_errors", None)),
        )


def _attempt_errors(value: Any) -> list[str]:
    """A stored row holds them as JSON text, a live record as a list."""
    if not value:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    return [str(item) for item in value] if isinstance(value, list) else []


@strawberry.type
class RequestLogPage:
    items: list[RequestLogEntry] = strawberry.field(description="Newest first.")
    total_count: int
    next_cursor: str | None = strawberry.field(description="Pass as `after` for the next page; null on the last page.")


_CURSOR_PREFIX = "log:"


def encode_cursor(log_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{log_id}".encode()).decode()


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
        if not text.startswith(_CURSOR_PREFIX):
            raise ValueError(cursor)
        return int(text[len(_CURSOR_PREFIX) :])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_input("after is not a cursor returned by requestLogs", "after") from None


DEFAULT_PAGE = 50


def page_size(info: Info[AdminContext, None], first: int | None) -> int:
    """`first` as asked (default DEFAULT_PAGE), or BAD_USER_INPUT beyond 1 to GRAPHQL_MAX_PAGE."""
    limit = info.context.settings.graphql_max_page
    size = DEFAULT_PAGE if first is None else first
    if size < 1 or size > limit:
        raise bad_input(f"first must be between 1 and {limit}", "first", max=limit)
    return size


async def request_log_page(
    info: Info[AdminContext, None],
    filter: RequestLogFilter | None,
    first: int | None,
    after: str | None,
    user_id: int | None = None,
) -> RequestLogPage:
    """One page of the request logs that `filter` (and, given, `user_id`) selects, newest first."""
    size = page_size(info, first)
    after_id = decode_cursor(after) if after else None
    page = await analytics_queries.request_log_page(_for_user(log_filter(filter), user_id), size, after_id)
    return RequestLogPage(
        items=[RequestLogEntry.from_row(row) for row in page.items],
        total_count=page.total_count,
        next_cursor=encode_cursor(page.next_after_id) if page.next_after_id is not None else None,
    )


async def usage_rows(
    filter: UsageFilter | None,
    group_by: list[UsageGroupBy] | None,
    bucket: TimeBucket | None,
    user_id: int | None = None,
) -> list[UsageRow]:
    """Usage of the requests that `filter` (and, given, `user_id`) selects, grouped and bucketed as asked."""
    flt = _for_user(log_filter(filter), user_id)
    keys = list(dict.fromkeys(g.value for g in group_by or ()))
    rows = await analytics_queries.usage(flt, keys, bucket.value if bucket else None)
    return [UsageRow.from_data(row) for row in rows]


def _for_user(flt: analytics_queries.LogFilter, user_id: int | None) -> analytics_queries.LogFilter:
    return flt if user_id is None else dataclasses.replace(flt, user_id=user_id)


@strawberry.type
class UsageRow:
    bucket_start: datetime | None = strawberry.field(
        description="Start of the time bucket; null when no bucket was asked for."
    )
    user_id: strawberry.ID | None
    user_name: str | None
    backend_id: strawberry.ID | None
    backend_name: str | None
    model: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    avg_latency_ms: float | None
    cost_usd: float = strawberry.field(
        default=0.0, description="Sum of the requests' cost; requests without a matching price count as 0."
    )
    p50_latency_ms: float | None = strawberry.field(
        default=None,
        description="Median latency (ms) of the row's requests. Filled in usageTicks rows only (null in `usage`): "
        "read from a latency histogram with fixed log-spaced buckets (8 per doubling) that adds up exactly across "
        "seconds and router processes, so it is within about 4.4 % of the exact value.",
    )
    p95_latency_ms: float | None = strawberry.field(
        default=None,
        description="95th-percentile latency (ms) of the row's requests; like p50LatencyMs: usageTicks rows only "
        "(null in `usage`), within about 4.4 %.",
    )

    @classmethod
    def from_data(cls, row: analytics_queries.UsageRow) -> UsageRow:
        """The fields are analytics_queries.UsageRow's (tests/test_graphql_types.py checks), ids as IDs."""
        values = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
        values["user_id"], values["backend_id"] = _opt_id(row.user_id), _opt_id(row.backend_id)
        return cls(**values)


@strawberry.type
class BackendMetrics:
    backend: BackendType
    in_flight: int
    requests: int
    errors: int
    p50_latency_ms: float | None
    p95_latency_ms: float | None


@strawberry.type
class AdminSession:
    token: str
    expires_at: datetime


# --- inputs ----------------------------------------------------------------------------------------


@strawberry.input
class RequestLogFilter:
    request_id: str | None = strawberry.field(default=None, description="Only rows with this X-Request-ID.")
    endpoint: str | None = strawberry.field(default=None, description="Only calls of this path, e.g. /v1/embeddings.")
    user_id: strawberry.ID | None = None
    backend_id: strawberry.ID | None = None
    model: str | None = None
    status_code: int | None = None
    errors_only: bool | None = None
    since: datetime | None = None
    until: datetime | None = None


@strawberry.input
class UsageFilter:
    user_id: strawberry.ID | None = None
    backend_id: strawberry.ID | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def filter_id(value: strawberry.ID | None, field: str) -> int | None:
    """An id used as a filter: must be an integer (BAD_USER_INPUT otherwise)."""
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_input(f"{field} must be an id, got {value!r}", field) from None


class _HasIds(Protocol):
    @property
    def user_id(self) -> int | None: ...

    @property
    def backend_id(self) -> int | None: ...


def ids_filter(user_id: strawberry.ID | None, backend_id: strawberry.ID | None) -> Callable[[_HasIds], bool]:
    """A subscription's userId/backendId arguments as a test of its events (an absent id matches every one)."""
    uid = filter_id(user_id, "userId")
    bid = filter_id(backend_id, "backendId")

    def wanted(item: _HasIds) -> bool:
        return (uid is None or item.user_id == uid) and (bid is None or item.backend_id == bid)

    return wanted


def log_filter(flt: RequestLogFilter | UsageFilter | None) -> analytics_queries.LogFilter:
    if flt is None:
        return analytics_queries.LogFilter()
    since, until = flt.since, flt.until
    if since is not None and until is not None and since > until:
        raise bad_input("filter.since must not be after filter.until", "filter.since")
    return analytics_queries.LogFilter(
        request_id=getattr(flt, "request_id", None),
        endpoint=getattr(flt, "endpoint", None),
        user_id=filter_id(flt.user_id, "filter.userId"),
        backend_id=filter_id(flt.backend_id, "filter.backendId"),
        model=flt.model,
        status_code=getattr(flt, "status_code", None),
        errors_only=bool(getattr(flt, "errors_only", False)),
        since=since,
        until=until,
    )


async def test_context_of(info: Info[AdminContext, None], script: Any, hook: str) -> dict[str, Any]:
    """What `hook` of `script` would get for the latest request of its user/backend (redacted)."""
    rt = info.context.runtime
    return await script_test_context(
        rt.catalog.snapshot, rt.models.ordered_models_of, script.user_id, script.backend_id, hook
    )


@strawberry.input
class CreateUserInput:
    name: str
    email: str | None = None
    all_backends: bool | None = strawberry.field(default=None, description="Default false.")
    is_active: bool | None = strawberry.field(default=None, description="Default true.")


@strawberry.input
class UpdateUserInput:
    name: str | None = strawberry.UNSET
    email: str | None = strawberry.field(default=strawberry.UNSET, description="null clears the e-mail.")
    all_backends: bool | None = strawberry.UNSET
    is_active: bool | None = strawberry.UNSET


@strawberry.input
class CreateBackendInput:
    name: str
    base_url: str
    api_key: str | None = strawberry.field(default=None, description="Write-only: never readable afterwards.")
    model_filter: str | None = None
    model_override: list[str] | None = None
    model_append: list[str] | None = None
    weight: int | None = strawberry.field(default=None, description="Default 1; 0 takes it out of rotation.")
    is_active: bool | None = strawberry.field(default=None, description="Default true.")
    apis: list[BackendApi] | None = strawberry.field(
        default=None, description="The request formats it speaks natively; null or absent: all of them."
    )
    auth_header: str | None = strawberry.field(
        default=None, description="The header the key goes in (see Backend.authHeader); null or absent: from baseUrl."
    )


@strawberry.input
class UpdateBackendInput:
    name: str | None = strawberry.UNSET
    base_url: str | None = strawberry.UNSET
    api_key: str | None = strawberry.field(
        default=strawberry.UNSET, description='Write-only. "" removes the key; null or absent keeps it.'
    )
    model_filter: str | None = strawberry.field(default=strawberry.UNSET, description="null clears the filter.")
    model_override: list[str] | None = strawberry.field(
        default=strawberry.UNSET, description="null clears the override (the list comes from /models again)."
    )
    model_append: list[str] | None = strawberry.field(default=strawberry.UNSET, description="null clears it.")
    weight: int | None = strawberry.UNSET
    is_active: bool | None = strawberry.UNSET
    apis: list[BackendApi] | None = strawberry.field(
        default=strawberry.UNSET, description="null: all request formats again."
    )
    auth_header: str | None = strawberry.field(
        default=strawberry.UNSET, description='See Backend.authHeader; null or "": chosen from baseUrl again.'
    )


@strawberry.input
class CreatePermissionInput:
    user_id: strawberry.ID
    backend_id: strawberry.ID


@strawberry.input
class CreateScriptInput:
    name: str
    type: ScriptTypeEnum
    user_id: strawberry.ID | None = None
    backend_id: strawberry.ID | None = None
    code: str
    is_active: bool | None = strawberry.field(default=None, description="Default false: activate when ready.")
    priority: int | None = strawberry.field(default=None, description="Default 0.")


@strawberry.input
class UpdateScriptInput:
    name: str | None = strawberry.UNSET
    code: str | None = strawberry.UNSET
    user_id: strawberry.ID | None = strawberry.UNSET
    backend_id: strawberry.ID | None = strawberry.UNSET
    priority: int | None = strawberry.UNSET
    is_active: bool | None = strawberry.UNSET


@strawberry.input(
    description="What a script hook is run on: a context shaped like the one the proxy builds "
    "(user, backend, request, response; chunk for ON_STREAM_CHUNK)."
)
class ScriptTestInput:
    hook: ScriptHook
    context: JSON | None = strawberry.field(
        default=None,
        description="The context to run on; when null, scriptTestContext(scriptId, hook) for this script.",
    )


def given(value: Any) -> bool:
    """An input field the client sent (UNSET means absent)."""
    return value is not strawberry.UNSET
