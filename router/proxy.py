"""THE request path of /v1:

    authenticate -> parse -> pick backends -> onRequest hooks -> forward (with failover)
    -> onResponse hooks -> account

Everything it needs lives on the Runtime (`request.app.state.runtime`); the decisions it makes
(which backends, in what order, what usage a response carries) are plain functions elsewhere.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from router import errors
from router.auth import bearer_token, hash_api_key
from router.catalog import BackendEntry, ScriptEntry, UserEntry, split_alias
from router.errors import ApiError
from router.hooks import (
    early_response,
    header_changes,
    request_context,
    response_parts,
    run_chain,
    script_source,
    scripts_for,
    visible_headers,
)
from router.routing import candidate_backends
from router.runtime import Runtime
from router.upstream import SSESplitter, UpstreamError, UpstreamResponse, sse_data
from router.urls import allowed_proxy_url
from router.usage import RequestRecord, is_usage_only_chunk, usage_of

log = logging.getLogger("router.proxy")

# Request ids: a random per-process prefix and a counter (unique without a syscall per request).
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_counter = itertools.count()

# endpoint -> the field it requires besides `model`
REQUIRED_FIELD = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
}
STREAMABLE = {"/v1/chat/completions", "/v1/completions"}
# Never copied from the upstream's response to the client: the router frames its own response.
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "date",
        "server",
        "set-cookie",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    }
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: a configured backend, or an allow-listed proxy URL."""

    name: str
    base_url: str
    authorization: str | None
    backend: BackendEntry | None = None

    @classmethod
    def of(cls, backend: BackendEntry) -> Target:
        auth = f"Bearer {backend.api_key}" if backend.api_key else None
        return cls(backend.name, backend.base_url, auth, backend)


@dataclass(slots=True)
class Route:
    upstream_model: str
    targets: list[Target]  # in the order to try; health is checked when trying


# --- endpoints --------------------------------------------------------------------------------


async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    request_id = request_id_of(request)
    try:
        user = authenticate(rt, request)
    except ApiError as err:
        return err.response({"x-request-id": request_id})
    body = {"object": "list", "data": model_list(rt, user)}
    return Response(orjson.dumps(body), media_type="application/json", headers={"x-request-id": request_id})


def model_list(rt: Runtime, user: UserEntry) -> list[dict[str, Any]]:
    """OpenAI's model list for `user`: plain ids deduplicated across backends, or `[alias]model`."""
    aliased = rt.settings.model_list_style == "aliased"
    seen: dict[str, dict[str, Any]] = {}
    for backend in rt.catalog.snapshot.backends_by_id.values():
        if not backend.is_active or not user.may_use(backend.id):
            continue
        for model in rt.models.ordered_models_of(backend.id):
            model_id = f"[{backend.name}]{model}" if aliased else model
            seen.setdefault(model_id, {"id": model_id, "object": "model", "created": 0, "owned_by": backend.name})
    return list(seen.values())


async def handle_generation(request: Request) -> Response:
    """POST /v1/chat/completions, /v1/completions and /v1/embeddings."""
    rt: Runtime = request.app.state.runtime
    endpoint = request.scope["path"]  # not request.url: building a URL parses the Host header
    record = RequestRecord(request_id=request_id_of(request), endpoint=endpoint)
    try:
        user = authenticate(rt, request)
        record.user_id, record.user_name = user.id, user.name
        raw_body = await read_body(request, rt.settings.max_request_body_bytes)
        payload = parse_payload(raw_body, endpoint)
        record.model = payload["model"]
        record.stream = payload.get("stream") is True and endpoint in STREAMABLE
        if rt.tracer.enabled:
            record.input = payload.get(REQUIRED_FIELD[endpoint])
        route = plan_route(rt, user, payload["model"], request)
        return await forward(rt, request, record, user, route, payload, raw_body)
    except ApiError as err:
        rt.finish(record, err.status, err.message)
        return err.response({"x-request-id": record.request_id})
    except Exception as exc:  # a bug must still give an OpenAI-shaped answer and a log row
        log.exception("request %s failed unexpectedly", record.request_id)
        rt.finish(record, 500, f"internal error: {exc.__class__.__name__}")
        return errors.internal_error().response({"x-request-id": record.request_id})


# --- the steps --------------------------------------------------------------------------------


def request_id_of(request: Request) -> str:
    incoming = request.headers.get("x-request-id")
    if incoming and len(incoming) <= 128 and incoming.isprintable():
        return incoming
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):016x}"


def authenticate(rt: Runtime, request: Request) -> UserEntry:
    """The user behind the request's API key (or the local user when accounts are off)."""
    if rt.local_user is not None:
        return rt.local_user
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise errors.unauthorized("Missing API key: send 'Authorization: Bearer <your router key>'.")
    user = rt.catalog.snapshot.users_by_key_hash.get(hash_api_key(token))
    if user is None:
        raise errors.unauthorized("Invalid API key.")
    if not user.is_active:
        raise errors.unauthorized("This API key's user is deactivated.")
    return user


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise errors.too_large(limit / 1024 / 1024)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.too_large(limit / 1024 / 1024)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_payload(body: bytes, endpoint: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"The request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(payload, dict):
        raise errors.bad_request("The request body must be a JSON object.", "invalid_json")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise errors.bad_request("Missing required parameter: 'model'.", "missing_required_parameter")
    required = REQUIRED_FIELD[endpoint]
    if payload.get(required) is None:
        raise errors.bad_request(f"Missing required parameter: '{required}'.", "missing_required_parameter")
    return payload


def plan_route(rt: Runtime, user: UserEntry, model: str, request: Request) -> Route:
    """Decide where the request may go: proxy mode, auto mode (`[alias]model`), or by model."""
    proxy_url = request.query_params.get("proxy") if request.scope["query_string"] else None
    alias, bare_model = split_alias(model)
    if proxy_url is None and alias is not None and "://" in alias:
        proxy_url = alias
    if proxy_url is not None:
        return Route(bare_model, [proxy_target(rt, user, proxy_url, request)])
    snapshot = rt.catalog.snapshot
    if alias is not None:
        backend = snapshot.backends_by_name.get(alias)
        if backend is None or not backend.is_active:
            raise errors.model_not_found(model)
        if not user.may_use(backend.id):
            raise errors.forbidden(f"You are not allowed to use backend '{alias}'.")
        return Route(bare_model, [Target.of(backend)])
    candidates, any_forbidden = candidate_backends(snapshot.backends_by_id.values(), rt.models.models_of, user, model)
    if not candidates:
        if any_forbidden:
            raise errors.forbidden(f"You are not allowed to use model '{model}'.")
        raise errors.model_not_found(model)
    return Route(model, [Target.of(b) for b in rt.order_backends(candidates)])


def proxy_target(rt: Runtime, user: UserEntry, url: str, request: Request) -> Target:
    """An allow-listed URL for proxy mode; anything else is refused (no open relay)."""
    if rt.settings.proxy_allowlist and not user.all_backends:
        raise errors.forbidden("Proxy mode needs a user allowed every backend.")
    url = allowed_proxy_url(url, rt.settings.proxy_allowlist)  # normalised, allow-listed, or a 403
    return Target(f"proxy:{urlsplit(url).netloc}", url, request.headers.get("x-upstream-authorization"))


def upstream_headers(target: Target, request_id: str, extra: dict[str, str] | None) -> dict[str, str]:
    """What the upstream gets: our framing, its key (never the user's), the request id, script headers."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if extra:
        headers.update(extra)
    headers["X-Request-ID"] = request_id
    if target.authorization:
        headers["Authorization"] = target.authorization
    return headers


def response_headers(upstream: UpstreamResponse, request_id: str) -> dict[str, str]:
    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS}
    headers["x-request-id"] = request_id
    return headers


@dataclass(slots=True)
class Hooks:
    """The scripts of one attempt and the context they passed along (None when no script applies)."""

    scripts: tuple[ScriptEntry, ...] = ()
    context: dict[str, Any] | None = None

    @property
    def reversed(self) -> tuple[ScriptEntry, ...]:
        return self.scripts[::-1]


async def forward(
    rt: Runtime,
    request: Request,
    record: RequestRecord,
    user: UserEntry,
    route: Route,
    payload: dict,
    raw_body: bytes,
) -> Response:
    """Try the targets in order; retry on connect errors, timeouts, 429 and 5xx before any byte is sent."""
    # The client's bytes go upstream as they came unless something must change in them.
    untouched = route.upstream_model == payload["model"] and not record.stream
    payload["model"] = route.upstream_model
    suffix = request.scope["path"][len("/v1") :]
    last_error: ApiError | None = None
    tried = 0
    for target in route.targets:
        if tried >= rt.settings.max_attempts:
            break
        backend = target.backend
        if backend is not None and not rt.health.is_available(backend.id):
            continue
        tried += 1
        record.attempts = tried
        record.backend_id = backend.id if backend else None
        record.backend_name = target.name

        hooks = Hooks(scripts_for(rt.catalog.snapshot, user.id, record.backend_id))
        body, extra_headers = payload, None
        if hooks.scripts:
            client_headers = visible_headers(request.headers)
            hooks.context = await run_chain(
                rt.scripts,
                hooks.scripts,
                "onRequest",
                request_context(
                    user,
                    _backend_view(target),
                    "POST",
                    request.scope["path"],
                    client_headers,
                    payload,
                    record.stream,
                ),
                record.request_id,
            )
            early = early_response(hooks.context)
            if early is not None:
                return answer_from_script(rt, record, early)
            body = hooks.context["request"].get("body")
            if not isinstance(body, dict):
                raise errors.script_failed(hooks.scripts[0].name, "request.body must stay a JSON object")
            record.model = body.get("model", record.model)
            extra_headers = header_changes(client_headers, hooks.context["request"].get("headers"))
        strip_usage_chunk = record.stream and not _client_wants_usage(body)
        if untouched and not hooks.scripts:
            wire_body = raw_body
        else:
            wire_body = orjson.dumps(with_stream_usage(body) if record.stream else body)

        rt.enter(backend)
        try:
            upstream = await rt.upstream.send(
                "POST",
                target.base_url + suffix,
                upstream_headers(target, record.request_id, extra_headers),
                wire_body,
                record.stream,
            )
        except UpstreamError as exc:
            rt.leave(backend)
            rt.record_failure(backend)
            last_error = (
                errors.upstream_timeout()
                if exc.kind == "timeout"
                else errors.upstream_failed(f"Backend '{target.name}' could not be reached.")
            )
            record.error = f"{target.name}: {exc}"
            continue
        retryable = upstream.status == 429 or upstream.status >= 500
        if retryable and tried < rt.settings.max_attempts and _has_next(rt, route, target):
            await upstream.close()
            rt.leave(backend)
            if upstream.status >= 500:
                rt.record_failure(backend)
            record.error = f"{target.name}: HTTP {upstream.status}"
            continue
        if upstream.status >= 500:
            rt.record_failure(backend)
        else:
            rt.record_success(backend)
        record.error = None
        is_sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        if record.stream and upstream.status == 200 and is_sse:
            return await stream_response(rt, record, upstream, backend, strip_usage_chunk, hooks)
        return await plain_response(rt, record, upstream, backend, hooks)
    if last_error is None:
        last_error = errors.no_healthy_backend(record.model or "")
    raise last_error


def _backend_view(target: Target) -> dict[str, Any]:
    backend = target.backend
    return {"id": backend.id if backend else None, "name": target.name, "base_url": target.base_url}


def with_stream_usage(body: dict) -> dict:
    """Ask the upstream to report usage in its last stream chunk."""
    return {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}


def answer_from_script(rt: Runtime, record: RequestRecord, early: tuple[int, dict[str, str], bytes]) -> Response:
    status, headers, content = early
    record.attempts = 0
    rt.finish(record, status)
    headers["x-request-id"] = record.request_id
    return Response(content, status_code=status, headers=headers)


def _has_next(rt: Runtime, route: Route, current: Target) -> bool:
    index = route.targets.index(current)
    return any(t.backend is None or rt.health.is_healthy(t.backend.id) for t in route.targets[index + 1 :])


def _client_wants_usage(payload: dict) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def plain_response(
    rt: Runtime, record: RequestRecord, upstream: UpstreamResponse, backend: BackendEntry | None, hooks: Hooks
) -> Response:
    try:
        body = await upstream.read()
    except UpstreamError as exc:
        err = errors.upstream_timeout() if exc.kind == "timeout" else errors.upstream_failed(str(exc))
        raise err from None
    finally:
        rt.leave(backend)
    record.ttft_ms = (time.time() - record.started_at) * 1000.0
    parsed = None
    error = None
    if upstream.status < 400:
        if b'"usage"' in body or rt.tracer.enabled:
            parsed = _loads(body)
            record.set_usage(usage_of(parsed))
            if rt.tracer.enabled:
                record.output = parsed
    else:
        error = f"upstream HTTP {upstream.status}: {body[:500].decode(errors='replace')}"
    status, headers = upstream.status, response_headers(upstream, record.request_id)
    if hooks.context is not None:
        hooks.context["response"] = {
            "status": status,
            "headers": visible_headers(upstream.headers),
            "body": parsed if parsed is not None else (_loads(body) if body else None),
            "isStream": False,
        }
        context = await run_chain(rt.scripts, hooks.reversed, "onResponse", hooks.context, record.request_id)
        status, changed_headers, body = response_parts(context.get("response") or {}, status)
        headers.update(changed_headers)
    rt.finish(record, upstream.status, error)
    return Response(body, status_code=status, headers=headers)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def stream_response(
    rt: Runtime,
    record: RequestRecord,
    upstream: UpstreamResponse,
    backend: BackendEntry | None,
    strip_usage_chunk: bool,
    hooks: Hooks,
) -> StreamingResponse:
    status, headers = upstream.status, response_headers(upstream, record.request_id)
    if hooks.context is not None:
        hooks.context["response"] = {
            "status": status,
            "headers": visible_headers(upstream.headers),
            "body": None,
            "isStream": True,
        }
        try:
            hooks.context = await run_chain(rt.scripts, hooks.reversed, "onResponse", hooks.context, record.request_id)
        except BaseException:
            await upstream.close()
            rt.leave(backend)
            raise
        response = hooks.context.get("response") or {}
        status = response.get("status", status) if isinstance(response.get("status"), int) else status
        headers.update(header_changes({}, response.get("headers") or {}))
        headers["content-type"] = "text/event-stream"
    return StreamingResponse(
        relay_events(rt, record, upstream, backend, strip_usage_chunk, hooks),
        status_code=status,
        headers=headers,
    )


async def relay_events(
    rt: Runtime,
    record: RequestRecord,
    upstream: UpstreamResponse,
    backend: BackendEntry | None,
    strip_usage_chunk: bool,
    hooks: Hooks,
) -> AsyncIterator[bytes]:
    """Forward SSE events one by one as they arrive; read usage from the final chunk."""
    splitter = SSESplitter()
    collect = rt.tracer.enabled
    chunk_scripts = tuple(s for s in hooks.reversed if rt.scripts.has_hook(script_source(s), "onStreamChunk"))
    if chunk_scripts:  # each event crosses into V8: leave the (possibly large) request body out
        chunk_context = {**hooks.context, "request": {**hooks.context["request"], "body": None}}
    pieces: list[str] = []
    status, error = 200, None
    try:
        inspect_every_event = collect or bool(chunk_scripts)
        async for chunk in upstream.iter_chunks():
            if not inspect_every_event and splitter.is_clean(chunk) and b'"usage"' not in chunk:
                # Whole events with nothing to read in them (the common case): forward as they came.
                if record.ttft_ms is None:
                    record.ttft_ms = (time.time() - record.started_at) * 1000.0
                yield chunk
                continue
            out = []
            for event in splitter.feed(chunk):
                if not inspect_every_event and b'"usage"' not in event:
                    out.append(event)
                    continue
                data = sse_data(event)
                if data is None or data == b"[DONE]":
                    out.append(event)
                    continue
                parsed = _loads(data) if (b'"usage"' in data or collect or chunk_scripts) else None
                usage = usage_of(parsed)
                if usage:
                    record.set_usage(usage)
                    if strip_usage_chunk and is_usage_only_chunk(parsed):
                        continue
                if collect:
                    pieces.append(_delta_text(parsed))
                if chunk_scripts and parsed is not None:
                    chunk_context["chunk"] = parsed
                    chunk_context = await run_chain(
                        rt.scripts, chunk_scripts, "onStreamChunk", chunk_context, record.request_id
                    )
                    if chunk_context.get("chunk") is None:
                        continue
                    event = b"data: " + orjson.dumps(chunk_context["chunk"]) + b"\n\n"
                out.append(event)
            if out:
                if record.ttft_ms is None:
                    record.ttft_ms = (time.time() - record.started_at) * 1000.0
                yield b"".join(out)
        rest = splitter.rest()
        if rest.strip():
            yield rest
    except UpstreamError as exc:
        error = f"stream interrupted: {exc}"
        status = 504 if exc.kind == "timeout" else 502
        yield b"data: " + errors.upstream_failed(f"The upstream stream broke off: {exc}").body() + b"\n\n"
    except ApiError as exc:  # a failing onStreamChunk: end the stream with the error
        error, status = exc.message, exc.status
        yield b"data: " + exc.body() + b"\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        error = "client disconnected"
        status = 499
        raise
    except Exception as exc:
        log.exception("stream %s failed unexpectedly", record.request_id)
        error, status = f"internal error: {exc.__class__.__name__}", 500
        yield b"data: " + errors.internal_error().body() + b"\n\n"
    finally:
        await upstream.close()
        rt.leave(backend)
        if collect:
            record.output = "".join(pieces)
        rt.finish(record, status, error)


def _delta_text(chunk: Any) -> str:
    """The text a stream chunk adds (chat `delta.content` or completion `text`)."""
    try:
        choice = chunk["choices"][0]
    except (KeyError, IndexError, TypeError):
        return ""
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""
