"""OpenAI's Responses API, with stored state: POST /v1/responses (JSON or typed SSE events),
GET and DELETE /v1/responses/{response_id}, GET /v1/responses/{response_id}/input_items.

A request is a chat request in other clothes, and runs as one (conversation.py); its stream is the
one relay's, with the Responses API's own events (events.py). With `store` (the default) the
response and its input items are kept in the façade's database (facade/store): SQLite by default,
PostgreSQL to share them between replicas. A subject reads, chains and deletes only its own
responses; anything else reads as unknown (404).
"""

from __future__ import annotations

import logging
from typing import Literal

from aiohttp import web

from facade.api.intake import accept
from facade.api.response_bodies import Response, ResponseDeleted, ResponseItemList
from facade.api.responses.conversation import conversation, renamed, to_proto
from facade.api.responses.events import ResponseEvents
from facade.api.responses.protocol import (
    ITEM_ID,
    RESPONSE_ID,
    ResponseRequest,
    input_items,
    new_id,
    previous_not_found,
    shown,
)
from facade.api.responses.response_object import output_items, response_json, usage_json
from facade.api.text.generation import generate_served, now, open_streams
from facade.api.text.relay import relay
from facade.call import call_of
from facade.errors import OpenAIError, invalid
from facade.jsonio import json_response
from facade.store import RESPONSES_STORE, ResponsesStore, StoreError
from facade.store.response_store import UnknownItem
from hubmesh.text.v1 import text_generation_pb2 as pb

log = logging.getLogger(__name__)
MAX_PAGE = 100


def _store_unavailable() -> OpenAIError:
    return OpenAIError(503, "The response store is unavailable; try again shortly.", type="server_error",
                       code="store_unavailable", headers={"Retry-After": "5"})


async def _store(request: web.Request) -> ResponsesStore:
    try:
        return await request.app[RESPONSES_STORE].get()
    except StoreError:
        raise _store_unavailable() from None


async def _stored(awaitable):
    """A store call; a database failure is a 503, never a 500."""
    try:
        return await awaitable
    except StoreError as err:
        log.error("responses store: %s", err)
        raise _store_unavailable() from None


def _not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"Response with id '{shown(response_id)}' not found.", code="response_not_found")


async def create_response(request: web.Request) -> web.StreamResponse:
    """Creates a model response (JSON, or with `stream: true` OpenAI's typed server-sent events);
    with `store` (the default) it is kept for GET, DELETE, input_items and previous_response_id."""
    call, body = await accept(request, ResponseRequest)
    body.check_supported()
    new_items = input_items(body.input)
    subject = call.subject
    store = await _store(request) if body.stores or body.previous_response_id is not None else None
    prior: list[dict] = []
    if body.previous_response_id is not None:
        assert store is not None, "opened above for a previous_response_id"
        found = await _stored(store.conversation(body.previous_response_id, subject))
        if found is None:
            raise previous_not_found(body.previous_response_id)
        previous, previous_items = found
        prior = previous_items + previous["output"]
    items = conversation(prior, new_items)
    proto = to_proto(body, items, call.caller())
    created = Created(store if body.stores else None, subject, items)
    if body.stream:
        try:  # on the model that serves it (an alias: the first of its chain that starts the stream)
            upstream, = await open_streams(request, [proto], input_param="input")
            events = ResponseEvents(body.model_copy(update={"model": proto.model}), created.id, created.at,
                                    created.save)
            return await relay(request, [(0, upstream)], events)
        except OpenAIError as err:  # before the first byte: its own HTTP status, the Responses request's params
            raise renamed(err) from None
    try:
        result, = await generate_served(request, [proto], input_param="input")
    except OpenAIError as err:
        raise renamed(err) from None
    choice = result.choices[0] if result.choices else pb.Choice(finish_reason=pb.FINISH_REASON_STOP)
    output, status = output_items(choice)
    response = response_json(body, created.id, created.at, status=status, output=output,
                             usage=usage_json(result.usage), model=result.model or body.model)
    await created.save(response)
    return json_response(response)


class Created:
    """A response being made: its id, time, and where it is kept (store None: not kept)."""

    def __init__(self, store: ResponsesStore | None, subject: str, items: list[dict]) -> None:
        self.id = new_id("resp")
        self.at = now()
        self.store = store
        self.subject = subject
        self.items = items

    async def save(self, response: Response) -> None:
        if self.store is not None:
            await _stored(self.store.save(self.subject, response, self.items))


def _response_id(request: web.Request) -> str:
    return request.match_info["response_id"]


def _reject_query(request: web.Request, names: tuple[str, ...]) -> None:
    for name in names:
        values = [v for v in (*request.query.getall(name, ()), *request.query.getall(name + "[]", ())) if v]
        if name == "stream":
            values = [v for v in values if v.lower() not in ("false", "0")]
        if values:
            raise invalid(f"'{name}' is not supported here by this server.", param=name)


async def retrieve_response(request: web.Request) -> web.Response:
    """Retrieves a stored response (the caller's own; any other id is unknown)."""
    response_id = _response_id(request)
    _reject_query(request, ("include", "stream"))
    store = await _store(request)
    found = await _stored(store.get(response_id, call_of(request).subject)) if RESPONSE_ID.match(response_id) else None
    if found is None:
        raise _not_found(response_id)
    return json_response(found)


async def delete_response(request: web.Request) -> web.Response:
    """Deletes a stored response and its input items (the caller's own)."""
    response_id = _response_id(request)
    store = await _store(request)
    deleted = RESPONSE_ID.match(response_id) and await _stored(store.delete(response_id, call_of(request).subject))
    if not deleted:
        raise _not_found(response_id)
    answer: ResponseDeleted = {"id": response_id, "object": "response.deleted", "deleted": True}
    return json_response(answer)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return 20
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE):
        raise invalid(f"Invalid value for 'limit': an integer from 1 to {MAX_PAGE}.", param="limit")
    return int(raw)


async def list_input_items(request: web.Request) -> web.Response:
    """Lists the input items of a stored response: the conversation it was made from (previous
    responses' items included), newest first unless `order=asc`; `limit` (1-100, 20) and `after`
    (an item id) page through it."""
    response_id = _response_id(request)
    _reject_query(request, ("include",))
    limit = _limit(request)
    order: Literal["asc", "desc"]
    match request.query.get("order", "desc"):
        case "asc":
            order = "asc"
        case "desc":
            order = "desc"
        case _:
            raise invalid("Invalid value for 'order': use 'asc' or 'desc'.", param="order")
    after = request.query.get("after")
    store = await _store(request)
    if not RESPONSE_ID.match(response_id):
        raise _not_found(response_id)
    if after is not None and not ITEM_ID.match(after):
        raise invalid(f"No input item with id '{shown(after)}' in this response.", param="after")
    try:
        page = await _stored(store.input_items(response_id, call_of(request).subject, limit, order, after))
    except UnknownItem:
        raise invalid(f"No input item with id '{shown(after or '')}' in this response.", param="after") from None
    if page is None:
        raise _not_found(response_id)
    listing: ResponseItemList = {
        "object": "list",
        "data": page.items,
        "first_id": page.items[0]["id"] if page.items else None,
        "last_id": page.items[-1]["id"] if page.items else None,
        "has_more": page.has_more,
    }
    return json_response(listing)
