"""The admin dashboard: a static single-page app served by the router itself at /admin.

Everything it needs lives in `router/static/admin/` (plain ES modules, no build step, CodeMirror 5
vendored under `vendor/`), so it works offline. It talks only to the public `/graphql` API.

Caching: `index.html` and the app's own modules are revalidated on every load (ETag + `no-cache`), so
an upgraded router is picked up at once; files under `vendor/<name>-<version>/` never change for a
given path and are cached for a year.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

STATIC_ROOT = Path(__file__).resolve().parent / "static" / "admin"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE
}
COMPRESSIBLE = (".html", ".js", ".mjs", ".css", ".json", ".svg", ".txt", ".md")

NO_CACHE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes | None
    etag: str
    content_type: str
    cache_control: str
    mtime_ns: int


_cache: dict[Path, _Asset] = {}


def _resolve(rel: str) -> Path | None:
    """The file under STATIC_ROOT that `rel` names, or None (missing, a folder, or outside the root)."""
    parts = PurePosixPath(rel).parts
    if any(part in ("..", "") or part.startswith(".") or "\\" in part for part in parts):
        return None
    path = (STATIC_ROOT / Path(*parts)).resolve() if parts else None
    if path is None or not path.is_relative_to(STATIC_ROOT) or not path.is_file():
        return None
    if path.suffix.lower() not in CONTENT_TYPES:
        return None
    return path


def _load(path: Path) -> _Asset:
    stat = path.stat()
    cached = _cache.get(path)
    if cached is not None and cached.mtime_ns == stat.st_mtime_ns:
        return cached
    body = path.read_bytes()
    suffix = path.suffix.lower()
    gz = gzip.compress(body, 6, mtime=0) if suffix in COMPRESSIBLE and len(body) > 1024 else None
    rel = path.relative_to(STATIC_ROOT).parts
    asset = _Asset(
        body=body,
        gzipped=gz if gz is not None and len(gz) < len(body) else None,
        etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        content_type=CONTENT_TYPES[suffix],
        cache_control=IMMUTABLE if rel and rel[0] == "vendor" and len(rel) > 2 else NO_CACHE,
        mtime_ns=stat.st_mtime_ns,
    )
    _cache[path] = asset
    return asset


def _serve(request: Request, path: Path | None) -> Response:
    if path is None:
        return Response("Not found", status_code=404, media_type="text/plain")
    asset = _load(path)
    headers = {
        "ETag": asset.etag,
        "Cache-Control": asset.cache_control,
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept-Encoding",
    }
    if asset.content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Frame-Options"] = "DENY"
    inm = request.headers.get("if-none-match")
    if inm and asset.etag in [tag.strip().removeprefix("W/") for tag in inm.split(",")]:
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", "").lower():
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=asset.content_type)
    return Response(body, status_code=200, headers=headers, media_type=asset.content_type)


async def _index(request: Request) -> Response:
    return _serve(request, _resolve("index.html"))


async def _asset(request: Request) -> Response:
    return _serve(request, _resolve(request.path_params["path"]))


async def _redirect(request: Request) -> Response:
    return RedirectResponse("/admin", status_code=308)


def admin_routes() -> list[BaseRoute]:
    """Routes for the dashboard: `GET /admin` (the app) and `GET /admin/<asset>`."""
    return [
        Route("/admin", _index, methods=["GET", "HEAD"], name="admin"),
        Route("/admin/", _redirect, methods=["GET", "HEAD"]),
        Route("/admin/{path:path}", _asset, methods=["GET", "HEAD"], name="admin_asset"),
    ]
