"""Mutation root: every change goes through AdminService, which reloads the catalog at once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import strawberry
from starlette.responses import Response
from strawberry.scalars import JSON
from strawberry.types import Info

from graphql_schema.context import DEVICE_COOKIE, DEVICE_COOKIE_MAX_AGE_S, AdminContext, too_many_attempts
from graphql_schema.errors import DISABLED_MESSAGE, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED, api_error, bad_input
from graphql_schema.quotas import QuotaMutation
from graphql_schema.types import (
    AdminSession,
    BackendType,
    ConnectionTest,
    CreateBackendInput,
    CreatePermissionInput,
    CreateScriptInput,
    CreateUserInput,
    PermissionType,
    ScriptObjectType,
    ScriptTestInput,
    ScriptTestResult,
    UpdateBackendInput,
    UpdateScriptInput,
    UpdateUserInput,
    UserType,
    UserWithKey,
    given,
    test_context_of,
)
from router.scripts import ScriptSource, validate

Ctx = Info[AdminContext, None]


async def check_code(code: str) -> None:
    """Refuse JavaScript that does not parse (BAD_USER_INPUT naming `code`, with the line)."""
    # The validator parses in its own V8 context under a lock: keep the event loop free meanwhile.
    problem = await validate(code)
    if problem is not None:
        where = f" at line {problem.line}" if problem.line else ""
        raise bad_input(f"code is not a valid script{where}: {problem.message}", "code", line=problem.line)


def _changes(inp: Any, names: dict[str, str]) -> dict[str, Any]:
    """Service keyword arguments for the input fields the client sent (absent ones are left out)."""
    return {service: getattr(inp, attr) for attr, service in names.items() if given(getattr(inp, attr))}


_BACKEND_FIELDS = {
    "name": "name",
    "base_url": "base_url",
    "api_key": "api_key",
    "model_filter": "model_filter",
    "model_override": "model_override",
    "model_append": "model_append",
    "weight": "weight",
    "is_active": "is_active",
    "apis": "apis",
    "auth_header": "auth_header",
}


def _backend_changes(inp: CreateBackendInput | UpdateBackendInput) -> dict[str, Any]:
    changes = _changes(inp, _BACKEND_FIELDS)
    if changes.get("apis") is not None:
        changes["apis"] = [api.value for api in changes["apis"]]
    return changes


def _remember_device(context: AdminContext) -> None:
    """Give a browser that just logged in a device cookie: its failed logins then count against it
    alone, so guesses from the same address cannot lock it out (see AdminSecurity)."""
    response = context.response
    if not isinstance(response, Response) or context.who.startswith("device:"):
        return
    response.set_cookie(
        DEVICE_COOKIE,
        context.security.issue_device(),
        max_age=DEVICE_COOKIE_MAX_AGE_S,
        path="/graphql",
        httponly=True,
        samesite="strict",
        secure=context.request.url.scheme == "https",
    )


@strawberry.type
class Mutation(QuotaMutation):
    @strawberry.mutation(description="Exchange the admin password for an expiring session token.")
    async def login(self, info: Ctx, password: str) -> AdminSession:
        context = info.context
        security = context.security
        if not security.enabled:
            raise api_error(FORBIDDEN, DISABLED_MESSAGE)
        who = context.who or context.address
        if security.throttle.retry_after(who) > 0:
            # Refused without looking at the password (the same answer whether it is right or not);
            # hammering on extends the wait.
            security.throttle.failure(who)
            raise too_many_attempts(security.throttle.retry_after(who))
        if not security.tokens.check_password(password):
            security.throttle.failure(who)
            raise api_error(UNAUTHENTICATED, "Wrong admin password.")
        security.throttle.success(who)
        _remember_device(context)
        token, expires = security.tokens.issue()
        return AdminSession(token=token, expires_at=datetime.fromtimestamp(expires, UTC))

    @strawberry.mutation(
        description="End the session whose token authenticates this request: the token stops working at once, "
        "in every router process. The admin password itself cannot be logged out (change it instead)."
    )
    async def logout(self, info: Ctx) -> bool:
        context = info.context
        expiry = context.security.tokens.session_expiry(context.token)
        if context.token is None or expiry is None:
            raise bad_input("Only a session token from `login` can be logged out; this request used the password.")
        await context.security.revocations.revoke(context.token, expiry)
        return True

    # --- users ---

    @strawberry.mutation(description="Create a user; its API key is in the answer and never again.")
    async def create_user(self, info: Ctx, input: CreateUserInput) -> UserWithKey:
        user, key = await info.context.admin.create_user(
            input.name,
            email=input.email,
            all_backends=bool(input.all_backends),
            is_active=input.is_active is not False,
        )
        return UserWithKey(user=UserType.from_model(user), api_key=key)

    @strawberry.mutation(description="Change a user; isActive false locks its key out from the next request.")
    async def update_user(self, info: Ctx, id: strawberry.ID, input: UpdateUserInput) -> UserType:
        changes = _changes(input, {"name": "name", "email": "email", "all_backends": "all_backends"})
        if given(input.is_active):
            changes["is_active"] = input.is_active
        user = await info.context.admin.update_user(id, **changes)
        return UserType.from_model(user)

    @strawberry.mutation(description="Let the user's key work again (isActive true).")
    async def activate_user(self, info: Ctx, id: strawberry.ID) -> UserType:
        return UserType.from_model(await info.context.admin.update_user(id, is_active=True))

    @strawberry.mutation(description="Lock the user's key out from the next request (isActive false); nothing deleted.")
    async def deactivate_user(self, info: Ctx, id: strawberry.ID) -> UserType:
        return UserType.from_model(await info.context.admin.update_user(id, is_active=False))

    @strawberry.mutation(description="Delete a user with its permissions and scripts; its request logs stay.")
    async def delete_user(self, info: Ctx, id: strawberry.ID) -> bool:
        await info.context.admin.delete_user(id)
        return True

    @strawberry.mutation(description="Issue a new API key; the old one stops working at once.")
    async def regenerate_api_key(self, info: Ctx, id: strawberry.ID) -> UserWithKey:
        user, key = await info.context.admin.regenerate_key(id)
        return UserWithKey(user=UserType.from_model(user), api_key=key)

    # --- backends ---

    @strawberry.mutation
    async def create_backend(self, info: Ctx, input: CreateBackendInput) -> BackendType:
        fields = {k: v for k, v in _backend_changes(input).items() if v is not None}
        backend = await info.context.admin.create_backend(**fields)
        return BackendType.from_model(backend)

    @strawberry.mutation
    async def update_backend(self, info: Ctx, id: strawberry.ID, input: UpdateBackendInput) -> BackendType:
        backend = await info.context.admin.update_backend(id, **_backend_changes(input))
        return BackendType.from_model(backend)

    @strawberry.mutation(
        description="Ask the backend for its /models now (within HEALTH_CHECK_TIMEOUT_S): reachability, latency, "
        "models found. The result counts as a health check: a passing test marks a backend that failed its "
        "checks healthy again."
    )
    async def test_backend_connection(self, info: Ctx, id: strawberry.ID) -> ConnectionTest:
        model = await info.context.admin.get_backend(id)
        runtime = info.context.runtime
        entry = runtime.catalog.snapshot.backends_by_id.get(model.id)
        if entry is None:  # created by another process a moment ago
            entry = (await runtime.catalog.reload()).backends_by_id.get(model.id)
        if entry is None:
            raise api_error(NOT_FOUND, f"backend {id} does not exist")
        test = await runtime.checker.test(entry)
        return ConnectionTest(
            backend=BackendType.from_model(model),
            ok=test.ok,
            reachable=test.probe.status is not None,
            status_code=test.probe.status,
            latency_ms=test.probe.latency_ms,
            models=list(test.probe.models or ()),
            error=test.problem if test.problem else test.probe.error,
        )

    @strawberry.mutation(description="Let requests use this backend again (isActive true).")
    async def activate_backend(self, info: Ctx, id: strawberry.ID) -> BackendType:
        return BackendType.from_model(await info.context.admin.update_backend(id, is_active=True))

    @strawberry.mutation(description="Stop routing requests to this backend (isActive false); nothing is deleted.")
    async def deactivate_backend(self, info: Ctx, id: strawberry.ID) -> BackendType:
        return BackendType.from_model(await info.context.admin.update_backend(id, is_active=False))

    @strawberry.mutation(description="Delete a backend with its permissions and scripts; its request logs stay.")
    async def delete_backend(self, info: Ctx, id: strawberry.ID) -> bool:
        await info.context.admin.delete_backend(id)
        return True

    # --- permissions ---

    @strawberry.mutation
    async def create_permission(self, info: Ctx, input: CreatePermissionInput) -> PermissionType:
        permission = await info.context.admin.create_permission(input.user_id, input.backend_id)
        return PermissionType.from_model(permission)

    @strawberry.mutation
    async def delete_permission(self, info: Ctx, user_id: strawberry.ID, backend_id: strawberry.ID) -> bool:
        return await info.context.admin.delete_permission(user_id, backend_id)

    # --- scripts ---

    @strawberry.mutation
    async def create_script(self, info: Ctx, input: CreateScriptInput) -> ScriptObjectType:
        await check_code(input.code)
        script = await info.context.admin.create_script(
            name=input.name,
            type=input.type.value,
            user_id=input.user_id,
            backend_id=input.backend_id,
            code=input.code,
            is_active=bool(input.is_active),
            priority=input.priority,
        )
        return ScriptObjectType.from_model(script)

    @strawberry.mutation
    async def update_script(self, info: Ctx, id: strawberry.ID, input: UpdateScriptInput) -> ScriptObjectType:
        if given(input.code) and input.code is not None:
            await check_code(input.code)
        changes = _changes(
            input,
            {
                "name": "name",
                "code": "code",
                "user_id": "user_id",
                "backend_id": "backend_id",
                "priority": "priority",
                "is_active": "is_active",
            },
        )
        script = await info.context.admin.update_script(id, **changes)
        return ScriptObjectType.from_model(script)

    @strawberry.mutation
    async def delete_script(self, info: Ctx, id: strawberry.ID) -> bool:
        await info.context.admin.delete_script(id)
        return True

    @strawberry.mutation
    async def activate_script(self, info: Ctx, id: strawberry.ID) -> ScriptObjectType:
        return ScriptObjectType.from_model(await info.context.admin.update_script(id, is_active=True))

    @strawberry.mutation
    async def deactivate_script(self, info: Ctx, id: strawberry.ID) -> ScriptObjectType:
        return ScriptObjectType.from_model(await info.context.admin.update_script(id, is_active=False))

    @strawberry.mutation(
        description="Runs one hook of a saved script on the given context without touching live traffic."
    )
    async def test_script(self, info: Ctx, id: strawberry.ID, input: ScriptTestInput) -> ScriptTestResult:
        script = await info.context.admin.get_script(id)
        context: object = input.context
        if context is None:
            context = await test_context_of(info, script, input.hook.value)
        if not isinstance(context, dict):
            raise bad_input("input.context must be a JSON object", "input.context")
        # A context of its own, closed afterwards: the test shares no V8 globals or lock with live
        # traffic; it runs where live scripts run (SCRIPT_ISOLATION), so it is isolated as much.
        source = ScriptSource(script.id, script.name, script.code, script.updated_at.isoformat())
        result = await info.context.runtime.scripts.run_once(source, input.hook.value, context)
        return ScriptTestResult(
            ok=result.ok,
            context=None if result.context is None else JSON(result.context),
            logs=list(result.logs),
            error=result.error,
            duration_ms=result.duration_ms,
        )
