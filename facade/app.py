"""create_app(settings): the OpenAI REST/SSE surface in front of the gRPC services."""

from __future__ import annotations

from aiohttp import web

from facade.api import chat, completions, embeddings, models
from facade.auth import api_key_middleware
from facade.clients import clients_ctx
from facade.errors import error_middleware
from facade.settings import Settings
from facade.sse import SSE_PING_S


async def health(request: web.Request) -> web.Response:
    """Alive (no dependency checked)."""
    return web.json_response({"status": "ok"})


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, api_key_middleware(settings.api_keys)],
        client_max_size=settings.max_body_bytes,
    )
    app[SSE_PING_S] = settings.sse_ping_s
    app.cleanup_ctx.append(clients_ctx(settings))
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model:.+}", models.retrieve_model)
    app.router.add_post("/v1/chat/completions", chat.create_chat_completion)
    app.router.add_post("/v1/completions", completions.create_completion)
    app.router.add_post("/v1/embeddings", embeddings.create_embeddings)
    return app
