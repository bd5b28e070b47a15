"""THE request path of /v1:

    authenticate -> parse -> pick backends -> onRequest hooks -> forward (with failover)
    -> onResponse hooks -> account

Everything it needs lives on the Runtime (`request.app.state.runtime`); the decisions it makes
(which backends, in what order, what usage a response carries) are plain functions elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from router import errors, protocols
from router.affinity import MAX_RESPONSE_ID, Binding
from router.auth import authenticate
from router.bodies import MAX_JSON_DEPTH, ensure_json_depth
from router.catalog import BackendEntry, ScriptEntry, Snapshot, UserEntry, split_alias
from router.errors import ApiError
from router.hooks import (
    backend_view,
    build_context,
    on_request,
    on_response,
    on_stream_chunk,
    script_source,
    scripts_for,
    stream_chunk_context,
    user_view,
    visible_headers,
)
from router.limits import NOT_LIMITED, LimitExceeded, add_limit_headers, answer_headers
from router.model_lists import close_model_names
from router.protocols import DROP, Adapter, translate
from router.protocols.anthropic import anthropic_model_list
from router.routing import candidate_backends
from router.runtime import Runtime
from router.scripts import RawJSON
from router.upstream import (
    AnswerTooLarge,
    SSESplitter,
    UpstreamError,
    UpstreamResponse,
    last_sse_event,
    sse_data,
    sse_event_around,
    sse_event_name,
)
from router.upstream_auth import upstream_auth
from router.urls import allowed_proxy_url
from router.usage import RequestRecord

log = logging.getLogger("router.proxy")

# Request ids: a random per-process prefix and a counter (unique without a syscall per request).
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_counter = itertools.count()

# Upstream response headers a client receives; everything else (the upstream account's rate limits,
# vendor headers such as x-litellm-*, cookies, framing) stops at the router. UPSTREAM_RESPONSE_HEADERS
# adds names (or `prefix*` patterns).
PASSED_RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "content-disposition",
        "cache-control",
        "retry-after",
        "openai-processing-ms",
        "openai-version",
        "x-processing-ms",
        "request-id",
        "x-upstream-request-id",
    }
)


def header_allowed(name: str, extra: tuple[str, ...]) -> bool:
    """Whether an upstream response header reaches the client (`extra`: lower-case names or `prefix*`)."""
    lowered = name.lower()
    if lowered in PASSED_RESPONSE_HEADERS:
        return True
    return any(lowered.startswith(e[:-1]) if e.endswith("*") else lowered == e for e in extra)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: a configured backend, or an allow-listed proxy URL."""

    name: str
    base_url: str
    authorization: str | None
    backend: BackendEntry | None = None
    api: Adapter | None = None  # the API it is asked in when it does not speak the client's (translation)

    key_header: str = "Authorization"  # the backend's authHeader (router/upstream_auth.py)

    @classmethod
    def of(cls, backend: BackendEntry, api: Adapter | None = None) -> Target:
        auth = upstream_auth(backend.base_url, backend.auth_header, backend.api_key)
        if auth is None:
            return cls(backend.name, backend.base_url, None, backend, api)
        return cls(backend.name, backend.base_url, auth[1], backend, api, auth[0])


@dataclass(slots=True)
class RoutePlan:
    """Where one request may go: the model name upstreams get, and the targets to try."""

    upstream_model: str
    targets: list[Target]  # in the order to try; health is checked when trying
    unlimited: bool = False  # neither the user nor any target's backend has limits (no limiter to ask)


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """What routing by model decides for one (user, model, client API) until the catalog snapshot or the
    model lists change (kept in `Snapshot.routes`): the permitted candidates in catalog order, the target
    of each that speaks the API, and the whole plan when there is a single candidate (nothing to order)."""

    user: UserEntry
    models_version: int
    candidates: list[BackendEntry]
    targets: dict[int, Target]  # backend id -> its target (backends that speak neither API are absent)
    plan: RoutePlan | None
    unlimited: bool


MAX_CACHED_ROUTES = 4096


# --- endpoints --------------------------------------------------------------------------------


async def list_models(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    request_id = request_id_of(request)
    try:
        user = authenticate(request.headers, rt.catalog.snapshot, rt.local_user)
    except ApiError as err:
        return err.response({"x-request-id": request_id})
    models = model_list(rt, user)
    # Anthropic clients (Claude Code's model discovery) send anthropic-version and read Anthropic's list.
    if "anthropic-version" in request.headers:
        body = anthropic_model_list(models)
    else:
        body = {"object": "list", "data": models}
    return Response(orjson.dumps(body), media_type="application/json", headers={"x-request-id": request_id})


async def retrieve_model(request: Request) -> Response:
    """GET /v1/models/{model}: OpenAI's model object, or its 404 for a model the caller may not use."""
    rt: Runtime = request.app.state.runtime
    request_id = request_id_of(request)
    try:
        user = authenticate(request.headers, rt.catalog.snapshot, rt.local_user)
        model_id = str(request.path_params["model"])
        found = next((m for m in model_list(rt, user) if m["id"] == model_id), None)
        if found is None:
            raise errors.model_not_found(model_id[:200])
    except ApiError as err:
        return err.response({"x-request-id": request_id})
    return Response(orjson.dumps(found), media_type="application/json", headers={"x-request-id": request_id})


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
    """POST to an API in `router.protocols.ADAPTERS`: the pipeline, top to bottom."""
    rt: Runtime = request.app.state.runtime
    endpoint = request.scope["path"]  # not request.url: building a URL parses the Host header
    adapter = protocols.ADAPTERS[endpoint]
    headers = request.headers
    record = RequestRecord(request_id=request_id_from(headers), endpoint=endpoint)
    try:
        user = authenticate(headers, rt.catalog.snapshot, rt.local_user)
        record.user_id, record.user_name = user.id, user.name
        limit = rt.settings.max_request_body_bytes
        raw_body = read_ahead(request, limit)
        if raw_body is None:
            raw_body = await read_body(request, limit)
        payload = parse_payload(raw_body, adapter, headers.get("content-type", "") if adapter.form_body else "")
        record.model = adapter.model_of(payload)
        record.stream = adapter.is_stream(payload)
        if rt.tracer.enabled:
            record.input = adapter.traced_input(payload)
        previous = adapter.previous_response_id(payload)
        route = await plan_bound_route(rt, user, record.model, previous) if previous else None
        route = route or plan_route(rt, user, record.model, request, adapter)
        call = Call(rt, request, record, user, adapter, payload, raw_body, path=adapter.path)
        response = await forward(call, route)
        if record.admission is not None and record.admission is not NOT_LIMITED:
            add_limit_headers(response, record.admission, limit_header_style(adapter))
        return response
    except ApiError as err:
        rt.finish(record, err.status, err.message)
        answer = {**err.headers, "x-request-id": record.request_id}
        if record.admission is not None or isinstance(err, LimitExceeded):
            answer.update(answer_headers(record.admission, err, limit_header_style(adapter)))
        return adapter.error_response(err, answer)
    except asyncio.CancelledError:  # the client went away before the answer started (app.V1FastPath)
        rt.finish(record, 499, "client disconnected")
        raise
    except Exception as exc:  # a bug must still give an API-shaped answer and a log row
        log.exception("request %s failed unexpectedly", record.request_id)
        rt.finish(record, 500, f"internal error: {exc.__class__.__name__}")
        return adapter.error_response(errors.internal_error(), {"x-request-id": record.request_id})


async def handle_unknown(request: Request, suggestion: str | None = None) -> Response:
    """A path the router does not serve: 404 in OpenAI's shape, with a request-log row (method and path).

    Probing clients (agents looking for an API) are then visible to admins. The caller is named when
    its key is valid; the stored path is cut to the endpoint column.
    """
    rt: Runtime = request.app.state.runtime
    path = request.scope["path"]
    record = RequestRecord(request_id=request_id_of(request), endpoint=path, method=request.method)
    with contextlib.suppress(ApiError):
        user = authenticate(request.headers, rt.catalog.snapshot, rt.local_user)
        record.user_id, record.user_name = user.id, user.name
    shown = path if len(path) <= 200 else path[:199] + "…"
    err = errors.unknown_path(request.method, shown, suggestion)
    record.attempts = 0
    rt.finish(record, 404, err.message)
    return err.response({"x-request-id": record.request_id})


_RESPONSE_ID = re.compile(r"[A-Za-z0-9_\-.]{1,128}")


async def handle_stored_response(request: Request) -> Response:
    """GET/DELETE /v1/responses/{id}, POST .../cancel, GET .../input_items: to the backend that stored it.

    Only the user who created the response reaches it; anyone else gets the 404 of an unknown id.
    """
    rt: Runtime = request.app.state.runtime
    adapter = protocols.ADAPTERS["/v1/responses"]
    response_id = str(request.path_params["response_id"])
    action = (
        request.scope["path"].rsplit("/", 1)[1] if request.scope["path"].endswith(("/cancel", "/input_items")) else ""
    )
    endpoint = "/v1/responses/{id}" + (f"/{action}" if action else "")
    record = RequestRecord(request_id=request_id_of(request), endpoint=endpoint, method=request.method)
    try:
        user = authenticate(request.headers, rt.catalog.snapshot, rt.local_user)
        record.user_id, record.user_name = user.id, user.name
        binding = await rt.affinity.lookup(response_id) if _RESPONSE_ID.fullmatch(response_id) else None
        backend = bound_backend(rt, user, binding) if binding is not None else None
        if backend is None:
            raise errors.response_not_found(response_id)
        query = request.scope["query_string"].decode("latin-1")
        path = f"/responses/{response_id}" + (f"/{action}" if action else "") + (f"?{query}" if query else "")
        record.stream = request.method == "GET" and not action and request.query_params.get("stream") == "true"
        call = Call(
            rt, request, record, user, adapter, {}, b"", request.method, path, has_body=False, accounts_usage=False
        )
        return await forward(call, RoutePlan("", [Target.of(backend)]))
    except ApiError as err:
        rt.finish(record, err.status, err.message)
        return adapter.error_response(err, {"x-request-id": record.request_id})
    except Exception as exc:
        log.exception("request %s failed unexpectedly", record.request_id)
        rt.finish(record, 500, f"internal error: {exc.__class__.__name__}")
        return adapter.error_response(errors.internal_error(), {"x-request-id": record.request_id})


# --- the steps --------------------------------------------------------------------------------


def request_id_of(request: Request) -> str:
    return request_id_from(request.headers)


def request_id_from(headers: Mapping[str, str]) -> str:
    """The client's X-Request-ID if it is one the router can log and send on, else a new one."""
    incoming = headers.get("x-request-id")
    if incoming and len(incoming) <= 128 and incoming.isprintable():
        return incoming
    return f"{_REQUEST_ID_PREFIX}{next(_request_counter):016x}"


def read_ahead(request: Request, limit: int) -> bytes | None:
    """The body read ahead within the limits (app.V1FastPath), or a 413; None when it is still to be read."""
    if not hasattr(request, "_body"):
        return None
    body: bytes = request._body
    declared = request.headers.get("content-length")
    if len(body) > limit or (declared and declared.isdigit() and int(declared) > limit):
        raise errors.too_large(limit / 1024 / 1024)
    return body


async def read_body(request: Request, limit: int) -> bytes:
    if (body := read_ahead(request, limit)) is not None:
        return body
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


def parse_payload(body: bytes, adapter: Adapter | str, content_type: str = "") -> dict[str, Any]:
    """The request body as a JSON object (or a form's fields) the adapter's API accepts, or a 400."""
    if isinstance(adapter, str):
        adapter = protocols.ADAPTERS[adapter]
    if adapter.form_body:
        fields = adapter.form_payload(body, content_type)
        adapter.validate(fields)
        return fields
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.bad_request(f"The request body is not valid JSON: {exc}", "invalid_json") from None
    if len(body) > MAX_JSON_DEPTH:  # a shorter body cannot be nested that deep (no call)
        ensure_json_depth(body, payload)
    if not isinstance(payload, dict):
        raise errors.bad_request("The request body must be a JSON object.", "invalid_json")
    adapter.validate(payload)
    return payload


def plan_route(rt: Runtime, user: UserEntry, model: str, request: Request, adapter: Adapter) -> RoutePlan:
    """Decide where the request may go: proxy mode, auto mode (`[alias]model`), or by model.

    A backend that does not speak the client's API is asked in one the request translates to
    (`Target.api`); one that speaks neither is no candidate.
    """
    if not request.scope["query_string"] and not model.startswith("["):  # no ?proxy=, no [alias]: by model
        return route_by_model(rt, user, model, adapter)
    proxy_url = request.query_params.get("proxy") if request.scope["query_string"] else None
    alias, bare_model = split_alias(model)
    if proxy_url is None and alias is not None and "://" in alias:
        proxy_url = alias
    if proxy_url is not None:
        return RoutePlan(bare_model, [proxy_target(rt, user, proxy_url, request)])
    snapshot = rt.catalog.snapshot
    if alias is not None:
        backend = snapshot.backends_by_name.get(alias)
        if backend is None or not backend.is_active:
            raise errors.model_not_found(model)
        if not user.may_use(backend.id):
            raise errors.forbidden(f"You are not allowed to use backend '{alias}'.")
        return RoutePlan(bare_model, speaking(adapter, [backend], model))
    return route_by_model(rt, user, model, adapter)


def route_by_model(rt: Runtime, user: UserEntry, model: str, adapter: Adapter) -> RoutePlan:
    """The backends serving `model` that `user` may use, in the order to try them (a 403/404 if none).

    What does not change between requests is worked out once per snapshot and model lists (`ModelRoute`);
    per request only the order (round-robin or least busy) is decided, as before.
    """
    snapshot = rt.catalog.snapshot
    key = (user.id, model, adapter)
    route: ModelRoute | None = snapshot.routes.get(key)
    if route is None or route.user is not user or route.models_version != rt.models.version:
        route = _model_route(rt, snapshot, user, model, adapter)
    if route.plan is not None:
        return route.plan
    targets = route.targets
    ordered = [t for b in rt.order_backends(route.candidates) if (t := targets.get(b.id)) is not None]
    return RoutePlan(model, ordered, route.unlimited)


def _model_route(rt: Runtime, snapshot: Snapshot, user: UserEntry, model: str, adapter: Adapter) -> ModelRoute:
    version = rt.models.version
    candidates, any_forbidden = candidate_backends(snapshot.backends_by_id.values(), rt.models.models_of, user, model)
    if not candidates:
        if any_forbidden:
            raise errors.forbidden(f"You are not allowed to use model '{model}'.")
        raise errors.model_not_found(model, close_model_names(model, (m["id"] for m in model_list(rt, user))))
    speaking_targets = speaking(adapter, candidates, model)  # in candidate order, so each target's backend
    targets = {t.backend.id: t for t in speaking_targets if t.backend is not None}
    unlimited = not user.limits and not any(b.limits for b in candidates)
    plan = RoutePlan(model, speaking_targets, unlimited) if len(candidates) == 1 else None
    route = ModelRoute(user, version, candidates, targets, plan, unlimited)
    if snapshot.users_by_id.get(user.id) is user:  # not a user of an older snapshot (it changed meanwhile)
        if len(snapshot.routes) >= MAX_CACHED_ROUTES:
            snapshot.routes.clear()
        snapshot.routes[(user.id, model, adapter)] = route
    return route


def speaking(adapter: Adapter, backends: list[BackendEntry], model: str) -> list[Target]:
    """Targets for the backends that speak the client's API or one it translates to (order kept)."""
    client_api = translate.api_of_path(adapter.path)
    if client_api is None or all(b.apis is None for b in backends):
        return [Target.of(b) for b in backends]
    targets = []
    for backend in backends:
        api = translate.upstream_api(client_api, backend.apis)
        if api == client_api:
            targets.append(Target.of(backend))
        elif api is not None and (upstream := _translatable(adapter, api)) is not None:
            targets.append(Target.of(backend, upstream))
    if not targets:
        raise errors.bad_request(
            f"No backend serving model '{model}' speaks this API or one the router translates it to.",
            "api_not_supported",
        )
    return targets


def _translatable(adapter: Adapter, api: str) -> Adapter | None:
    """The adapter of `api` if the client's requests translate to it (not, e.g., a token count)."""
    upstream = protocols.adapter_named(translate.ADAPTER_NAMES[api])
    return upstream if upstream is not None and (adapter.name, upstream.name) in protocols.TRANSLATORS else None


async def plan_bound_route(rt: Runtime, user: UserEntry, model: str, response_id: str) -> RoutePlan | None:
    """A request continuing a stored response goes to the backend that stored it (no failover).

    None for an id the router never bound (lost bindings, another router): it is routed by model
    and the upstream answers for it. Another user's id is refused like an id nobody knows.
    """
    binding = await rt.affinity.lookup(response_id)
    if binding is None:
        return None
    backend = bound_backend(rt, user, binding)
    if backend is None:
        raise errors.previous_response_not_found(response_id)
    return RoutePlan(split_alias(model)[1], [Target.of(backend)])


def bound_backend(rt: Runtime, user: UserEntry, binding: Binding) -> BackendEntry | None:
    """The backend of a binding, if it belongs to `user` and the user may still use that backend."""
    backend = rt.catalog.snapshot.backends_by_id.get(binding.backend_id)
    if binding.user_id != user.id or backend is None or not backend.is_active or not user.may_use(backend.id):
        return None
    return backend


def remember_response(call: Call, target: Target, response_id: str) -> None:
    """A stored response: log its id and bind it to this backend and user."""
    call.record.response_id = response_id[:MAX_RESPONSE_ID]
    if target.backend is not None:
        call.rt.affinity.bind(response_id, target.backend.id, call.user.id)


def proxy_target(rt: Runtime, user: UserEntry, url: str, request: Request) -> Target:
    """An allow-listed URL for proxy mode; anything else is refused (no open relay)."""
    if rt.settings.proxy_allowlist and not user.all_backends:
        raise errors.forbidden("Proxy mode needs a user allowed every backend.")
    url = allowed_proxy_url(url, rt.settings.proxy_allowlist)  # normalised, allow-listed, or a 403
    return Target(f"proxy:{urlsplit(url).netloc}", url, request.headers.get("x-upstream-authorization"))


def upstream_headers(
    target: Target, request_id: str, extra: dict[str, str] | None, has_body: bool = True
) -> dict[str, str]:
    """What the upstream gets: our framing, its key (never the user's), the request id, script headers."""
    headers = {"Accept": "application/json, text/event-stream"}
    if has_body:
        headers["Content-Type"] = "application/json"
    if extra:
        headers.update(extra)
    headers["X-Request-ID"] = request_id
    if target.authorization:
        if extra:  # a script header of the key's name, in any case, does not go along with the key
            key = target.key_header.lower()
            for name in [n for n in headers if n.lower() == key]:
                del headers[name]
        headers[target.key_header] = target.authorization
    return headers


def response_headers(upstream: UpstreamResponse, request_id: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The upstream's headers a client may see (the allow-list), and the router's request id."""
    if extra:
        headers = {k: v for k, v in upstream.headers.items() if header_allowed(k, extra)}
    else:  # header_allowed without extra names, inlined (this runs for every answer)
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in PASSED_RESPONSE_HEADERS}
    headers["x-request-id"] = request_id
    return headers


# --- one request, its attempts --------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One /v1 request on its way: what every step needs."""

    rt: Runtime
    request: Request
    record: RequestRecord
    user: UserEntry
    adapter: Adapter  # the API the client called (errors, framing toward it)
    payload: dict[str, Any]
    raw_body: bytes
    method: str = "POST"
    path: str = ""  # under the target's base URL (with the query string it passes on, if any)
    has_body: bool = True
    accounts_usage: bool = True  # False: reading a stored answer spends no tokens


@dataclass(slots=True)
class AttemptScripts:
    """The scripts of one attempt and the context they passed along (None when no script applies)."""

    scripts: tuple[ScriptEntry, ...] = ()
    context: dict[str, Any] | None = None

    @property
    def reversed(self) -> tuple[ScriptEntry, ...]:
        return self.scripts[::-1]


@dataclass(slots=True)
class Outgoing:
    """What one attempt sends upstream, after the onRequest hooks."""

    body: dict[str, Any]
    wire: bytes
    headers: dict[str, str] | None
    hooks: AttemptScripts
    strip_usage: bool  # the router asked for stream usage the client did not ask for
    adapter: Adapter  # the API the upstream is asked in
    path: str  # under the target's base URL
    translator: protocols.Translator | None = None  # when that API is not the client's


class Attempt:
    """One try at one target: its in-flight count, its upstream response and its health record.

    Creating it counts the request in flight; `forward` releases it (and closes the upstream
    response) whatever happened, unless `keep()` handed the attempt to a streaming response, which
    then releases it when the stream ends. `release` runs once.
    """

    __slots__ = ("_kept", "_released", "response", "rt", "target")

    def __init__(self, rt: Runtime, target: Target) -> None:
        self.rt = rt
        self.target = target
        self.response: UpstreamResponse | None = None
        self._kept = False
        self._released = False
        if target.backend is not None:
            rt.in_flight.enter(target.backend.id)

    def failed(self, reason: str | None = None) -> None:
        self.rt.record_failure(self.target.backend, reason)

    def settle(self, status: int) -> None:
        """Record the backend's health from the status it answered with."""
        if status >= 500:
            self.rt.record_failure(self.target.backend, f"HTTP {status}")
        elif self.target.backend is not None:
            self.rt.health.record_success(self.target.backend.id)

    def keep(self) -> Attempt:
        """The caller (a streaming response) now owns the release."""
        self._kept = True
        return self

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            if self.response is not None:
                await self.response.close()
        finally:
            if self.target.backend is not None:
                self.rt.in_flight.leave(self.target.backend.id)


def unreachable(target: Target, exc: UpstreamError) -> ApiError:
    return errors.upstream_error(exc, f"Backend '{target.name}' could not be reached.")


async def forward(call: Call, route: RoutePlan) -> Response:
    """Try the targets in order; retry on connect errors, timeouts, 429 and 5xx before any byte is sent.

    The targets tried are those available when their turn comes, at most MAX_ATTEMPTS of them; a 429
    or 5xx fails over while attempts and healthy targets remain (nothing was sent to the client yet).
    """
    rt, record = call.rt, call.record
    # The client's bytes go upstream as they came unless something must change in them (a stream's only
    # change then is asking for usage: Adapter.stream_wire).
    as_sent = not call.has_body or route.upstream_model == call.payload["model"]
    if not as_sent:
        call.payload = call.adapter.with_model(call.payload, route.upstream_model)
    failure: ApiError | None = None
    max_attempts = rt.settings.max_attempts
    attempts = 0
    for target in route.targets:
        if attempts >= max_attempts:
            break
        backend = target.backend
        if backend is not None and not rt.health.is_available(backend.id):
            continue
        record.attempts = attempts = attempts + 1
        record.backend_id = backend.id if backend is not None else None
        record.backend_name = target.name
        record.translated_to = None  # set again if this target is asked in another API
        if route.unlimited and record.admission is None:
            record.admission = NOT_LIMITED  # what the limiter answers when no one has limits, without asking it
        else:
            try:
                await admit(call, target)
            except LimitExceeded as exc:
                if exc.scope != "backend":
                    raise
                # This backend is at its limits; the next candidate may not be. Kept without its
                # traceback, which holds this frame (a cycle with `failure`).
                failure = exc.with_traceback(None)
                continue
        snapshot = rt.catalog.snapshot
        scripts = (
            scripts_for(snapshot, call.user.id, backend.id if backend is not None else None)
            if snapshot.active_scripts
            else ()
        )
        try:
            if scripts:
                outgoing: Outgoing | Response = await prepare(call, target, as_sent, scripts)
            else:
                outgoing = outgoing_of(call, target, as_sent)
        except translate.TranslationError as exc:  # another target may speak the client's API
            failure, record.error = errors.bad_request(str(exc), "not_translatable"), f"{target.name}: {exc}"
            record.attempt_failed(record.error)
            continue
        if isinstance(outgoing, Response):
            return outgoing
        attempt = Attempt(rt, target)
        try:
            try:
                attempt.response = upstream = await rt.upstream.send(
                    call.method,
                    protocols.upstream_url(target.base_url, outgoing.path, outgoing.adapter.at_root),
                    upstream_headers(target, record.request_id, outgoing.headers, call.has_body),
                    outgoing.wire if call.has_body else None,
                    record.stream,
                )
            except UpstreamError as exc:
                attempt.failed(str(exc))
                failure, record.error = unreachable(target, exc), f"{target.name}: {exc}"
                record.attempt_failed(record.error)
                continue
            status = upstream.status
            if (status == 429 or status >= 500) and attempts < max_attempts and _has_next(rt, route, target):
                if status >= 500:
                    attempt.failed(f"HTTP {status}")
                record.error = f"{target.name}: HTTP {status}"
                record.attempt_failed(record.error)
                continue
            attempt.settle(status)
            record.error = None
            if record.stream and status == 200 and _is_sse(upstream):
                return await stream_response(call, attempt, outgoing)
            return await plain_response(call, attempt, upstream, outgoing)
        finally:
            if not (attempt._kept or attempt._released):  # else a stream owns it, or it is over
                await attempt.release()
    try:
        raise failure or errors.no_healthy_backend(record.model or "", unhealthy_targets(rt, route), time.time())
    finally:
        failure = None  # this frame is in the error's traceback: holding the error too would be a cycle


def unhealthy_targets(rt: Runtime, route: RoutePlan) -> list[tuple[str, float | None]]:
    """(name, until) of the route's backends that are cooling down, for the 503's message and Retry-After."""
    statuses = ((t.name, rt.health.status(t.backend.id)) for t in route.targets if t.backend is not None)
    return [(name, status.retry_at) for name, status in statuses if not status.healthy]


async def admit(call: Call, target: Target) -> None:
    """Count the attempt against the user's and the backend's limits: a 429, a wait in the backend's queue, or on.

    `Runtime.finish` settles the admission (real tokens, cost, slots) when the request is accounted.
    A client that leaves while queued cancels this request (app.V1FastPath), which leaves the queue.
    """
    limiter, record = call.rt.limiter, call.record
    backend = target.backend
    tokens = limiter.estimate(call.payload, len(call.raw_body)) if limiter.needs_estimate(call.user, backend) else 0
    record.admission = await limiter.admit(call.user, backend, tokens, previous=record.admission)


def limit_header_style(adapter: Adapter) -> str:
    return "anthropic" if adapter.name == "messages" else "openai"


def _is_sse(upstream: UpstreamResponse) -> bool:
    return upstream.headers.get("content-type", "").startswith("text/event-stream")


async def prepare(call: Call, target: Target, as_sent: bool, scripts: tuple[ScriptEntry, ...]) -> Outgoing | Response:
    """Run the onRequest hooks (`scripts`, for this target); the body and headers to send, or a script's own answer."""
    hooks = AttemptScripts(scripts)
    body, extra_headers, body_changed = call.payload, None, False
    if scripts:
        raw_json = as_sent and not call.record.stream and not call.adapter.form_body
        client_body = None if not call.has_body else RawJSON(call.raw_body) if raw_json else call.payload
        path, headers = call.request.scope["path"], visible_headers(call.request.headers)
        context = build_context(
            user_view(call.user), _backend_view(target), call.method, path, headers, client_body, call.record.stream
        )
        outcome = await on_request(call.rt.scripts, hooks.scripts, context, call.payload, call.record.request_id)
        hooks.context = outcome.context
        if outcome.early is not None:
            return answer_from_script(call.rt, call.record, outcome.early)
        body, extra_headers, body_changed = outcome.body, outcome.headers, outcome.body_changed
        if call.has_body:
            call.record.model = body.get("model", call.record.model)
    return outgoing_of(call, target, as_sent, hooks, body, extra_headers, body_changed)


NO_SCRIPTS = AttemptScripts()  # an attempt no script applies to (its context stays None: nothing to share)


def outgoing_of(
    call: Call,
    target: Target,
    as_sent: bool,
    hooks: AttemptScripts = NO_SCRIPTS,
    body: dict[str, Any] | None = None,
    extra_headers: dict[str, str] | None = None,
    body_changed: bool = False,
) -> Outgoing:
    """What goes upstream (after the onRequest hooks, if any): `body` (the client's payload if None) in the
    target's API, and the headers the client's API passes on plus those of the scripts."""
    if body is None:
        body = call.payload
    passed = call.adapter.passed_headers(call.request.headers)
    if passed:
        extra_headers = {**passed, **(extra_headers or {})}
    adapter, stream = call.adapter, call.record.stream
    if target.api is not None:
        return translated(call, target.api, body, extra_headers, hooks)
    if as_sent and not body_changed and not stream:
        wire = call.raw_body
    elif adapter.form_body:
        wire = adapter.encode_form(call.raw_body, call.request.headers.get("content-type", ""), body)
    elif stream and as_sent and not body_changed:
        wire = adapter.stream_wire(call.raw_body, body) or orjson.dumps(adapter.with_stream_usage(body))
    else:
        wire = orjson.dumps(adapter.with_stream_usage(body) if stream else body)
    strip_usage = stream and not adapter.client_wants_usage(body)
    return Outgoing(body, wire, extra_headers, hooks, strip_usage, adapter, call.path)


def translated(
    call: Call, upstream: Adapter, body: dict[str, Any], headers: dict[str, str] | None, hooks: AttemptScripts
) -> Outgoing:
    """The request (as the client's scripts left it) in the upstream's API; TranslationError if it cannot be."""
    translator = protocols.translator_for(call.adapter, upstream)
    if translator is None:
        raise translate.TranslationError(f"The router cannot translate this API to '{upstream.name}'.")
    wire_body = translator.request(body)
    call.record.translated_to = upstream.path
    extra = {**getattr(translator, "headers", {}), **(headers or {})}
    wire = orjson.dumps(upstream.with_stream_usage(wire_body) if call.record.stream else wire_body)
    return Outgoing(body, wire, extra, hooks, False, upstream, upstream.path, translator)


def _backend_view(target: Target) -> dict[str, Any]:
    return backend_view(target.backend, target.name, target.base_url)


def answer_from_script(rt: Runtime, record: RequestRecord, early: tuple[int, dict[str, str], bytes]) -> Response:
    status, headers, content = early
    record.attempts = 0
    rt.finish(record, status)
    headers["x-request-id"] = record.request_id
    return Response(content, status_code=status, headers=headers)


def _has_next(rt: Runtime, route: RoutePlan, current: Target) -> bool:
    targets = route.targets
    if targets[-1] is current:
        return False
    index = targets.index(current)
    return any(t.backend is None or rt.health.is_healthy(t.backend.id) for t in targets[index + 1 :])


# --- plain answers --------------------------------------------------------------------------


async def plain_response(call: Call, attempt: Attempt, upstream: UpstreamResponse, outgoing: Outgoing) -> Response:
    rt, record, hooks, translator = call.rt, call.record, outgoing.hooks, outgoing.translator
    try:
        body = await upstream.read()
    except AnswerTooLarge as exc:
        record.error = f"{attempt.target.name}: {exc}"
        raise errors.upstream_failed(f"Backend '{attempt.target.name}' failed: {exc}.") from None
    except UpstreamError as exc:
        raise errors.upstream_error(exc, str(exc)) from None
    finally:
        await attempt.release()
    parsed, error = None, None  # no ttft_ms: a first token means something only in a stream
    if upstream.status < 400:
        upstream_api = outgoing.adapter
        content_type = upstream.headers.get("content-type", "")
        if upstream_api.json_answers and upstream.status != 204:
            parsed, malformed = json_answer(content_type, body)
        else:
            malformed = False
        if malformed:
            attempt.failed()
            raise errors.upstream_failed(
                f"Backend '{attempt.target.name}' answered {upstream.status} with a body that is not valid "
                f"(content-type {content_type[:100]!r}): {_snippet(body)}"
            )
        if (
            parsed is not None
            or upstream_api.usage_marker in body
            or rt.tracer.enabled
            or translator
            or upstream_api.stateful
        ):
            parsed = parsed if parsed is not None else _loads(body)
            if call.accounts_usage:
                record.set_usage(upstream_api.usage_of_body(parsed))
                if upstream_api.stateful and translator is None:
                    response_id = upstream_api.response_id_of_body(parsed)
                    if response_id is not None:
                        remember_response(call, attempt.target, response_id)
            if rt.tracer.enabled:
                record.output = parsed
    else:
        error = f"upstream HTTP {upstream.status}: {body[:500].decode(errors='replace')}"
    status, headers = upstream.status, response_headers(upstream, record.request_id, rt.passed_headers)
    if translator is not None:  # the answer as the client's API gives it (scripts see that too)
        parsed = translator.response(parsed) if error is None else translator.error(upstream.status, body)
        body = orjson.dumps(parsed)
        headers["content-type"] = "application/json"
    if hooks.context is not None:
        _, status, headers, body = await on_response(
            rt.scripts,
            hooks.reversed,
            hooks.context,
            status,
            upstream.headers,
            headers,
            record.request_id,
            body,
            parsed,
        )
    rt.finish(record, upstream.status, error)
    return PlainResponse(body, status, headers)


class PlainResponse(Response):
    """What `Response(body, status_code=status, headers=headers)` is (the same raw headers, content-length
    added unless given or the status has no body), built in one pass over the headers."""

    def __init__(self, body: bytes, status: int, headers: Mapping[str, str]) -> None:
        self.status_code = status
        self.background = None
        self.body = body
        raw = []
        length = status >= 200 and status != 204 and status != 304
        for key, value in headers.items():
            name = key.lower().encode("latin-1")
            if name == b"content-length":
                length = False
            raw.append((name, value.encode("latin-1")))
        if length:
            raw.append((b"content-length", b"%d" % len(body)))
        self.raw_headers = raw


def json_answer(content_type: str, body: bytes) -> tuple[Any, bool]:
    """A JSON API's successful answer (not a 204): its JSON if it says it is JSON (else None), and whether
    it is malformed, a success no client can use: an HTML page, or a body that says JSON and is not.

    Other content types (text, binary) pass through untouched: scripts and clients may expect them.
    """
    media = "application/json" if content_type == "application/json" else content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None, True
        return parsed, parsed is None  # `null` says JSON and is no answer either
    return None, media in ("text/html", "application/xhtml+xml")


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


# --- streamed answers -----------------------------------------------------------------------


async def stream_response(call: Call, attempt: Attempt, outgoing: Outgoing) -> Response:
    """Run the onResponse hooks on the stream's head, then relay its events (the relay owns the attempt)."""
    upstream = attempt.response
    assert upstream is not None
    chunks = upstream.iter_chunks()
    head, data = await read_stream_head(chunks, call.rt.settings.sse_max_event_bytes)
    problem = stream_head_problem(head, data, outgoing.adapter)
    if problem is not None:
        attempt.failed()
        raise errors.upstream_failed(f"Backend '{attempt.target.name}' {problem}")
    hooks = outgoing.hooks
    status, headers = upstream.status, response_headers(upstream, call.record.request_id, call.rt.passed_headers)
    if hooks.context is not None:
        hooks.context, status, headers, _ = await on_response(
            call.rt.scripts,
            hooks.reversed,
            hooks.context,
            status,
            upstream.headers,
            headers,
            call.record.request_id,
            stream=True,
        )
    relay = Relay(call, attempt.keep(), outgoing, chunks, head)
    return RelayResponse(relay, status, headers)


async def read_stream_head(chunks: AsyncIterator[bytes], max_event_bytes: int) -> tuple[list[bytes], bytes | None]:
    """The stream's first chunks, up to the first event with data, and that data (None if none came).

    Nothing is sent before this: a stream that does not start as SSE still gets a proper 502.
    """
    head: list[bytes] = []
    splitter = None  # made only when the first chunk does not start with a simple event
    try:
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                rest = splitter.rest() if splitter is not None else b""
                return head, sse_data(rest) if rest.strip() else None
            head.append(chunk)
            if splitter is None:
                if (data := _first_data(chunk)) is not None:
                    return head, data
                splitter = SSESplitter(max_event_bytes)
            for event in splitter.feed(chunk):
                data = sse_data(event)
                if data is not None:
                    return head, data
    except UpstreamError as exc:
        raise errors.upstream_failed(f"The upstream stream broke off before its first event: {exc}") from None


def _first_data(chunk: bytes) -> bytes | None:
    """The data of the first whole event of a stream's first chunk, without cutting the rest into
    events (the relay does that); None when it is not that simple (CR line ends, no whole event
    with data before a blank line): the caller then splits properly."""
    if b"\r" in chunk:
        return None
    start = 0
    while (end := chunk.find(b"\n\n", start)) >= 0:
        data = sse_data(chunk[start : end + 2])
        if data is not None:
            return data
        start = end + 2
    return None


def stream_head_problem(head: list[bytes], data: bytes | None, adapter: Adapter) -> str | None:
    """Why a stream's start is not a stream of this API (None when it is)."""
    if data is None:
        if not any(chunk.strip() for chunk in head):
            return "answered an empty stream."
        return f"answered with something that is not server-sent events: {_snippet(b''.join(head))}"
    if adapter.is_stream_end(data) or _loads(data) is not None:
        return None
    return f"answered a stream whose first event is not JSON: {_snippet(data)}"


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode(errors="replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    return repr(text + ("…" if len(body) > limit else ""))


class RelayResponse(StreamingResponse):
    """A streaming response that always closes its relay, even if its body never started."""

    def __init__(self, relay: Relay, status: int, headers: Mapping[str, str]) -> None:
        # What StreamingResponse(..., status_code=status, headers=headers) sets, in one step; the
        # body is the relay's (`stream_response`), not an iterator's
        self.status_code = status
        self.background = None
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.close()

    async def stream_response(self, send: Send) -> None:
        """Starlette's way: the head, the relayed events, the end."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await self.relay.send_to(send)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def send_events(self, send: Send) -> None:
        """The lean path (app.V1FastPath): the head and each event straight to the server's `send`.

        No task group listening for a disconnect (Starlette's way, ~10 % of a stream's CPU): the
        caller cancels this task when the client leaves, which closes the upstream stream. The
        caller sends the final empty body once it stopped watching.
        """
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await self.relay.send_to(send)
        except asyncio.CancelledError:
            self.relay.client_left()
            raise
        finally:
            await self.relay.close()


class Relay:
    """Forwards one upstream stream's SSE events as they arrive; reads usage; runs onStreamChunk."""

    def __init__(
        self, call: Call, attempt: Attempt, outgoing: Outgoing, chunks: AsyncIterator[bytes], head: list[bytes]
    ) -> None:
        self.call = call
        self.attempt = attempt
        self.chunks = chunks
        self.head = head
        self.adapter = call.adapter
        self.upstream_adapter = outgoing.adapter
        self.translator = outgoing.translator.stream() if outgoing.translator is not None else None
        self.strip_usage = outgoing.strip_usage
        self.splitter = SSESplitter(call.rt.settings.sse_max_event_bytes)
        self.collect = call.rt.tracer.enabled
        self.pieces: list[str] = []
        self.status: int = 200
        self.error: str | None = None
        self.closed = False
        self.sent = b""  # the last events the client was sent (it asked for more after them)
        self.sending = False  # an event is being sent
        self.chunk_scripts: tuple[ScriptEntry, ...] = ()
        self.chunk_context: dict[str, Any] = {}
        hooks = outgoing.hooks
        if hooks.scripts:
            scripts = call.rt.scripts
            self.chunk_scripts = tuple(s for s in hooks.reversed if scripts.has_hook(script_source(s), "onStreamChunk"))
            if self.chunk_scripts and hooks.context is not None:
                # Each event crosses into V8: leave the (possibly large) request body out.
                self.chunk_context = stream_chunk_context(hooks.context)
        self.inspect_every_event = self.collect or bool(self.chunk_scripts)

    async def send_to(self, send: Send) -> None:
        """Relay the stream: each chunk's events, as the client gets them, in a `http.response.body`
        message to `send`. Sent from here, not yielded: no async generator between upstream and `send`."""
        head, self.head = self.head, []  # the chunks read before the relay started, then the rest
        chunks, splitter, adapter = self.chunks, self.splitter, self.adapter
        translated, inspected = self.translator is not None, self.inspect_every_event
        try:
            while True:
                if head:
                    chunk = head.pop(0)
                else:
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                if translated:
                    out = await self._translate(chunk)
                elif inspected or not splitter.is_clean(chunk):
                    out = await self._rewrite(chunk)
                elif (wanted := adapter.wanted_at(chunk)) < 0:
                    out = chunk  # whole events with nothing to read in them (the common case): as they came
                else:
                    out = await self._rewrite_clean(chunk, wanted)
                if out:
                    if not self.sent:  # the first byte the client gets
                        self._first_byte()
                    self.sending = True  # `_send`, inlined: this runs for every chunk of every stream
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    self.sending = False
                    self.sent = out
            if self.translator is not None:
                await self._send(send, await self._translated_end())
                return
            rest = self.splitter.rest()
            if rest.strip():
                await self._send(send, rest)
        except UpstreamError as exc:
            self.error, self.status = f"stream interrupted: {exc}", errors.upstream_error(exc, "").status
            if self.translator is not None:  # the end of a broken stream in the client's API
                await self._send(send, await self._translated_end())
                return
            await self._send(
                send, adapter.stream_error(errors.upstream_failed(f"The upstream stream broke off: {exc}"))
            )
        except ApiError as exc:  # a failing onStreamChunk: end the stream with the error
            self.error, self.status = exc.message, exc.status
            await self._send(send, adapter.stream_error(exc))
        except asyncio.CancelledError:
            # Left while an event was being sent, or while waiting for upstream before the final event
            # (after it, the client has its whole answer and merely left before the upstream closed)
            if self.sending or not self.client_has_all():
                self.error, self.status = "client disconnected", 499
            raise
        except Exception as exc:
            if self.sending:  # the server could not send: the client is gone
                if not self.client_has_all():
                    self.error, self.status = "client disconnected", 499
                raise
            log.exception("stream %s failed unexpectedly", self.call.record.request_id)
            self.error, self.status = f"internal error: {exc.__class__.__name__}", 500
            await self._send(send, adapter.stream_error(errors.internal_error()))
        finally:
            await self.close()

    async def _send(self, send: Send, body: bytes) -> None:
        self.sending = True
        await send({"type": "http.response.body", "body": body, "more_body": True})
        self.sending = False

    def client_left(self) -> None:
        """The client went away while an event was being sent (not while waiting for upstream)."""
        if not self.closed and self.error is None:
            self.error, self.status = "client disconnected", 499

    def client_has_all(self) -> bool:
        """Whether the client was sent the stream's final event (`[DONE]`, `message_stop`, ...)."""
        event = last_sse_event(self.sent)
        data = sse_data(event)
        return data is not None and self.adapter.is_final_event(sse_event_name(event), data)

    async def close(self) -> None:
        """Release the attempt and account the request (once)."""
        if self.closed:
            return
        self.closed = True
        try:
            await self.attempt.release()
        finally:
            record = self.call.record
            if self.collect:
                record.output = "".join(self.pieces)
            self.call.rt.finish(record, self.status, self.error)

    def _first_byte(self) -> None:
        record = self.call.record
        if record.ttft_ms is None:
            record.ttft_ms = (time.time() - record.started_at) * 1000.0

    async def _rewrite_clean(self, chunk: bytes, wanted: int) -> bytes:
        """Whole events (`SSESplitter.is_clean`), something to read at `wanted`: only the events the
        adapter wants are cut out and read, the bytes between them pass as they came."""
        out = []
        done = 0
        while wanted >= 0:
            start, end = sse_event_around(chunk, done, wanted)
            if start > done:
                out.append(chunk[done:start])
            out.append(await self._event(chunk[start:end]))
            done = end
            wanted = self.adapter.wanted_at(chunk, done)
        out.append(chunk[done:])
        return b"".join(out)

    async def _rewrite(self, chunk: bytes) -> bytes:
        out = []
        for event in self.splitter.feed(chunk):
            if not self.inspect_every_event and not self.adapter.wants_event(event):
                out.append(event)
                continue
            out.append(await self._event(event))
        return b"".join(out)

    async def _event(self, event: bytes) -> bytes:
        """One whole event as the client gets it (b"" to drop it)."""
        data = sse_data(event)
        if data is None or self.adapter.is_stream_end(data):
            return event
        name = sse_event_name(event)
        parsed = _loads(data)
        if parsed is None:
            return event
        adapter = self.adapter
        response_id = adapter.response_id_of_event(name, parsed) if self.call.accounts_usage else None
        if response_id is not None:
            remember_response(self.call, self.attempt.target, response_id)
        usage = adapter.usage_of_event(name, parsed) if self.call.accounts_usage else None
        if usage:
            self.call.record.add_usage(usage)
            if self.strip_usage:
                stripped = adapter.without_usage(name, parsed)
                if stripped is DROP:
                    return b""
                if stripped is not parsed:
                    event, parsed = adapter.frame_event(name, stripped), stripped
        if self.collect:
            self.pieces.append(adapter.text_of_event(name, parsed))
        if self.chunk_scripts:
            return await self._run_chunk_scripts(name, parsed, event)
        return event

    async def _translate(self, chunk: bytes) -> bytes:
        """Upstream events in, the client's events out; usage is read from the upstream's events."""
        assert self.translator is not None
        out = []
        upstream = self.upstream_adapter
        for event in self.splitter.feed(chunk):
            data = sse_data(event)
            if data is None or upstream.is_stream_end(data):
                continue
            name, parsed = sse_event_name(event), _loads(data)
            if parsed is None:
                continue
            usage = upstream.usage_of_event(name, parsed)
            if usage:
                self.call.record.add_usage(usage)
            if self.collect:
                self.pieces.append(upstream.text_of_event(name, parsed))
            out.append(await self._emit(self.translator.feed(name, parsed)))
        return b"".join(out)

    async def _translated_end(self) -> bytes:
        assert self.translator is not None
        out = await self._emit(self.translator.end())
        if not getattr(self.translator, "complete", True) and self.error is None:
            self.error, self.status = translate.STREAM_CUT_OFF, 502
        return out

    async def _emit(self, events: list[tuple[str | None, Any]]) -> bytes:
        """Translated events, framed in the client's API (through onStreamChunk scripts, if any)."""
        out = []
        for name, data in events:
            if isinstance(data, bytes):  # a terminator such as chat's [DONE]
                out.append(b"data: " + data + b"\n\n")
            elif self.chunk_scripts:
                out.append(await self._run_chunk_scripts(name, data))
            else:
                out.append(self.adapter.frame_event(name, data))
        return b"".join(out)

    async def _run_chunk_scripts(self, name: str | None, parsed: Any, event: bytes | None = None) -> bytes:
        rt = self.call.rt
        self.chunk_context["event"] = name  # the SSE event name (Responses, Messages), null for chat
        self.chunk_context, chunk = await on_stream_chunk(
            rt.scripts, self.chunk_scripts, self.chunk_context, parsed, self.call.record.request_id
        )
        if chunk is None:
            return b""
        return event if chunk is parsed and event is not None else self.adapter.frame_event(name, chunk)
