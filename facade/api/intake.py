"""How every endpoint takes in a JSON body: parse it, then name on the Call what it asks for.

accept() is the one sequence every handler starts with: the body validated into its request model
(facade/api/validation.py, 400/413), then OpenAI's `user` and — for bodies that name a model — the
model on the Call (Call.use_model: the credential's model allow-list, 403, and the caller's limits
for that model, 429). A model alias (facade/aliases.py) is named with Call.name_alias instead: the
limits are those of the chain's model the handler's serve() tries.
"""

from __future__ import annotations

from typing import TypeVar

import pydantic
from aiohttp import web

from facade.aliases import aliases_of
from facade.api.validation import parse_body
from facade.call import Call, call_of

Body = TypeVar("Body", bound=pydantic.BaseModel)


async def accept(request: web.Request, model: type[Body]) -> tuple[Call, Body]:
    """The request's Call and its validated body, the model it names allowed and admitted."""
    body = await parse_body(request, model)
    call = call_of(request)
    call.user = getattr(body, "user", None) or ""
    if "model" in model.model_fields:
        name = getattr(body, "model", None) or ""
        if name and aliases_of(request.app).chain(name) is not None:
            call.name_alias(name)
        else:
            await call.use_model(name)
    return call, body
