"""The one route table (facade/routes.py): what is registered, public, admitted, scoped, traced and
documented all comes from it, and 404/405/HEAD behave as aiohttp's router says."""

import time

import jwt
import pytest

from facade.app import create_app
from facade.auth.principal import FAMILIES
from facade.openapi import build_document
from facade.routes import ROUTES
from facade.settings import Settings

KEY = "routes-key"
SECRET = "routes-secret-routes-secret-routes-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def token(scope: str) -> dict:
    now = int(time.time())
    claims = {"sub": "carol", "scope": scope, "iat": now, "exp": now + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@pytest.fixture
async def client(aiohttp_client):
    from local.processes import free_port

    unreachable = f"127.0.0.1:{free_port()}"  # nothing here reaches a service
    app = create_app(Settings(api_keys=(KEY,), jwt_secret=SECRET, text_target=unreachable,
                              embeddings_target=unreachable, images_target=unreachable))
    return await aiohttp_client(app)


def test_the_table_is_consistent():
    assert len({(r.method, r.path) for r in ROUTES}) == len(ROUTES)
    assert {r.family for r in ROUTES} - {None} == set(FAMILIES)  # every scope names a family of routes
    for route in ROUTES:
        assert route.public != route.admitted  # public routes are the ones admission control leaves alone
        # a public route needs no scope; of the others only GET /v1/usage (every caller reads its own)
        assert route.public or route.family is not None or (route.method, route.path) == ("GET", "/v1/usage")
        assert not (route.public and route.family is not None)
        # every API route is a GenAI operation of its spans, but the operator's, the usage's and the keys'
        assert (route.operation is None) == (route.family in (None, "admin", "keys"))
        assert route.admitted == route.path.startswith(("/v1/", "/auth/v1/"))  # the API (IONOS's Auth API too)
    documented = {(r.openapi_path, r.method.lower()) for r in ROUTES if r.summary}
    paths = build_document(ROUTES)["paths"]
    assert {(path, method) for path, item in paths.items() for method in item} == documented
    assert "/v1/models/{model}" in paths  # aiohttp's {model:.+} in OpenAPI's syntax


async def test_every_route_is_registered_with_head_for_get(client):
    registered = {(r.method, r.resource.canonical) for r in client.app.router.routes()}
    for route in ROUTES:
        assert (route.method, route.openapi_path) in registered
        if route.method == "GET":
            assert ("HEAD", route.openapi_path) in registered


async def test_public_routes_need_no_credential(client):
    for route in ROUTES:
        if route.public:
            response = await client.get(route.path)
            assert response.status in (200, 503), route.path  # /ready: 503 with no service up
            assert (await client.head(route.path)).status in (200, 503)


async def test_api_routes_need_a_credential_head_included(client):
    for method, path in (("GET", "/v1/models"), ("HEAD", "/v1/models"), ("GET", "/v1/models/a/b"),
                         ("POST", "/v1/chat/completions"), ("GET", "/v1/images/files/abc")):
        response = await client.request(method, path)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)


async def test_unknown_urls_need_a_credential_then_404(client):
    assert (await client.get("/v1/nothing")).status == 401
    assert (await client.get("/nothing")).status == 401
    response = await client.get("/v1/nothing", headers=AUTH)
    assert response.status == 404 and (await response.json())["error"]["code"] == "unknown_url"


async def test_405_follows_the_rules_of_the_path(client):
    # a public path stays public
    response = await client.post("/health")
    assert response.status == 405 and (await response.json())["error"]["code"] == "method_not_allowed"
    # an API path needs a credential, and the family's scope, before its 405
    assert (await client.get("/v1/chat/completions")).status == 401
    response = await client.get("/v1/embeddings", headers=token("chat"))
    assert response.status == 403 and (await response.json())["error"]["code"] == "insufficient_scope"
    response = await client.get("/v1/chat/completions", headers=token("chat"))
    assert response.status == 405
    assert (await client.post("/v1/models/x", headers=AUTH)).status == 405


async def test_scopes_come_from_the_route_family(client):
    chat_only = token("chat")
    for method, path, family in (("GET", "/v1/models", "models"), ("GET", "/v1/models/a/b", "models"),
                                 ("POST", "/v1/completions", "completions"), ("POST", "/v1/embeddings", "embeddings"),
                                 ("POST", "/v1/images/generations", "images"), ("GET", "/v1/images/files/abc", "images")):
        response = await client.request(method, path, json={}, headers=chat_only)
        assert response.status == 403, (method, path)
        assert (await response.json())["error"]["message"] == f"This credential lacks the '{family}' scope."
    response = await client.post("/v1/chat/completions", json={}, headers=chat_only)
    assert response.status == 400  # past auth: the body is invalid


async def test_the_span_operation_comes_from_the_route(client, monkeypatch):
    seen = []
    monkeypatch.setattr("facade.observability.set_genai_attributes", lambda **attributes: seen.append(attributes))
    await client.post("/v1/chat/completions", json={}, headers=AUTH)
    await client.get("/v1/models", headers=AUTH)
    await client.get("/health")
    await client.get("/v1/nothing", headers=AUTH)
    assert [a["operation__name"] for a in seen if "operation__name" in a] == ["chat", "list_models"]


async def test_only_api_routes_are_admission_controlled(aiohttp_client):
    from facade.capacity import IN_FLIGHT

    app = create_app(Settings(api_keys=(KEY,), max_in_flight=1))
    client = await aiohttp_client(app)
    app[IN_FLIGHT].count = 1  # the one slot is taken
    for path in ("/health", "/openapi.json", "/metrics"):
        assert (await client.get(path)).status == 200
    assert (await client.get("/v1/nothing", headers=AUTH)).status == 404  # unknown URLs are not counted
    response = await client.get("/v1/models", headers=AUTH)
    assert response.status == 429 and (await response.json())["error"]["code"] == "server_overloaded"
    app[IN_FLIGHT].count = 0
