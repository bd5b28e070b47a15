"""Script hooks in the request path: which scripts apply, the context they see, and what they may change.

Order: onRequest hooks run per-user, then per-backend, then per-user-backend (each by priority,
then id); onResponse and onStreamChunk run in the reverse order. Each receives what the previous
one returned. A failing hook fails the request with a `script_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from router import errors
from router.catalog import ScriptEntry, Snapshot, UserEntry
from router.errors import ApiError
from router.scripts import ScriptEngine, ScriptSource

_TYPE_ORDER = {"PER_USER": 0, "PER_BACKEND": 1, "PER_USER_BACKEND": 2}
# Headers a script may not set or see: framing, hop-by-hop, and credentials the router owns.
PROTECTED_HEADERS = frozenset(
    {
        "authorization",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "cookie",
        "x-upstream-authorization",
        "content-encoding",
    }
)


def scripts_for(snapshot: Snapshot, user_id: int, backend_id: int | None) -> tuple[ScriptEntry, ...]:
    """The active scripts that apply to this user and backend, in onRequest order."""
    if not snapshot.active_scripts:
        return ()
    applicable = [
        s
        for s in snapshot.active_scripts
        if (s.type == "PER_USER" and s.user_id == user_id)
        or (s.type == "PER_BACKEND" and backend_id is not None and s.backend_id == backend_id)
        or (s.type == "PER_USER_BACKEND" and s.user_id == user_id and s.backend_id == backend_id)
    ]
    applicable.sort(key=lambda s: (_TYPE_ORDER[s.type], s.priority, s.id))
    return tuple(applicable)


def visible_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() not in PROTECTED_HEADERS}


def header_changes(before: Mapping[str, str], after: Any) -> dict[str, str]:
    """Headers a script added or changed (protected ones ignored)."""
    if not isinstance(after, dict):
        return {}
    return {
        str(k): str(v)
        for k, v in after.items()
        if str(k).lower() not in PROTECTED_HEADERS and v is not None and before.get(str(k).lower()) != str(v)
    }


def request_context(
    user: UserEntry,
    backend: dict[str, Any] | None,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    is_stream: bool,
) -> dict[str, Any]:
    return {
        "user": {"id": user.id, "name": user.name, "email": user.email},
        "backend": backend,
        "request": {"method": method, "path": path, "headers": headers, "body": body, "isStream": is_stream},
        "response": None,
    }


def script_source(script: ScriptEntry) -> ScriptSource:
    return ScriptSource(script.id, script.name, script.code, script.version)


async def run_chain(
    engine: ScriptEngine, scripts: tuple[ScriptEntry, ...], hook: str, context: dict[str, Any], request_id: str
) -> dict[str, Any]:
    """Run `hook` of each script in turn; a failure raises ApiError(500, script_error)."""
    for script in scripts:
        source = script_source(script)
        if not engine.has_hook(source, hook):
            continue
        result = await engine.run_hook(source, hook, context, request_id)
        if not result.ok or result.context is None:
            raise errors.script_failed(script.name, result.error or "hook failed")
        context = result.context
    return context


def early_response(context: dict[str, Any]) -> tuple[int, dict[str, str], bytes] | None:
    """An answer set by onRequest (`context.response`), as (status, headers, body bytes)."""
    response = context.get("response")
    if not isinstance(response, dict):
        return None
    return response_parts(response, 200)


def response_parts(response: dict[str, Any], default_status: int) -> tuple[int, dict[str, str], bytes]:
    status = response.get("status", default_status)
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ApiError(500, f"A script set an invalid response status {status!r}.", "script_error", "script_error")
    headers = header_changes({}, response.get("headers") or {})
    body = response.get("body")
    if isinstance(body, (bytes, str)):
        payload = body.encode() if isinstance(body, str) else body
    else:
        payload = orjson.dumps(body)
        headers.setdefault("content-type", "application/json")
    return status, headers, payload
