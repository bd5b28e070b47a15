"""The admin GraphQL API, served at /graphql on the router's own port.

`graphql_routes(settings)` returns the Starlette routes to mount: POST/GET /graphql (GraphiQL for
a browser's GET; it loads its scripts from a CDN) and the WebSocket at /graphql (protocols
graphql-transport-ws and the legacy graphql-ws). CORS for CORS_ORIGINS is applied to this route
only; the same origins may open cross-site WebSockets.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.websocket_origin import normalize_origin
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL

from graphql_schema.context import (
    USER_KEY_REFUSED,
    AdminContext,
    AdminSecurity,
    Loaders,
    client_address,
    token_from_params,
    viewer_for,
)
from graphql_schema.errors import FORBIDDEN, api_error
from graphql_schema.schema import AdminSchema, build_schema
from router.auth import bearer_token
from router.config import Settings

__all__ = ["AdminGraphQL", "build_schema", "graphql_routes"]

log = logging.getLogger("router.graphql")


class AdminGraphQL(GraphQL):
    """Strawberry's ASGI app with the router's context and admin authentication."""

    def __init__(self, schema: AdminSchema, settings: Settings, origins: list[str]) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql",
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL],
            keep_alive=True,  # graphql-ws "ka" messages
            keep_alive_interval=15,
            connection_init_wait_timeout=timedelta(seconds=10),
            allowed_origins=origins,
        )
        self.settings = settings
        self._security: AdminSecurity | None = None

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
        is_ws = request.scope["type"] == "websocket"
        # A WebSocket may still authenticate with its connection_init payload (see on_ws_connect).
        token = bearer_token(request.headers.get("authorization"))
        viewer = None if is_ws else viewer_for(request.app.state.runtime, token)
        context = AdminContext(
            request=request,
            response=response,
            runtime=request.app.state.runtime,
            admin=request.app.state.admin,
            security=security,
            settings=self.settings,
            address=address,
            loaders=Loaders(request.app.state.admin, cache=not is_ws),
            auth_error=api_error(FORBIDDEN, USER_KEY_REFUSED) if viewer else security.authenticate(token, address),
            viewer=viewer,
        )
        return context

    async def on_ws_connect(self, context: AdminContext) -> None:
        token = token_from_params(context.connection_params)
        if token is not None:
            context.auth_error = context.security.authenticate(token, context.address)
        if context.auth_error is not None:
            log.info("admin WebSocket from %s refused: %s", context.address, context.auth_error.message)
            raise ConnectionRejectionError({"message": context.auth_error.message, **context.auth_error.extensions})
        return None


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
    methods = ["GET", "POST"]
    if origins:
        http_app = CORSMiddleware(
            view,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            max_age=600,
        )
        methods.append("OPTIONS")  # preflight requests, answered by the CORS middleware
    return [
        Route("/graphql", http_app, methods=methods, name="graphql"),
        WebSocketRoute("/graphql", view, name="graphql_ws"),
    ]
