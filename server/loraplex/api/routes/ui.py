"""The playground page: ``GET /`` serves one static HTML page and ``GET /ui/{file}`` its scripts
and style, all packaged with the wheel (``api/static/``): no CDN, no network, no build step.

The page is a client of the public API like any other (it sends the key it keeps in the tab's
``sessionStorage`` as ``Authorization: Bearer``), so it needs no route of its own and no key to
load: on a keyed server it is read-only until a key is entered, and each role sees its 403s.

Every answer here carries a strict Content-Security-Policy: scripts, styles and fetches only
from this origin, no inline script or style, no plugin, no framing, no form posts. The page
sets model output and adapter descriptions as text, never as HTML (an adapter can be trained to
emit ``<script>``); the policy is the second wall should that ever slip.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request, Response

from loraplex.api.errors import APIError

STATIC = Path(__file__).resolve().parent.parent / "static"
PAGE = "index.html"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate each time (the ETag makes that a 304): an upgraded server never runs old JS.
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


class Asset:
    """One static file, read once: its bytes, media type and ETag (sha256 prefix)."""

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.media_type = MEDIA_TYPES[path.suffix]
        self.etag = f'"{hashlib.sha256(self.body).hexdigest()[:16]}"'

    def response(self, request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "ETag": self.etag}
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def read_assets(root: Path = STATIC) -> dict[str, Asset]:
    """Every servable file under ``root`` by its ``/``-separated relative path. A request names
    a key of this dict, never a path on disk, so no URL can reach a file outside it."""
    return {
        path.relative_to(root).as_posix(): Asset(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


def page_weight(assets: dict[str, Asset]) -> int:
    """Bytes a browser downloads for the whole page (every asset, uncompressed)."""
    return sum(len(asset.body) for asset in assets.values())


def build_router() -> APIRouter:
    """The page's routes (left out of the OpenAPI schema: they are not part of the API)."""
    assets = read_assets()
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page(request: Request) -> Response:
        return assets[PAGE].response(request)

    @router.get("/ui/{name:path}")
    async def asset(name: str, request: Request) -> Response:
        found = assets.get(name)
        if found is None or name == PAGE:
            raise APIError(404, f"no playground file {name!r}", code="not_found")
        return found.response(request)

    return router
