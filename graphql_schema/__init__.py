"""The admin GraphQL API, served at /graphql on the router's own port.

`graphql_routes(settings)` returns the Starlette routes to mount: POST/GET /graphql (GraphiQL for
a browser's GET; it loads its scripts from a CDN) and the WebSocket at /graphql (protocols
graphql-transport-ws and the legacy graphql-ws). CORS for CORS_ORIGINS is applied to this route
only; the same origins may open cross-site WebSockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import Any

import orjson
from cross_web import HTTPException  # strawberry's own HTTP errors
from graphql import GraphQLError
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.websocket_origin import normalize_origin
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from graphql_schema.context import (
    DEVICE_COOKIE,
    USER_KEY_REFUSED,
    AdminContext,
    AdminSecurity,
    Loaders,
    client_address,
    token_from_params,
    viewer_for,
)
from graphql_schema.errors import FORBIDDEN, UNAUTHENTICATED, api_error
from graphql_schema.graphiql import graphiql_html, graphiql_routes
from graphql_schema.schema import AdminSchema, build_schema
from router import errors
from router.auth import bearer_token
from router.bodies import loads_limited
from router.config import Settings

__all__ = ["AdminGraphQL", "build_schema", "graphql_routes"]

log = logging.getLogger("router.graphql")

UNAUTHENTICATED_MAX_BODY = 8 * 1024  # bytes: ample for `login`, nothing to parse for an attacker


class AdminGraphQL(GraphQL[AdminContext, None]):
    """Strawberry's ASGI app with the router's context, admin authentication and request limits."""

    def __init__(self, schema: AdminSchema, settings: Settings, origins: list[str]) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.graphiql else None,
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL],
            keep_alive=True,  # graphql-ws "ka" messages
            keep_alive_interval=15,
            connection_init_wait_timeout=timedelta(seconds=10),
            allowed_origins=origins,
        )
        self.settings = settings
        self._security: AdminSecurity | None = None

    @property
    def graphql_ide_html(self) -> str:
        return graphiql_html()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            try:
                await super().__call__(scope, receive, send)
            finally:
                watch = scope.get(_WATCH_KEY)
                if watch is not None:
                    watch.cancel()
            return
        if scope["method"] == "OPTIONS":  # a CORS preflight never gets here (CORSMiddleware answers it)
            await Response(status_code=204, headers={"Allow": "GET, POST, OPTIONS"})(scope, receive, send)
            return
        try:
            response = await self.run(Request(scope, receive))
        except HTTPException as exc:  # strawberry's own refusals (bad JSON, wrong method...)
            response = errors.graphql_http_error(exc.status_code, exc.reason)
        await response(scope, receive, send)

    def decode_json(self, data: str | bytes) -> object:
        """orjson (the stdlib parser recurses: a deeply nested body raised RecursionError), depth-capped."""
        return loads_limited(data)

    def encode_json(self, data: object) -> str:
        # A str, not bytes: WebSocket messages must go out as text frames (graphql-ws requires it).
        return orjson.dumps(data).decode()

    def security(self, conn: Request | WebSocket) -> AdminSecurity:
        """One per app, kept on app.state.admin_security (an app may have set its own)."""
        state = conn.app.state
        security = getattr(state, "admin_security", None)
        if security is None:
            security = self._security = self._security or AdminSecurity.from_settings(self.settings)
            state.admin_security = security
        return security

    async def get_context(self, request: Request | WebSocket, response: Any) -> AdminContext:
        security = self.security(request)
        address = client_address(request)
        who = security.device_key(request.cookies.get(DEVICE_COOKIE)) or address
        is_ws = request.scope["type"] == "websocket"
        # A WebSocket may still authenticate with its connection_init payload (see on_ws_connect).
        token = bearer_token(request.headers.get("authorization"))
        viewer = None if is_ws else viewer_for(request.app.state.runtime, token)
        if viewer is not None:  # a user's own key: `me` only, and not a guess at the admin token
            auth_error: GraphQLError | None = api_error(FORBIDDEN, USER_KEY_REFUSED)
        else:
            auth_error = await security.authenticate(token, who)
        if auth_error is not None and await _body_over(request, UNAUTHENTICATED_MAX_BODY):
            # Without a valid token only `login` (or `me`) can run: a small body is all they need.
            limit_kb = UNAUTHENTICATED_MAX_BODY // 1024
            raise HTTPException(413, f"Request body is larger than {limit_kb} KB (without a valid admin token).")
        return AdminContext(
            request=request,
            response=response,
            runtime=request.app.state.runtime,
            admin=request.app.state.admin,
            security=security,
            settings=self.settings,
            address=address,
            loaders=Loaders(request.app.state.admin, cache=not is_ws),
            auth_error=auth_error,
            viewer=viewer,
            who=who,
            token=token if auth_error is None else None,
        )

    async def on_ws_connect(self, context: AdminContext) -> None:
        token = token_from_params(context.connection_params)
        if token is not None:
            context.auth_error = await context.security.authenticate(token, context.who)
            context.token = token if context.auth_error is None else None
        if context.auth_error is not None:
            log.info("admin WebSocket from %s refused: %s", context.address, context.auth_error.message)
            extensions = context.auth_error.extensions or {}
            raise ConnectionRejectionError({"message": context.auth_error.message, **extensions})
        expiry = context.security.tokens.session_expiry(context.token)
        if expiry is not None and isinstance(context.request, WebSocket):
            context.request.scope[_WATCH_KEY] = asyncio.create_task(_end_with_session(context, expiry))
        return None


async def _body_over(conn: Request | WebSocket, limit: int) -> bool:
    """True for an HTTP POST whose body (already read by server_limits, so bounded) is over `limit`."""
    return isinstance(conn, Request) and conn.method == "POST" and len(await conn.body()) > limit


_WATCH_KEY = "llm_router.session_watch"


async def _end_with_session(context: AdminContext, expiry: float) -> None:
    """Closes a WebSocket (4401) when its session token expires, or within ADMIN_SESSION_RECHECK_S once
    it is logged out."""
    token = context.token
    assert token is not None
    recheck_s = context.settings.admin_session_recheck_s
    while True:
        await asyncio.sleep(max(0.0, min(expiry - time.time(), recheck_s)))
        if time.time() >= expiry:
            reason = "The admin session has expired: log in again."
        elif await context.security.revocations.is_revoked(token):
            reason = "The admin session has ended (logged out): log in again."
        else:
            continue
        context.auth_error = api_error(UNAUTHENTICATED, reason)
        log.info("admin WebSocket from %s closed: %s", context.address, reason)
        if isinstance(context.request, WebSocket):  # only WebSockets are watched (see on_ws_connect)
            with contextlib.suppress(RuntimeError):
                await context.request.close(4401, reason)
        return


def _origins(settings: Settings) -> list[str]:
    """CORS_ORIGINS, normalised ("*" allowed); entries that are not origins are skipped with a warning."""
    origins = []
    for origin in settings.cors_origins:
        normalized = "*" if origin.strip() == "*" else normalize_origin(origin.strip().rstrip("/"))
        if normalized is None:
            log.warning("CORS_ORIGINS: %r is not an origin like https://example.com; ignored", origin)
        else:
            origins.append(normalized)
    return origins


def graphql_routes(settings: Settings) -> list[BaseRoute]:
    """The /graphql routes for one app (each call builds its own schema, view and auth state)."""
    origins = _origins(settings)
    view = AdminGraphQL(build_schema(settings), settings, origins)
    http_app: Any = view
    methods = ["GET", "POST", "OPTIONS"]
    if origins:
        http_app = CORSMiddleware(
            view,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            max_age=600,
        )
    routes: list[BaseRoute] = [
        Route("/graphql", http_app, methods=methods, name="graphql"),
        WebSocketRoute("/graphql", view, name="graphql_ws"),
    ]
    if settings.graphiql:
        routes += graphiql_routes()
    return routes
