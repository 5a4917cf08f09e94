"""The Route record, and which Route a request is on.

The table itself is facade/routes.py (it imports every handler); this module imports none, so the
middlewares (auth, capacity, access log) read the Route a request is on (its Call keeps it) without an import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, AbstractRoute

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PLACEHOLDER = re.compile(r"\{(\w+)(?::[^}]*)?\}")  # aiohttp's {name} or {name:regex}


@dataclass(frozen=True)
class Route:
    """One endpoint: what serves it, who may call it, how it is counted, and how it is documented."""

    method: str
    path: str  # aiohttp's path syntax ({name} or {name:regex})
    handler: Handler
    family: str | None = None  # the scope a credential needs (Principal.may_use); None: none
    operation: str | None = None  # the span's gen_ai.operation.name; None: not a GenAI operation
    admitted: bool = True  # counted by admission control (in-flight limit, shutdown grace)
    public: bool = False  # served without a credential
    summary: str | None = None  # listed in /openapi.json when set
    request: type | None = None  # the pydantic model that validates the JSON body
    query: type | None = None  # the pydantic model that validates the query parameters
    response: type | None = None  # the TypedDict of the JSON answer
    stream: type | None = None  # the TypedDict of each SSE `data:` event (with `stream: true`)
    dialect: str = "openai"  # whose API it is: the shape of its errors ("anthropic": POST /v1/messages)

    @property
    def openapi_path(self) -> str:
        """The path in OpenAPI's syntax: {name}."""
        return _PLACEHOLDER.sub(r"{\1}", self.path)

    @property
    def path_parameters(self) -> list[str]:
        return _PLACEHOLDER.findall(self.path)


class RouteIndex:
    """The app's routes by aiohttp route (what the router matched), and by resource for 405s."""

    def __init__(self) -> None:
        self._by_route: dict[AbstractRoute, Route] = {}
        self._by_resource: list[tuple[AbstractResource, Route]] = []

    def add(self, router: web.UrlDispatcher, route: Route) -> None:
        """Registers `route`; a GET also answers HEAD (as aiohttp's add_get does)."""
        methods = ("HEAD", "GET") if route.method == "GET" else (route.method,)
        for method in methods:
            registered = router.add_route(method, route.path, route.handler)
            self._by_route[registered] = route
        resource = registered.resource
        assert resource is not None, "a route the router adds belongs to one of its resources"
        self._by_resource.append((resource, route))

    def of(self, request: web.Request) -> Route | None:
        match = request.match_info
        route = self._by_route.get(match.route)
        if route is None and isinstance(match.http_exception, web.HTTPMethodNotAllowed):
            route = self._on_path(request.path)  # a known path, another method: 405 under that route's rules
        return route

    def _on_path(self, path: str) -> Route | None:
        for resource, route in self._by_resource:
            info = resource.get_info()
            pattern = info.get("pattern")
            if info.get("path") == path or (pattern is not None and pattern.fullmatch(path)):
                return route
        return None


ROUTE_INDEX = web.AppKey("route_index", RouteIndex)


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Registers every route with the app's router, in order (aiohttp matches in that order)."""
    index = app[ROUTE_INDEX] = RouteIndex()
    for route in routes:
        index.add(app.router, route)


def route_of(request: web.Request) -> Route | None:
    """The Route a request is on: the matched one; for a 405, the route of that path; None for an
    unknown URL (which still needs a credential, and is not admission-controlled)."""
    index = request.app.get(ROUTE_INDEX)
    return index.of(request) if index is not None else None
