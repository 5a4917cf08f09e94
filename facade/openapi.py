"""GET /openapi.json: the surface this façade serves, generated from what serves it. Paths come from
the route table (facade/routes.py), request schemas and query parameters from the pydantic models
that validate the bodies and query strings, response schemas from the TypedDicts the handlers build
(facade/api/response_bodies.py): nothing here is written by hand, so the document cannot drift from the
wire."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable
from typing import Any

import pydantic
from aiohttp import web

from facade.api.response_bodies import AnthropicErrorResponse, ErrorResponse
from facade.route_index import Route

REF = "#/components/schemas/{model}"
STREAM_DESCRIPTION = (
    "With `stream: true`: server-sent events. Each `data:` event is one chunk ({chunk}); the stream "
    "ends with `data: [DONE]`. Comment lines (`: ping`) keep the connection alive between events. "
    "An error after the stream started is sent as one last `data:` event holding an ErrorResponse, "
    "then `data: [DONE]`."
)
# the errors every documented operation may answer; POST bodies can also be invalid or too large
ERRORS = ((401, "missing or invalid credential"), (403, "scope or model not allowed"), (404, "unknown model"),
          (429, "rate limit, or the server at capacity"), (503, "a service is unavailable"),
          (504, "a service timed out"))
BODY_ERRORS = ((400, "invalid request"), (413, "body too large"))
QUERY_ERRORS = ((400, "invalid query parameter"),)


class _Schemas:
    """components/schemas, filled as types are referenced; a name given twice must mean one schema."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def _put(self, name: str, schema: dict) -> None:
        if self.schemas.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas are named {name!r} in the OpenAPI document")

    def _add(self, name: str, schema: dict) -> str:
        for def_name, definition in schema.get("$defs", {}).items():
            self._put(def_name, definition)
        self._put(name, {key: value for key, value in schema.items() if key != "$defs"})
        return REF.format(model=name)

    def request(self, model: type[pydantic.BaseModel]) -> str:
        # OpenAI's names: ChatCompletionRequest -> CreateChatCompletionRequest
        return self._add(f"Create{model.__name__}", model.model_json_schema(ref_template=REF))

    def response(self, typed_dict: type) -> str:
        return self._add(typed_dict.__name__, copy.deepcopy(_typed_dict_schema(typed_dict)))


@functools.cache
def _typed_dict_schema(typed_dict: type) -> dict:
    """A TypedDict's JSON schema, $defs included (made once per type: every app builds the document)."""
    return pydantic.TypeAdapter(typed_dict).json_schema(ref_template=REF)


def _json(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": ref}}}


def _operation(route: Route, schemas: _Schemas) -> dict:
    error = schemas.response(AnthropicErrorResponse if route.dialect == "anthropic" else ErrorResponse)
    errors = (*(BODY_ERRORS if route.request is not None else QUERY_ERRORS if route.query is not None else ()),
              *ERRORS)
    ok: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        ok["content"] = _json(schemas.response(route.response))
    if route.stream is not None:
        chunk = schemas.response(route.stream)
        ok["description"] = "OK: the JSON answer, or with `stream: true` an event stream."
        ok.setdefault("content", {})["text/event-stream"] = {"schema": {
            "description": STREAM_DESCRIPTION.format(chunk=route.stream.__name__),
            "anyOf": [{"$ref": chunk}, {"$ref": error}],
        }}
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": route.handler.__name__,
        "responses": {
            "200": ok,
            **{str(code): {"description": text, "content": _json(error)} for code, text in sorted(errors)},
        },
    }
    if route.handler.__doc__:
        operation["description"] = route.handler.__doc__.strip()
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in route.path_parameters]
    if route.query is not None:
        parameters.extend(_query_parameters(route.query))
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        operation["requestBody"] = {"required": True, "content": _json(schemas.request(route.request))}
    if route.public:
        operation["security"] = []
    return operation


def _query_parameters(model: type[pydantic.BaseModel]) -> list[dict]:
    """A query model's fields as OpenAPI parameters: each field's schema, its description beside it.
    A query string holds no null: an optional field is one that may be left out."""
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field_schema in schema["properties"].items():
        field_schema = {key: value for key, value in field_schema.items() if key != "title"}
        options = [option for option in field_schema.pop("anyOf", ()) if option != {"type": "null"}]
        if len(options) == 1:
            field_schema.update(options[0])
        elif options:
            field_schema["anyOf"] = options
        if "default" in field_schema and field_schema["default"] is None:
            del field_schema["default"]
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in field_schema:
            parameter["description"] = field_schema.pop("description")
        parameters.append({**parameter, "schema": field_schema})
    return parameters


def build_document(routes: Iterable[Route]) -> dict:
    """The OpenAPI 3.1 document of the routes that have a summary."""
    schemas = _Schemas()
    paths: dict[str, dict] = {}
    for route in routes:
        if route.summary is not None:
            paths.setdefault(route.openapi_path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "hubmesh", "version": "0.1.0",
                 "description": "OpenAI-compatible API (chat, completions, embeddings, images, models)."},
        "components": {"schemas": schemas.schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this façade."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


OPENAPI = web.AppKey("openapi", bytes)  # the document, serialised once at start-up
