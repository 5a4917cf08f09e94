"""The rules of key management, one place for both APIs (handler.py, ionos.py): who manages which key,
what a new key may be granted, and each change written to the database and announced to every
replica (KeyRegistry.changed).

A caller manages the keys of its `manager` subject (its own; a hub key its owner's); the admin scope
manages every key. Another's key reads as unknown (404). A key is granted at most what its creator
has: its scopes and models (the admin scope, or `*`, grants any), and only an admin names an owner.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from facade.api.keys.protocol import KeyCreate, KeyUpdate
from facade.api.response_bodies import ApiKey
from facade.auth.hub_keys import ALL, KeyRegistry, new_key
from facade.auth.principal import FAMILIES, Principal
from facade.call import Call
from facade.errors import OpenAIError, invalid
from facade.store.database import StoreError
from facade.store.key_store import KeyRecord, KeyStore

MAX_KEYS_PER_OWNER = web.AppKey("max_keys_per_owner", int)
T = TypeVar("T")


def unavailable() -> OpenAIError:
    return OpenAIError(503, "The key store is unavailable; try again shortly.", type="server_error",
                       code="store_unavailable", headers={"Retry-After": "5"})


async def stored(awaitable: Awaitable[T]) -> T:
    """A key store call; a database failure is a 503, never a 500."""
    try:
        return await awaitable
    except StoreError:
        raise unavailable() from None


def not_found(key_id: str) -> OpenAIError:
    shown = key_id if len(key_id) <= 64 else key_id[:64] + "..."
    return OpenAIError(404, f"No key with id '{shown}'.", param="key_id", code="key_not_found")


def principal_or_401(call: Call) -> Principal:
    if call.principal is None:  # the keys' routes are never public: auth has run
        raise OpenAIError(401, "Authentication is required.", type="authentication_error")
    return call.principal


def manages(principal: Principal, record: KeyRecord) -> bool:
    return principal.is_admin or record.owner == principal.manager


def owner_for(principal: Principal, owner: str | None) -> str:
    """Whose keys a request is about: the caller's, or (an admin only) the one it names."""
    if owner is None or owner == principal.manager:
        return principal.manager
    if not principal.is_admin:
        raise OpenAIError(403, "Only the admin scope manages another owner's keys.", type="permission_error",
                          param="owner", code="insufficient_scope")
    return owner


def _granted_scopes(principal: Principal, wanted: list[str] | None) -> tuple[str, ...]:
    everything = principal.is_admin or "*" in principal.scopes
    if wanted is None:
        mine = sorted(principal.scopes) if not everything else [f for f in FAMILIES if f != "admin"]
        return tuple(s for s in mine if s != "admin" or principal.is_admin)
    if not everything:
        beyond = sorted(set(wanted) - set(principal.scopes))
        if beyond:
            raise invalid(f"A key cannot be granted scopes its creator lacks: {', '.join(beyond)}.", param="scopes")
    return tuple(dict.fromkeys(wanted))


def _granted_models(principal: Principal, wanted: list[str] | None) -> tuple[str, ...] | None:
    if principal.models is None:
        return tuple(dict.fromkeys(wanted)) if wanted is not None else None
    if wanted is None:
        return tuple(sorted(principal.models))
    beyond = sorted(set(wanted) - principal.models)
    if beyond:
        raise invalid(f"A key cannot be granted models its creator may not use: {', '.join(beyond[:5])}.",
                      param="models")
    return tuple(dict.fromkeys(wanted))


async def create(call: Call, registry: KeyRegistry, spec: KeyCreate, max_per_owner: int) -> tuple[KeyRecord, str]:
    """A new key and its secret (shown once)."""
    principal = principal_or_401(call)
    owner = owner_for(principal, spec.owner)
    now = time.time()
    key_id, secret, secret_hash = new_key()
    record = KeyRecord(
        id=key_id, owner=owner, name=spec.name, secret_hash=secret_hash, created_at=now, updated_at=now,
        expires_at=now + spec.ttl_s if spec.ttl_s is not None else None,
        scopes=_granted_scopes(principal, spec.scopes), models=_granted_models(principal, spec.models),
        limits=spec.stored(), metadata=spec.metadata or {},
    )
    if not await stored((await _store(registry)).insert(record, max_per_owner)):
        raise invalid(f"An owner has at most {max_per_owner} keys; delete some first.", code="too_many_keys")
    await registry.changed(record.id, record)
    return record, secret


async def _store(registry: KeyRegistry) -> KeyStore:
    return await stored(registry.store())


async def find(call: Call, registry: KeyRegistry, key_id: str) -> KeyRecord:
    """A key the caller manages, from the database (never a stale copy); 404 otherwise."""
    record = await stored((await _store(registry)).get(key_id)) if len(key_id) <= 64 else None
    if record is None or not manages(principal_or_401(call), record):
        raise not_found(key_id)
    return record


async def save(registry: KeyRegistry, record: KeyRecord) -> KeyRecord:
    record = record.with_changes(updated_at=time.time())
    if not await stored((await _store(registry)).update(record)):
        raise not_found(record.id)
    await registry.changed(record.id, record)
    return record


async def update(call: Call, registry: KeyRegistry, key_id: str, spec: KeyUpdate) -> KeyRecord:
    record = await find(call, registry, key_id)
    principal = principal_or_401(call)
    given = spec.model_fields_set
    changes: dict = {}
    if "name" in given and spec.name is not None:
        changes["name"] = spec.name
    if "ttl_s" in given and spec.ttl_s is not None:
        changes["expires_at"] = time.time() + spec.ttl_s
    if "blocked" in given and spec.blocked is not None:
        changes["blocked"] = spec.blocked
    if "scopes" in given and spec.scopes is not None:
        changes["scopes"] = _granted_scopes(principal, spec.scopes)
    if "models" in given:
        changes["models"] = _granted_models(principal, spec.models)
    if "limits" in given:
        changes["limits"] = spec.limits.stored() if spec.limits is not None else {}
    if "metadata" in given:
        changes["metadata"] = spec.metadata or {}
    return await save(registry, record.with_changes(**changes))


async def regenerate(call: Call, registry: KeyRegistry, key_id: str, grace_period_s: int) -> tuple[KeyRecord, str]:
    """A new secret for the key; the old one keeps working for `grace_period_s` (0: it stops now)."""
    record = await find(call, registry, key_id)
    _, secret, secret_hash = new_key(record.id)
    now = time.time()
    record = await save(registry, record.with_changes(
        secret_hash=secret_hash,
        previous_hash=record.secret_hash if grace_period_s else None,
        previous_until=now + grace_period_s if grace_period_s else None,
    ))
    return record, secret


async def delete(call: Call, registry: KeyRegistry, key_id: str) -> None:
    record = await find(call, registry, key_id)
    await stored((await _store(registry)).delete([record.id]))
    await registry.changed(record.id, None)


async def delete_many(call: Call, registry: KeyRegistry, owner: str | None, expired_only: bool) -> int:
    """Deletes an owner's keys (all, or the expired ones); how many."""
    owner = owner_for(principal_or_401(call), owner)
    store = await _store(registry)
    now = time.time()
    doomed = [r.id for r in await stored(store.list(owner)) if not expired_only or r.expired(now)]
    deleted = await stored(store.delete(doomed))
    if doomed:
        await registry.changed(ALL, None)
    return deleted


async def listed(call: Call, registry: KeyRegistry, owner: str | None) -> list[KeyRecord]:
    return await stored((await _store(registry)).list(owner_for(principal_or_401(call), owner)))


def key_json(record: KeyRecord, secret: str | None = None) -> ApiKey:
    body: ApiKey = {
        "id": record.id, "object": "api_key", "name": record.name, "owner": record.owner,
        "subject": "hubkey:" + record.id, "created_at": int(record.created_at), "updated_at": int(record.updated_at),
        "expires_at": int(record.expires_at) if record.expires_at is not None else None,
        "blocked": record.blocked, "scopes": list(record.scopes),
        "models": list(record.models) if record.models is not None else None,
        "limits": dict(record.limits),  # type: ignore[typeddict-item]
        "metadata": record.metadata,
        "previous_key_valid_until": int(record.previous_until) if record.previous_until is not None else None,
    }
    if secret is not None:
        body["key"] = secret
    return body
