"""GET /openapi.json: the surface this façade serves, with the request schemas it enforces
(generated from the same pydantic models that validate requests) and the shapes it answers."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from facade.api.chat import ChatCompletionRequest
from facade.api.completions import CompletionRequest
from facade.api.embeddings import EmbeddingRequest
from facade.api.images import ImageRequest


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


STRING, INTEGER = {"type": "string"}, {"type": "integer"}
USAGE = _obj({"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER})
ERROR = _obj({"error": _obj({"message": STRING, "type": STRING, "param": {"type": ["string", "null"]},
                             "code": {"type": ["string", "null"]}})})
MODEL = _obj({"id": STRING, "object": {"const": "model"}, "created": INTEGER, "owned_by": STRING})
RESPONSES: dict[str, dict] = {
    "ChatCompletion": _obj({
        "id": STRING, "object": {"const": "chat.completion"}, "created": INTEGER, "model": STRING,
        "system_fingerprint": STRING, "usage": USAGE,
        "choices": {"type": "array", "items": _obj({
            "index": INTEGER, "finish_reason": {"enum": ["stop", "length"]},
            "message": _obj({"role": {"const": "assistant"}, "content": STRING}),
        })},
    }),
    "Completion": _obj({
        "id": STRING, "object": {"const": "text_completion"}, "created": INTEGER, "model": STRING, "usage": USAGE,
        "choices": {"type": "array", "items": _obj({"index": INTEGER, "text": STRING,
                                                     "finish_reason": {"enum": ["stop", "length"]}})},
    }),
    "EmbeddingList": _obj({
        "object": {"const": "list"}, "model": STRING,
        "usage": _obj({"prompt_tokens": INTEGER, "total_tokens": INTEGER}),
        "data": {"type": "array", "items": _obj({
            "object": {"const": "embedding"}, "index": INTEGER,
            "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}}, STRING]},
        })},
    }),
    "ImagesResponse": _obj({
        "created": INTEGER,
        "data": {"type": "array", "items": _obj({"b64_json": STRING, "url": STRING, "revised_prompt": STRING},
                                                required=["revised_prompt"])},
    }),
    "Model": MODEL,
    "ModelList": _obj({"object": {"const": "list"}, "data": {"type": "array", "items": MODEL}}),
    "Error": ERROR,
}
REQUESTS = {
    "CreateChatCompletionRequest": ChatCompletionRequest,
    "CreateCompletionRequest": CompletionRequest,
    "CreateEmbeddingRequest": EmbeddingRequest,
    "CreateImageRequest": ImageRequest,
}
ERRORS = {str(code): {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
          for code, text in ((400, "invalid request"), (401, "missing or invalid credential"),
                             (403, "scope or model not allowed"), (404, "unknown model"), (413, "body too large"),
                             (429, "rate limit"), (503, "a service is unavailable"))}


def _post(summary: str, request: str, response: str, stream: bool = False) -> dict:
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}}
    if stream:
        content["text/event-stream"] = {"schema": STRING}
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}}},
        "responses": {"200": {"description": "OK", "content": content}, **ERRORS},
    }}


def build_document() -> dict:
    schemas: dict[str, Any] = {}
    for name, model in REQUESTS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    schemas.update(RESPONSES)
    ok = lambda ref: {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": ref}}}}, **ERRORS}  # noqa: E731
    return {
        "openapi": "3.1.0",
        "info": {"title": "hubmesh", "version": "0.1.0",
                 "description": "OpenAI-compatible API (chat, completions, embeddings, images, models)."},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/chat/completions": _post("Create a chat completion", "CreateChatCompletionRequest", "ChatCompletion", True),
            "/v1/completions": _post("Create a completion", "CreateCompletionRequest", "Completion", True),
            "/v1/embeddings": _post("Create embeddings", "CreateEmbeddingRequest", "EmbeddingList"),
            "/v1/images/generations": _post("Create images", "CreateImageRequest", "ImagesResponse"),
            "/v1/models": {"get": {"summary": "List models", "responses": ok("#/components/schemas/ModelList")}},
            "/v1/models/{model}": {"get": {
                "summary": "Retrieve a model",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": STRING}],
                "responses": ok("#/components/schemas/Model"),
            }},
        },
    }


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this façade."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


OPENAPI = web.AppKey("openapi", bytes)  # the document, serialised once at start-up
