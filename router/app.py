"""Builds the Starlette app: /v1, /graphql, /admin, /healthz, /metrics, and the lifespan. Wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graphql_schema import graphql_routes
from router import errors, protocols, proxy
from router.admin_ui import admin_routes
from router.auth import bearer_matches
from router.client_watch import ClientWatch, LateWatches
from router.config import Settings, load_settings
from router.crypto import SecretBox
from router.db import close_db, init_db
from router.logging_setup import flush_logs
from router.models.core import User
from router.runtime import LOCAL_USER_NAME, Runtime
from router.server_limits import RequestLimits, replay
from router.services import AdminService

log = logging.getLogger("router")


async def healthz(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    return JSONResponse({"status": "ok", "backends": len(rt.catalog.snapshot.backends_by_id)})


async def root(request: Request) -> Response:
    """`GET /` and `HEAD /` (clients such as Claude Code probe it): 200 and where things are."""
    return JSONResponse({"name": "llm-router", "api": "/v1", "admin": "/admin", "graphql": "/graphql"})


def v1_path_meant(path: str) -> str | None:
    """The /v1 path a request outside /v1 probably meant (`/chat/completions` -> `/v1/chat/completions`)."""
    for known in (*protocols.ADAPTERS, "/v1/models"):
        tail = known.removeprefix("/v1")
        if path.rstrip("/") == tail or (path.rstrip("/").endswith(tail) and not path.startswith("/v1/")):
            return known
    return None


async def not_found(request: Request, exc: Exception) -> Response:
    """Any path nothing serves: a JSON 404 in OpenAI's shape (pointing at /v1 when that is what was
    meant), logged with its method and path."""
    return await proxy.handle_unknown(request, v1_path_meant(request.scope["path"]))


def metrics_route(settings: Settings) -> Route:
    """GET /metrics; with METRICS_TOKEN set, only for `Authorization: Bearer <METRICS_TOKEN>`."""
    token = settings.metrics_token

    async def metrics(request: Request) -> Response:
        if token and not bearer_matches(request.headers.get("authorization"), token):
            return errors.ApiError(
                401, "Send Authorization: Bearer <METRICS_TOKEN>.", "authentication_error", "invalid_metrics_token"
            ).response({"WWW-Authenticate": "Bearer"})
        rt: Runtime = request.app.state.runtime
        return Response(rt.metrics.render(), media_type=rt.metrics.content_type)

    return Route("/metrics", metrics, methods=["GET"])


async def http_exception(request: Request, exc: Exception) -> Response:
    """405 (OPTIONS: 204 with Allow) and other HTTP errors raised outside a handler, in the route's shape."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    path, method = request.url.path, request.method
    if exc.status_code == 404:
        return await not_found(request, exc)
    if exc.status_code == 405 and method == "OPTIONS":
        return Response(status_code=204, headers={"Allow": headers.get("Allow", "")})
    if exc.status_code == 405:
        message = f"Method {method} is not allowed on {path} (allowed: {headers.get('Allow', 'none')})."
    else:
        message = str(exc.detail)
    return errors.http_error(path, exc.status_code, message, headers)


async def ensure_local_user(service: AdminService) -> int:
    """The built-in user that personal mode acts as (allowed every backend)."""
    user = await User.get_or_none(name=LOCAL_USER_NAME)
    if user is None:
        user, _key = await service.create_user(LOCAL_USER_NAME, all_backends=True)
    elif not user.all_backends or not user.is_active:
        await service.update_user(user.id, all_backends=True, is_active=True)
    return user.id


def tune_gc() -> None:
    """Keep the cyclic GC's cost per request flat as concurrency grows.

    With the default gen-0 threshold (700 allocations) a collection runs every few requests and
    finds the objects of every request in flight alive; they are promoted, and the older
    generations (hundreds of thousands of start-up objects: ORM, GraphQL schema, SDKs) get
    scanned more often the more requests are in flight. Freezing what start-up made moves it out
    of the collector's sight, and a larger gen-0 threshold lets most request objects die young.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def create_app(settings: Settings | None = None) -> RequestLimits:
    settings = settings or load_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await init_db(settings)
        runtime = Runtime(settings)
        app.state.runtime = runtime
        app.state.admin = AdminService(runtime.catalog.changed, SecretBox(settings.secrets_key))
        if not settings.enable_account_management:
            runtime.local_user_id = await ensure_local_user(app.state.admin)
        await runtime.start()
        tune_gc()
        log.info(
            "llm-router ready: %d backends, %d users",
            len(runtime.catalog.snapshot.backends_by_id),
            len(runtime.catalog.snapshot.users_by_id),
        )
        try:
            yield
        finally:
            await runtime.stop()
            if (security := getattr(app.state, "admin_security", None)) is not None:
                await security.close()  # its Redis client, made on the first session check
            await close_db()
            log.info("llm-router stopped")
            flush_logs()  # a worker process may end without logging.shutdown

    routes: list[BaseRoute] = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        metrics_route(settings),
        Route("/v1/models", proxy.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", proxy.retrieve_model, methods=["GET"]),
        *(Route(path, proxy.handle_generation, methods=["POST"]) for path in protocols.ADAPTERS),
        Route("/v1/responses/{response_id}", proxy.handle_stored_response, methods=["GET", "DELETE"]),
        Route("/v1/responses/{response_id}/cancel", proxy.handle_stored_response, methods=["POST"]),
        Route("/v1/responses/{response_id}/input_items", proxy.handle_stored_response, methods=["GET"]),
        Route("/v1/{rest:path}", proxy.handle_unknown, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    routes += graphql_routes(settings)
    routes += admin_routes()
    starlette = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={404: not_found, HTTPException: http_exception}
    )
    other: ASGIApp = starlette
    if settings.server == "granian":  # uvicorn reads X-Forwarded-For itself (FORWARDED_ALLOW_IPS)
        from granian.utils.proxies import wrap_asgi_with_proxy_headers

        other = wrap_asgi_with_proxy_headers(starlette, settings.forwarded_allow_ips)
    return RequestLimits(
        V1FastPath(starlette, other),
        v1_body_bytes=settings.max_request_body_bytes,
        other_body_bytes=settings.max_admin_body_bytes,
        body_timeout_s=settings.client_body_timeout_s,
    )


class V1FastPath:
    """Sends `POST` to the paths of `router.protocols.ADAPTERS` straight to the proxy.

    Starlette's middleware stack and router cost about a tenth of the router's CPU per request
    (benchmarks/README.md); the proxy handler needs none of it (it answers every error itself).
    Everything else, lifespan included, goes to the Starlette app.
    """

    def __init__(self, app: Starlette, other: ASGIApp) -> None:
        self.app = app
        self.other = other  # the same app, maybe behind the proxy-headers wrapper
        self.state = app.state
        self.watches = LateWatches()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in protocols.ADAPTERS:
            first = await receive()
            await self.with_body(scope, first, receive, send)
            return
        await self.other(scope, receive, send)

    async def with_body(self, scope: Scope, first: Message, receive: Receive, send: Send) -> None:
        """An HTTP request whose first message (the whole body, from RequestLimits) was already received.

        A generation runs the proxy here, in this one frame; if the client goes away before the
        answer is sent, it is cancelled. Neither server cancels a handler whose client left, so
        without this a non-stream request would keep its upstream generating for nobody.
        Cancelling the handler cancels the upstream request (the transport closes that
        connection) and logs a 499. The watch starts once the request has run
        `client_watch.WATCH_AFTER_S` (most finish sooner, and watching costs).
        """
        if scope["method"] != "POST" or scope["path"] not in protocols.ADAPTERS:
            await self.other(scope, replay(first, receive), send)
            return
        scope["app"] = self.app
        if first["type"] != "http.request" or first.get("more_body", False):  # body not read ahead: no watch
            replayed = replay(first, receive)
            response = await proxy.handle_generation(Request(scope, replayed, send))
            await response(scope, replayed, send)
            return
        loop = asyncio.get_running_loop()
        watch = ClientWatch(receive, asyncio.current_task(loop), loop.time())
        self.watches.add(watch, loop)  # started if the request lasts (client_watch.WATCH_AFTER_S)
        receive_after_body = watch.receive_after_body  # the body is the Request's already
        try:
            try:
                response = await proxy.handle_generation(V1Request(scope, receive_after_body, send, first))
                if type(response) is proxy.RelayResponse:  # still watched: leaving cancels the relay
                    await response.send_events(send)
            finally:
                self.watches.end(watch)
            if type(response) is proxy.RelayResponse:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif response.background is None and type(response).__call__ is _RESPONSE_CALL:
                # What Response.__call__ sends
                start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
                await send(start)
                await send({"type": "http.response.body", "body": response.body})
            else:
                await response(scope, receive_after_body, send)
        except asyncio.CancelledError:
            # Our own cancel of a request whose client left (logged as such) ends here: not an error
            # for the server to report. Any other cancellation (a shutdown) goes on.
            if watch.left and watch.task is not None and watch.task.uncancel() == 0:
                return
            raise
        finally:
            watch.close()


_RESPONSE_CALL = Response.__call__


class V1Request(Request):
    """The Request of a /v1 generation: its body read ahead (what `Request.body()` caches) and its
    headers indexed (what `Request.headers` caches), set up in one step."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, first: Message) -> None:
        # What Request.__init__ sets (tests/test_app.py holds them alike), and the two caches
        self.scope, self._receive, self._send, self._form = scope, receive, send, None
        self._stream_consumed = self._is_disconnected = False
        self._body = first.get("body", b"")
        self._headers = IndexedHeaders(scope)


class IndexedHeaders(Headers):
    """Starlette's request headers, looked up through a dict built once (a /v1 request asks for
    about six names; `Headers` scans the whole list for each and raises KeyError for an absent one).
    Same answers: the first value of a name, names as the server gave them (lower case in ASGI)."""

    def __init__(self, scope: Scope) -> None:  # what Headers(scope=scope) sets, and the index
        self._list = raw = scope["headers"] = list(scope["headers"])
        self._index: dict[bytes, bytes] = dict(reversed(raw))  # the first one wins

    def __getitem__(self, key: str) -> str:
        value = self._index.get(key.lower().encode("latin-1"))
        if value is None:
            raise KeyError(key)
        return value.decode("latin-1")

    def get(self, key: str, default: Any = None) -> Any:
        value = self._index.get(key.lower().encode("latin-1"))
        return default if value is None else value.decode("latin-1")

    def __contains__(self, key: Any) -> bool:
        return key.lower().encode("latin-1") in self._index
