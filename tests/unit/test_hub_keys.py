"""Keys the hub issues (facade/auth/hub_keys.py, facade/api/keys): the keys API and IONOS's Auth API
through the app, in front of a fake text backend; the cache kept in step between two apps that share
a database and a private redis-server (a revoked key refused by the other within a second)."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from facade.app import create_app
from facade.auth.hub_keys import KEY_REGISTRY, KeyRefused, KeyRegistry, hash_secret, new_key, parse
from facade.settings import Settings
from facade.store.database import open_database
from facade.store.key_store import KeyRecord, KeyStore
from facade.store.migrations import migrate
from local.redis import RedisServer
from tests.fakes import FakeTextBackend
from tests.unit.text_service_fixture import MODEL

ADMIN = "admin-static-key"
SECRET = "keys-test-secret-of-at-least-32-bytes"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwt_for(sub: str, scope: str = "models chat completions keys", **claims) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "scope": scope, "iat": now, "exp": now + 600, **claims}, SECRET, algorithm="HS256")


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'hubmesh.db'}"


@pytest.fixture
def make_client(aiohttp_client, services, database_url):
    async def make(**overrides):
        target = await services(FakeTextBackend())
        settings = {"api_keys": (ADMIN,), "jwt_secret": SECRET, "text_target": target, "database_url": database_url,
                    **overrides}
        return await aiohttp_client(create_app(Settings(**settings)))

    return make


async def create(client, token: str = ADMIN, status: int = 200, **body) -> dict:
    reply = await client.post("/v1/keys", json=body, headers=bearer(token))
    answer = await reply.json()
    assert reply.status == status, answer
    return answer


async def models_status(client, token: str) -> int:
    return (await client.get("/v1/models", headers=bearer(token))).status


async def test_a_key_is_shown_once_works_and_is_never_listed_with_its_secret(make_client):
    client = await make_client()
    key = await create(client, name="ci", scopes=["models", "chat"], rpm=100, metadata={"team": "search"})
    secret = key["key"]
    assert secret.startswith("sk-hm-") and parse(secret) is not None and key["id"] in secret
    assert key["subject"] == "hubkey:" + key["id"] and key["limits"] == {"rpm": 100}
    assert key["owner"].startswith("key:") and key["metadata"] == {"team": "search"} and not key["blocked"]
    assert await models_status(client, secret) == 200
    listing = await (await client.get("/v1/keys", headers=bearer(ADMIN))).json()
    assert [k["id"] for k in listing["data"]] == [key["id"]] and "key" not in listing["data"][0]
    assert secret not in await (await client.get(f"/v1/keys/{key['id']}", headers=bearer(ADMIN))).text()
    # only the hash is stored
    store = KeyStore(await client.app[KEY_REGISTRY]._database())
    record = await store.get(key["id"])
    assert record is not None and record.secret_hash == hash_secret(secret.split(".", 1)[1])
    # scopes hold: no images for this key
    reply = await client.post("/v1/images/generations", json={"prompt": "x"}, headers=bearer(secret))
    assert reply.status == 403


async def test_block_unblock_delete_and_a_wrong_secret(make_client):
    client = await make_client()
    key = await create(client)
    secret, key_id = key["key"], key["id"]
    assert await models_status(client, secret) == 200
    assert (await client.post(f"/v1/keys/{key_id}/block", headers=bearer(ADMIN))).status == 200
    reply = await client.get("/v1/models", headers=bearer(secret))
    assert reply.status == 401 and "blocked" in (await reply.json())["error"]["message"]
    assert (await client.post(f"/v1/keys/{key_id}/unblock", headers=bearer(ADMIN))).status == 200
    assert await models_status(client, secret) == 200
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert await models_status(client, forged) == 401
    assert (await client.delete(f"/v1/keys/{key_id}", headers=bearer(ADMIN))).status == 200
    assert await models_status(client, secret) == 401
    assert (await client.get(f"/v1/keys/{key_id}", headers=bearer(ADMIN))).status == 404


async def test_regenerate_with_and_without_a_grace_period(make_client):
    client = await make_client()
    key = await create(client)
    old = key["key"]
    reply = await client.post(f"/v1/keys/{key['id']}/regenerate", json={"grace_period_s": 600}, headers=bearer(ADMIN))
    renewed = await reply.json()
    assert reply.status == 200 and renewed["id"] == key["id"] and renewed["key"] != old
    assert renewed["previous_key_valid_until"] is not None
    assert await models_status(client, old) == 200 and await models_status(client, renewed["key"]) == 200
    reply = await client.post(f"/v1/keys/{key['id']}/regenerate", json={}, headers=bearer(ADMIN))
    newest = (await reply.json())["key"]
    assert await models_status(client, newest) == 200
    assert await models_status(client, renewed["key"]) == 401 and await models_status(client, old) == 401


async def test_owners_manage_their_own_keys_and_grant_no_more_than_they_have(make_client):
    client = await make_client()
    alice, bob = jwt_for("alice"), jwt_for("bob")
    mine = await create(client, alice, models=[MODEL])
    assert mine["owner"] == "jwt:alice" and mine["scopes"] == ["chat", "completions", "keys", "models"]
    assert (await client.get(f"/v1/keys/{mine['id']}", headers=bearer(bob))).status == 404
    assert (await client.delete(f"/v1/keys/{mine['id']}", headers=bearer(bob))).status == 404
    assert (await (await client.get("/v1/keys", headers=bearer(bob))).json())["data"] == []
    answer = await create(client, alice, status=400, scopes=["images"])
    assert answer["error"]["param"] == "scopes"
    answer = await create(client, alice, status=403, owner="jwt:bob")
    assert answer["error"]["param"] == "owner"
    # a key manages its owner's keys; the admin sees every owner's
    child = await create(client, mine["key"], scopes=["models"])
    assert child["owner"] == "jwt:alice"
    owners = await (await client.get("/v1/keys?owner=jwt:alice", headers=bearer(ADMIN))).json()
    assert {k["id"] for k in owners["data"]} == {mine["id"], child["id"]}
    patched = await client.patch(f"/v1/keys/{child['id']}", json={"limits": {"rpm": 5}, "name": "n"},
                                 headers=bearer(alice))
    assert patched.status == 200 and (await patched.json())["limits"] == {"rpm": 5}
    deleted = await client.delete("/v1/keys?which=all", headers=bearer(alice))
    assert (await deleted.json())["deleted"] == 2
    assert await models_status(client, mine["key"]) == 401


async def test_bad_inputs_are_400_naming_the_param(make_client):
    client = await make_client(keys_max_per_owner=1)
    for body, param in (({"ttl_s": 5}, "ttl_s"), ({"scopes": ["root"]}, "scopes"), ({"rpm": -1}, "rpm"),
                        ({"max_parallel_requests": 0}, "max_parallel_requests"), ({"name": 3}, "name"),
                        ({"metadata": {"x": "y" * 20_000}}, "metadata")):
        answer = await create(client, status=400, **body)
        assert answer["error"]["param"] == param, (body, answer)
    await create(client)
    answer = await create(client, status=400)
    assert answer["error"]["code"] == "too_many_keys"
    reply = await client.delete("/v1/keys?which=some", headers=bearer(ADMIN))
    assert reply.status == 400 and (await reply.json())["error"]["param"] == "which"


async def test_ionos_auth_api(make_client):
    client = await make_client()
    alice = jwt_for("alice")
    reply = await client.get("/auth/v1/tokens/generate?ttl=3600", headers=bearer(alice))
    token = (await reply.json())["token"]
    assert reply.status == 200 and await models_status(client, token) == 200
    listing = await (await client.get("/auth/v1/tokens", headers=bearer(alice))).json()
    (info,) = listing["tokens"]
    assert set(info) == {"id", "createdDate", "expirationDate"} and info["createdDate"].endswith("Z")
    assert (await (await client.get(f"/auth/v1/tokens/{info['id']}", headers=bearer(token))).json()) == info
    assert (await client.get("/auth/v1/tokens/generate?ttl=5", headers=bearer(alice))).status == 400
    # CURRENT: the token the request is made with
    reply = await client.delete("/auth/v1/tokens?criteria=CURRENT", headers=bearer(token))
    assert reply.status == 200 and await reply.json() == {"success": True}
    assert await models_status(client, token) == 401
    second = (await (await client.get("/auth/v1/tokens/generate", headers=bearer(alice))).json())["token"]
    reply = await client.delete("/auth/v1/tokens?criteria=ALL", headers=bearer(alice))
    assert await reply.json() == {"success": True} and await models_status(client, second) == 401


async def test_max_parallel_requests(make_client):
    client = await make_client()
    key = await create(client, max_parallel_requests=1)
    registry = client.app[KEY_REGISTRY]
    principal = await registry.authenticate(key["key"])
    with registry.parallel(principal):
        reply = await client.get("/v1/models", headers=bearer(key["key"]))
        assert reply.status == 429 and reply.headers["Retry-After"]
    assert await models_status(client, key["key"]) == 200


async def test_expiry_and_the_cache(tmp_path):
    db = await open_database(f"sqlite:///{tmp_path / 'k.db'}")
    await migrate(db)
    now = [1_000_000.0]

    async def database():
        return db

    registry = KeyRegistry(database, clock=lambda: now[0])
    key_id, secret, digest = new_key()
    record = KeyRecord(id=key_id, owner="jwt:a", name="", secret_hash=digest, created_at=now[0], updated_at=now[0],
                       expires_at=now[0] + 60, scopes=("chat",))
    await KeyStore(db).insert(record, 10)
    principal = await registry.authenticate(secret)  # not cached yet: read once
    assert principal.subject == "hubkey:" + key_id and principal.owner == "jwt:a"
    await db.execute("DELETE FROM api_keys")  # the cache serves without the database
    assert (await registry.authenticate(secret)).key_id == key_id
    now[0] += 61
    with pytest.raises(KeyRefused, match="expired"):
        await registry.authenticate(secret)
    with pytest.raises(KeyRefused):
        await registry.authenticate("sk-hm-0123456789abcdef." + "A" * 43)  # unknown id
    await db.close()


async def test_a_revocation_reaches_another_replica_within_a_second(aiohttp_client, services, tmp_path):
    """Two façades on one database and one (private) redis-server: a key blocked through one is
    refused by the other within a second; unblocked, accepted again."""
    with RedisServer(tmp_path / "redis.log") as redis:
        target = await services(FakeTextBackend())
        settings = Settings(api_keys=(ADMIN,), jwt_secret=SECRET, text_target=target,
                            database_url=f"sqlite:///{tmp_path / 'shared.db'}", redis_url=redis.url,
                            keys_refresh_s=3600.0)  # only the channel can tell the other replica in time
        first, second = await aiohttp_client(create_app(settings)), await aiohttp_client(create_app(settings))
        for client in (first, second):
            await client.app[KEY_REGISTRY].wait_live()
        key = await create(first)
        assert await models_status(second, key["key"]) == 200  # unknown there: read once from the database
        started = time.monotonic()
        assert (await first.post(f"/v1/keys/{key['id']}/block", headers=bearer(ADMIN))).status == 200
        while await models_status(second, key["key"]) != 401:
            assert time.monotonic() - started < 1.0, "the block did not reach the other replica within 1 s"
            await asyncio.sleep(0.01)
        assert (await first.post(f"/v1/keys/{key['id']}/unblock", headers=bearer(ADMIN))).status == 200
        started = time.monotonic()
        while await models_status(second, key["key"]) != 200:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.01)


def test_a_keys_weight_and_priority_travel_with_its_calls():
    from facade.auth.hub_keys import principal_of
    from facade.call import Call

    record = KeyRecord(id="0123456789abcdef", owner="jwt:a", name="", secret_hash="x", created_at=0.0, updated_at=0.0,
                       limits={"weight": 3, "priority": 2, "rpm": 10})
    caller = Call(request_id="r", route=None, principal=principal_of(record), user="u").caller()
    assert (caller.subject, caller.user, caller.weight, caller.priority) == ("hubkey:0123456789abcdef", "u", 3, 2)
    plain = Call(request_id="r", route=None).caller()
    assert not plain.HasField("weight") if plain.DESCRIPTOR.fields_by_name["weight"].has_presence else plain.weight == 0
