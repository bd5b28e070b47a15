"""GraphiQL served from the router itself: the page and its vendored assets (static/graphiql/).

GraphiQL, React and ReactDOM are copied from their npm packages (versions and licenses in
static/graphiql/LICENSES.md), so the IDE works on a machine without internet access. GRAPHIQL=false
turns the page and its assets off (a browser's GET /graphql is then a 404 like any other GET
without a query).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router import errors

ASSETS_DIR = Path(__file__).parent / "static" / "graphiql"
_ASSETS = {
    "graphiql.min.js": "text/javascript; charset=utf-8",
    "graphiql.min.css": "text/css; charset=utf-8",
    "react.production.min.js": "text/javascript; charset=utf-8",
    "react-dom.production.min.js": "text/javascript; charset=utf-8",
}


@cache
def graphiql_html() -> str:
    return (ASSETS_DIR / "index.html").read_text()


@cache
def _asset(name: str) -> bytes:
    return (ASSETS_DIR / name).read_bytes()


async def _serve_asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = _ASSETS.get(name)
    if media_type is None:
        return errors.graphql_http_error(404, f"Not found: {request.url.path}.")
    # Versioned files that never change while the router runs: cache them for a day.
    return Response(_asset(name), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})


def graphiql_routes() -> list[Route]:
    return [Route("/graphql/assets/{name}", _serve_asset, methods=["GET", "HEAD"], name="graphiql_asset")]
