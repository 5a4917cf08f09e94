"""/console: the operator's web console, a few static files (static/: HTML, CSS, ES modules; no build
step) the façade serves as they are. The pages are public; every number on them comes from the API
(GET /v1/usage, /v1/keys, /v1/mesh, /v1/models, POST /v1/chat/completions) with the key the user
pastes, which the browser keeps in sessionStorage and sends as `Authorization: Bearer`, never in a URL.

Only the files of static/ are served, each on its own route (no path below it, no listing), read once."""

from __future__ import annotations

import functools
import mimetypes
import re
from pathlib import Path

from aiohttp import web

from facade.errors import OpenAIError

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/console"
INDEX = "index.html"
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml",
          ".txt": "text/plain", ".png": "image/png", ".ico": "image/x-icon"}
# the pages load only their own files and call only this origin's API
HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@functools.cache
def files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, content type) of every file in static/."""
    found = {}
    for path in sorted(STATIC.iterdir()):
        if path.is_file() and _NAME.match(path.name):
            content_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            found[path.name] = (path.read_bytes(), content_type)
    return found


def paths() -> tuple[str, ...]:
    """The URLs the console is served on: /console, /console/ (the page) and /console/<file>, one
    route each in facade/routes.py (any other /console/... is an unknown URL)."""
    return (PREFIX, PREFIX + "/", *(f"{PREFIX}/{name}" for name in files()))


async def serve(request: web.Request) -> web.Response:
    """GET one of paths(): the file, as it is in static/."""
    name = request.path.removeprefix(PREFIX).removeprefix("/") or INDEX
    found = files().get(name)
    if found is None:  # (the routes are made from files(): never)
        raise OpenAIError(404, f"Unknown request URL: GET {request.path}", code="unknown_url")
    body, content_type = found
    charset = "utf-8" if content_type.startswith("text/") or content_type.endswith("+xml") else None
    return web.Response(body=body, content_type=content_type, charset=charset, headers=HEADERS)
