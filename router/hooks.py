"""Script hooks in the request path: which scripts apply, the context they see, and what they may change.

Order: onRequest hooks run per-user, then per-backend, then per-user-backend (each by priority,
then id); onResponse and onStreamChunk run in the reverse order. Each receives what the previous
one returned. A failing hook fails the request with a `script_error`.

What a script hands back is checked here, once, where it is handed over: header names must be
RFC 7230 tokens, values printable without CR/LF/NUL, protected headers cannot be set, statuses
must be real. A body (or stream chunk) a hook left as it was passes on byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from router import errors
from router.catalog import BackendEntry, ScriptEntry, Snapshot, UserEntry
from router.errors import ApiError
from router.scripts import RawJSON, ScriptEngine, ScriptSource
from router.urls import redact_url

_TYPE_ORDER = {"PER_USER": 0, "PER_BACKEND": 1, "PER_USER_BACKEND": 2}
# Headers a script may neither see nor set on the request: framing, hop-by-hop, and credentials the router owns.
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
        "x-api-key",  # the router key as Anthropic clients send it, and Anthropic's upstream key header
        "content-encoding",
    }
)
# ... and on the response the router frames for the client (cookies never come from a script).
PROTECTED_RESPONSE_HEADERS = PROTECTED_HEADERS | {"set-cookie", "set-cookie2", "proxy-authenticate"}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8192
MAX_SCRIPT_HEADERS = 64
_PROMPT_FIELD = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
    "/v1/responses": "input",
    "/v1/messages": "messages",
}


def scripts_for(snapshot: Snapshot, user_id: int | None, backend_id: int | None) -> tuple[ScriptEntry, ...]:
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


def retain_scripts(engine: ScriptEngine, snapshot: Snapshot) -> None:
    """After a catalog reload: free the V8 contexts of scripts deleted, deactivated or changed."""
    engine.retain({s.id: s.version for s in snapshot.active_scripts})


def visible_headers(headers: Mapping[str, str], protected: frozenset[str] = PROTECTED_HEADERS) -> dict[str, str]:
    """What a script sees of a header set: lower-case names, protected ones left out."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in protected}


# --- the context --------------------------------------------------------------------------------


def user_view(user: UserEntry | None) -> dict[str, Any] | None:
    return None if user is None else {"id": user.id, "name": user.name, "email": user.email}


def backend_view(backend: BackendEntry | None, name: str | None = None, base_url: str | None = None) -> dict[str, Any]:
    """A script's view of where the attempt goes (a configured backend, or a proxy target)."""
    if backend is not None:
        return {"id": backend.id, "name": backend.name, "base_url": redact_url(backend.base_url)}
    return {"id": None, "name": name, "base_url": redact_url(base_url) if base_url else base_url}


def build_context(
    user: dict[str, Any] | None,
    backend: dict[str, Any] | None,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: Any,
    is_stream: bool,
) -> dict[str, Any]:
    """THE script context, for live traffic and for `testScript`/`scriptTestContext` alike:
    `{user, backend, request: {method, path, headers, body, isStream}, response: null}`."""
    return {
        "user": user,
        "backend": backend,
        "request": {"method": method, "path": path, "headers": dict(headers), "body": body, "isStream": is_stream},
        "response": None,
    }


def response_view(status: int, headers: Mapping[str, str], body: Any, is_stream: bool) -> dict[str, Any]:
    """`context.response` as onResponse sees it."""
    return {"status": status, "headers": visible_headers(headers), "body": body, "isStream": is_stream}


def stream_chunk_context(context: dict[str, Any]) -> dict[str, Any]:
    """The context onStreamChunk gets: the request body left out (each event crosses into V8)."""
    return {**context, "request": {**context["request"], "body": None}, "chunk": None}


def example_context(
    hook: str,
    user: dict[str, Any] | None,
    backend: dict[str, Any] | None,
    endpoint: str,
    model: str,
    is_stream: bool,
) -> dict[str, Any]:
    """A real-shaped context for testing a script, with the prompt and answer redacted
    (request logs keep no bodies): what `hook` would get for such a request."""
    field = _PROMPT_FIELD.get(endpoint, "messages")
    prompt: Any = [{"role": "user", "content": "[redacted]"}] if field == "messages" else "[redacted]"
    body: dict[str, Any] = {"model": model, field: prompt}
    if is_stream:
        body["stream"] = True
    headers = {"content-type": "application/json", "accept": "application/json", "user-agent": "[redacted]"}
    context = build_context(user, backend, "POST", endpoint, headers, body, is_stream)
    if hook == "onRequest":
        return context
    answer_headers = {"content-type": "text/event-stream" if is_stream else "application/json"}
    answer: Any = None
    if not is_stream:
        message = {"role": "assistant", "content": "[redacted]"}
        answer = {"id": "example", "object": "chat.completion", "model": model}
        answer["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
        answer["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    context["response"] = response_view(200, answer_headers, answer, is_stream)
    if hook == "onStreamChunk":
        context = stream_chunk_context(context)
        delta = {"content": "[redacted]"}
        context["chunk"] = {
            "id": "example",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
    return context


def script_source(script: ScriptEntry) -> ScriptSource:
    return ScriptSource(script.id, script.name, script.code, script.version)


# --- running the hooks ----------------------------------------------------------------------------


async def run_chain(
    engine: ScriptEngine, scripts: tuple[ScriptEntry, ...], hook: str, context: dict[str, Any], request_id: str
) -> dict[str, Any]:
    """Run `hook` of each script in turn; a failure (or bad headers handed over) raises ApiError(500, script_error)."""
    for script in scripts:
        source = script_source(script)
        if not engine.has_hook(source, hook):
            continue
        result = await engine.run_hook(source, hook, context, request_id)
        if not result.ok or result.context is None:
            raise errors.script_failed(script.name, result.error or "hook failed")
        try:
            _check_handed_over(hook, context, result.context)
        except ValueError as exc:
            raise errors.script_failed(script.name, str(exc)) from None
        context = result.context
    return context


def _check_handed_over(hook: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Headers (and an early answer) one hook handed back, checked against what it was given."""
    if hook == "onRequest":
        script_headers(_headers_in(after, "request"), PROTECTED_HEADERS, _headers_in(before, "request") or {})
        if isinstance(after.get("response"), dict):
            response_parts(after["response"], 200)
    elif hook == "onResponse":
        old = _headers_in(before, "response") or {}
        script_headers(_headers_in(after, "response"), PROTECTED_RESPONSE_HEADERS, old)


def _headers_in(context: dict[str, Any], part: str) -> Any:
    holder = context.get(part)
    return holder.get("headers") if isinstance(holder, dict) else None


def script_headers(given: Any, protected: frozenset[str], before: Mapping[str, str]) -> dict[str, str | None]:
    """The headers a script set or changed (name as the script wrote it -> value; None removes), validated.

    Raises ValueError with a message for the client on anything that could not go on the wire
    as one well-formed header line, or that the router keeps for itself.
    """
    if given is None or given == before:  # as they were (most hooks leave them): nothing to check
        return {}
    if not isinstance(given, dict):
        raise ValueError("headers must be an object of name -> string")
    if len(given) > MAX_SCRIPT_HEADERS + len(before):
        raise ValueError(f"too many headers (at most {MAX_SCRIPT_HEADERS} may be set)")
    changes: dict[str, str | None] = {}
    seen: dict[str, str] = {}
    for name, value in given.items():
        if len(name) > MAX_HEADER_NAME or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name[:80]!r} (must be an RFC 7230 token)")
        key = name.lower()
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError(f"header {name!r} must be a string, not {type(value).__name__}")
            value = str(value).strip(" \t")
            if len(value) > MAX_HEADER_VALUE or _BAD_VALUE.search(value):
                raise ValueError(f"invalid value for header {name!r} (control characters or longer than 8 KB)")
        if before.get(key) == value:
            continue
        if key in protected:
            raise ValueError(f"header {name!r} is controlled by the router and cannot be set by a script")
        if key in seen:  # the same name twice in other cases: the last one wins
            del changes[seen[key]]
        seen[key] = name
        changes[name] = value
    return changes


@dataclass(slots=True)
class RequestOutcome:
    """What the onRequest chain decided: an early answer, or the body and headers to forward."""

    context: dict[str, Any]
    body: Any  # the payload dict (the caller's own object when unchanged)
    body_changed: bool
    headers: dict[str, str]
    early: tuple[int, dict[str, str], bytes] | None = None


async def on_request(
    engine: ScriptEngine,
    scripts: tuple[ScriptEntry, ...],
    context: dict[str, Any],
    payload: dict[str, Any],
    request_id: str,
) -> RequestOutcome:
    """Run the onRequest chain on `context` (whose request.body is `payload` or a RawJSON of it)."""
    given = context["request"]["body"]
    before = context["request"]["headers"]
    context = await run_chain(engine, scripts, "onRequest", context, request_id)
    early = early_response(context)
    request = context["request"]
    body = request.get("body")
    changed = body is not given
    if not changed:
        body = payload
    elif not isinstance(body, dict):
        raise errors.script_failed(scripts[-1].name, "request.body must stay a JSON object")
    extra = {k: v for k, v in script_headers(request.get("headers"), PROTECTED_HEADERS, before).items() if v}
    return RequestOutcome(context, body, changed, extra, early)


def early_response(context: dict[str, Any]) -> tuple[int, dict[str, str], bytes] | None:
    """An answer set by onRequest (`context.response`), as (status, headers, body bytes)."""
    response = context.get("response")
    if not isinstance(response, dict):
        return None
    try:
        return response_parts(response, 200)
    except ValueError as exc:
        raise ApiError(500, f"A script set an invalid response: {exc}", "script_error", "script_error") from None


def response_parts(response: dict[str, Any], default_status: int) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body bytes) of a response a script made up; ValueError when it cannot be sent."""
    status = response_status(response, default_status)
    headers = {k: v for k, v in script_headers(response.get("headers"), PROTECTED_RESPONSE_HEADERS, {}).items() if v}
    body = response.get("body")
    payload = encoded_body(body, headers)
    if status in (204, 304) and body not in (None, ""):
        raise ValueError(f"a {status} answer cannot have a body")
    return status, headers, b"" if status in (204, 304) else payload


def encoded_body(body: Any, headers: dict[str, Any]) -> bytes:
    """A body a script set, as bytes: a string as its text, anything else as JSON (and then, unless
    `headers` already name a content-type, `content-type: application/json` is added to them)."""
    if isinstance(body, str):
        return body.encode()
    payload = orjson.dumps(body)
    if not any(k.lower() == "content-type" for k in headers):
        headers["content-type"] = "application/json"
    return payload


def response_status(response: dict[str, Any], default: int) -> int:
    status = response.get("status", default)
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"invalid response status {status!r} (must be an integer from 200 to 599)")
    return status


def response_body_view(body: bytes, parsed: Any) -> Any:
    """The upstream body as onResponse sees it: parsed JSON (kept as its bytes), else its text."""
    if parsed is None and body:
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            return body.decode(errors="replace")
    return RawJSON(body) if body else None


async def on_response(
    engine: ScriptEngine,
    scripts: tuple[ScriptEntry, ...],
    context: dict[str, Any],
    status: int,
    upstream_headers: Mapping[str, str],
    headers: dict[str, str],
    request_id: str,
    body: bytes = b"",
    parsed: Any = None,
    stream: bool = False,
) -> tuple[dict[str, Any], int, dict[str, str], bytes]:
    """Run onResponse on a whole answer, or once before a stream's first event (`stream`, no body).

    Returns (context, status, headers, body) to send. A stream's context keeps its `response` for the
    onStreamChunk hooks, and a stream stays an SSE stream (its content-type is not the hooks' to
    change). Nothing is re-encoded when no script defines onResponse or the hooks left the body as it was.
    """
    chain = tuple(s for s in scripts if engine.has_hook(script_source(s), "onResponse"))
    if not chain and not stream:
        return context, status, headers, body
    given = response_body_view(body, parsed)  # None for a stream
    context["response"] = response_view(status, upstream_headers, given, stream)
    if not chain:
        return context, status, headers, body
    context = await run_chain(engine, chain, "onResponse", context, request_id)
    response = context.get("response")
    if not isinstance(response, dict):
        raise errors.script_failed(chain[-1].name, "response must stay an object")
    try:
        status = response_status(response, status)
        changes = script_headers(response.get("headers"), PROTECTED_RESPONSE_HEADERS, context_headers(upstream_headers))
    except ValueError as exc:
        raise errors.script_failed(chain[-1].name, str(exc)) from None
    new_body = response.get("body")
    if stream:
        changes = {k: v for k, v in changes.items() if k.lower() != "content-type"}
    elif new_body is not given:
        body = encoded_body(new_body, changes)
    return context, status, apply_header_changes(headers, changes), body


async def on_stream_chunk(
    engine: ScriptEngine,
    scripts: tuple[ScriptEntry, ...],
    context: dict[str, Any],
    chunk: Any,
    request_id: str,
) -> tuple[dict[str, Any], Any]:
    """Run onStreamChunk on one parsed event: (context, the chunk to send or None to drop it).

    The chunk is `chunk` itself when the hooks left it as it was: send the event's original bytes.
    """
    context["chunk"] = chunk
    context = await run_chain(engine, scripts, "onStreamChunk", context, request_id)
    return context, context.get("chunk")


def context_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return visible_headers(headers, PROTECTED_RESPONSE_HEADERS)


def apply_header_changes(headers: dict[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """`headers` with script changes applied, names compared case-insensitively (no duplicates)."""
    if not changes:
        return headers
    names = {k.lower() for k in changes}
    out = {k: v for k, v in headers.items() if k.lower() not in names}
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


async def script_test_context(
    snapshot: Snapshot,
    models_of: Callable[[int], Sequence[str]],
    user_id: int | None,
    backend_id: int | None,
    hook: str,
) -> dict[str, Any]:
    """A real-shaped context for testing a script targeting this user and/or backend: built like
    live traffic's from the latest logged request of that user/backend (the other one of the pair,
    endpoint, model, stream flag); prompt and answer are redacted since request logs keep no bodies."""
    from router.models.analytics import RequestLog

    query = RequestLog.all()
    if user_id is not None:
        query = query.filter(user_id=user_id)
    if backend_id is not None:
        query = query.filter(backend_id=backend_id)
    latest = await query.order_by("-id").first()
    if latest is not None:
        user_id = latest.user_id if user_id is None else user_id
        backend_id = latest.backend_id if backend_id is None else backend_id
    user = snapshot.users_by_id.get(user_id) if user_id is not None else None
    backend = snapshot.backends_by_id.get(backend_id) if backend_id is not None else None
    model = latest.model if latest is not None and latest.model else None
    if model is None:
        known = models_of(backend.id) if backend is not None else ()
        model = known[0] if known else "example-model"
    return example_context(
        hook,
        user_view(user) or {"id": user_id, "name": "(example user)", "email": None},
        backend_view(backend) if backend is not None else None,
        latest.endpoint if latest is not None else "/v1/chat/completions",
        model,
        bool(latest.stream) if latest is not None else False,
    )
