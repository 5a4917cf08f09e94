"""The keys API (a hubmesh extension, after LiteLLM's virtual keys): keys the hub issues, with their
own scopes, models, limits and metadata; the secret is shown once. POST/GET /v1/keys,
GET/PATCH/DELETE /v1/keys/{key_id}, POST .../block, .../unblock, .../regenerate, DELETE /v1/keys?which=.
The rules are facade/api/keys/manage.py's."""

from __future__ import annotations

from aiohttp import web

from facade.api.intake import accept
from facade.api.keys import manage
from facade.api.keys.protocol import KeyCreate, KeyDeleteQuery, KeyListQuery, KeyRegenerate, KeyUpdate
from facade.api.response_bodies import ApiKeyDeleted, ApiKeyList, ApiKeysDeleted
from facade.api.validation import parse_query
from facade.auth.hub_keys import KEY_REGISTRY
from facade.call import call_of
from facade.jsonio import json_response


def _key_id(request: web.Request) -> str:
    return request.match_info["key_id"]


async def create_key(request: web.Request) -> web.Response:
    """Issues a key (its secret, `key`, is shown in this answer only)."""
    call, spec = await accept(request, KeyCreate)
    record, secret = await manage.create(call, request.app[KEY_REGISTRY], spec,
                                         request.app[manage.MAX_KEYS_PER_OWNER])
    return json_response(manage.key_json(record, secret))


async def list_keys(request: web.Request) -> web.Response:
    """The caller's keys (an admin: any owner's), oldest first; never their secrets."""
    query = parse_query(request, KeyListQuery)
    records = await manage.listed(call_of(request), request.app[KEY_REGISTRY], query.owner)
    listing: ApiKeyList = {"object": "list", "data": [manage.key_json(r) for r in records]}
    return json_response(listing)


async def retrieve_key(request: web.Request) -> web.Response:
    record = await manage.find(call_of(request), request.app[KEY_REGISTRY], _key_id(request))
    return json_response(manage.key_json(record))


async def update_key(request: web.Request) -> web.Response:
    """Changes the given fields: name, expiry (ttl_s from now), blocked, scopes, models, limits, metadata."""
    call, spec = await accept(request, KeyUpdate)
    record = await manage.update(call, request.app[KEY_REGISTRY], _key_id(request), spec)
    return json_response(manage.key_json(record))


async def _set_blocked(request: web.Request, blocked: bool) -> web.Response:
    registry = request.app[KEY_REGISTRY]
    record = await manage.find(call_of(request), registry, _key_id(request))
    record = await manage.save(registry, record.with_changes(blocked=blocked))
    return json_response(manage.key_json(record))


async def block_key(request: web.Request) -> web.Response:
    """Refuses the key on every replica (within a second with Redis) until it is unblocked."""
    return await _set_blocked(request, True)


async def unblock_key(request: web.Request) -> web.Response:
    return await _set_blocked(request, False)


async def regenerate_key(request: web.Request) -> web.Response:
    """A new secret for the key (shown once); the old one works for `grace_period_s` more."""
    call, spec = await accept(request, KeyRegenerate)
    record, secret = await manage.regenerate(call, request.app[KEY_REGISTRY], _key_id(request),
                                             spec.grace_period_s)
    return json_response(manage.key_json(record, secret))


async def delete_key(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    await manage.delete(call_of(request), request.app[KEY_REGISTRY], key_id)
    deleted: ApiKeyDeleted = {"id": key_id, "object": "api_key.deleted", "deleted": True}
    return json_response(deleted)


async def delete_keys(request: web.Request) -> web.Response:
    """Deletes the caller's (an admin: any owner's) keys: all of them, or the expired ones."""
    query = parse_query(request, KeyDeleteQuery)
    count = await manage.delete_many(call_of(request), request.app[KEY_REGISTRY], query.owner,
                                     expired_only=query.which == "expired")
    deleted: ApiKeysDeleted = {"object": "api_key.deleted_many", "deleted": count}
    return json_response(deleted)
