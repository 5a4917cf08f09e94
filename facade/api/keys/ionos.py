"""IONOS's Auth API, so that a client written for it works unchanged: GET /auth/v1/tokens/generate?ttl=,
GET /auth/v1/tokens, GET and DELETE /auth/v1/tokens/{tokenId}, DELETE /auth/v1/tokens?criteria=ALL|
EXPIRED|CURRENT. Its tokens are this hub's keys (sk-hm-...: a client passes them on as they are),
with the creator's scopes and models, managed by the same rules (facade/api/keys/manage.py)."""

from __future__ import annotations

import datetime

from aiohttp import web

from facade.api.keys import manage
from facade.api.keys.protocol import IonosDeleteQuery, IonosGenerateQuery, KeyCreate
from facade.api.response_bodies import IonosSuccess, IonosToken, IonosTokenInfo, IonosTokenList
from facade.api.validation import parse_query
from facade.auth.hub_keys import KEY_REGISTRY
from facade.call import call_of
from facade.errors import invalid
from facade.jsonio import json_response
from facade.store.key_store import KeyRecord


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _info(record: KeyRecord) -> IonosTokenInfo:
    return {"id": record.id, "createdDate": _iso(record.created_at) or "", "expirationDate": _iso(record.expires_at)}


async def generate_token(request: web.Request) -> web.Response:
    """Generates a token that lives `ttl` seconds (60 to a year; a year by default)."""
    query = parse_query(request, IonosGenerateQuery)
    record, secret = await manage.create(call_of(request), request.app[KEY_REGISTRY],
                                         KeyCreate.model_validate({"name": "ionos-auth-api", "ttl_s": query.ttl}),
                                         request.app[manage.MAX_KEYS_PER_OWNER])
    token: IonosToken = {"token": secret}
    return json_response(token)


async def list_tokens(request: web.Request) -> web.Response:
    records = await manage.listed(call_of(request), request.app[KEY_REGISTRY], None)
    listing: IonosTokenList = {"tokens": [_info(r) for r in records]}
    return json_response(listing)


async def get_token(request: web.Request) -> web.Response:
    record = await manage.find(call_of(request), request.app[KEY_REGISTRY], request.match_info["token_id"])
    return json_response(_info(record))


async def delete_token(request: web.Request) -> web.Response:
    await manage.delete(call_of(request), request.app[KEY_REGISTRY], request.match_info["token_id"])
    success: IonosSuccess = {"success": True}
    return json_response(success)


async def delete_tokens(request: web.Request) -> web.Response:
    """criteria=ALL: every token of the caller; EXPIRED: the expired ones; CURRENT: the one this
    request was made with."""
    query = parse_query(request, IonosDeleteQuery)
    call, registry = call_of(request), request.app[KEY_REGISTRY]
    if query.criteria == "CURRENT":
        principal = manage.principal_or_401(call)
        if principal.key_id is None:
            raise invalid("criteria CURRENT needs a request made with a token this hub issued.", param="criteria")
        await manage.delete(call, registry, principal.key_id)
    else:
        await manage.delete_many(call, registry, None, expired_only=query.criteria == "EXPIRED")
    success: IonosSuccess = {"success": True}
    return json_response(success)
