"""Keys the hub issues: `sk-hm-<id>.<secret>`, verified from a cache that every façade replica keeps
in step, never from the database on a request's path.

A key's record lives in the façade's database (facade/store/key_store.py: the SHA-256 of the secret,
never the secret). Each replica holds every key in memory (KeyRegistry): verifying one is a dict
lookup and a constant-time comparison of two hashes, cheaper than a JWT's signature check. The
cache is kept in step three ways:
- a change made here is applied here at once;
- with Redis (HUBMESH_REDIS_URL) every change is published on one channel, and every replica reloads
  that key from the database as the message arrives: a revoked, blocked or expired key is refused
  everywhere within a fraction of a second;
- every `refresh_s` (HUBMESH_KEYS_REFRESH_S) each replica reloads every key, which bounds how stale a
  replica can be when a message is lost, and is all there is without Redis.
While the Redis channel is down, HUBMESH_LIMITS_FAIL_MODE decides, as it does for the limits:
fail_open serves from the cache (a revocation reaches the other replicas within refresh_s);
fail_closed reads each hub key from the database until the channel is back (a revocation holds at
once; 503 when the database cannot be reached either). An id this replica does not know yet (made
on another replica a moment ago) is read from the database once, and remembered as unknown for a
second when there is none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio
from aiohttp import web

from facade.auth.principal import Principal
from facade.errors import OpenAIError
from facade.limits.policy import LimitClaims
from facade.store.database import Database, StoreError
from facade.store.key_store import KeyRecord, KeyStore

log = logging.getLogger(__name__)

PREFIX = "sk-hm-"
SUBJECT_PREFIX = "hubkey:"
CHANNEL = "hubmesh:keys:changed"
ALL = "*"  # a message that names every key (bulk deletes)
UNKNOWN_TTL_S = 1.0
_CREDENTIAL = re.compile(r"^sk-hm-([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")


class KeyRefused(Exception):
    """The credential is a hub key this hub does not accept (now); the message is safe to show."""


def new_key(key_id: str | None = None) -> tuple[str, str, str]:
    """(id, the credential the client is shown once, the hash kept): a new key, or (`key_id`) a new
    secret for an existing one."""
    key_id, secret = key_id or secrets.token_hex(8), secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}{key_id}.{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    # 256 random bits: a plain SHA-256 is as hard to invert as the secret is to guess
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(credential: str) -> tuple[str, str] | None:
    """(id, secret) of a hub key; None for any other credential."""
    match = _CREDENTIAL.match(credential)
    return (match[1], match[2]) if match else None


def is_hub_key(credential: str) -> bool:
    return credential.startswith(PREFIX)


def principal_of(record: KeyRecord) -> Principal:
    limits = record.limits
    return Principal(
        subject=SUBJECT_PREFIX + record.id,
        scopes=frozenset(record.scopes),
        models=frozenset(record.models) if record.models is not None else None,
        limits=LimitClaims(rpm=limits.get("rpm"), tpm=limits.get("tpm"), tokens_per_day=limits.get("tokens_per_day"),
                           tokens_per_month=limits.get("tokens_per_month")),
        owner=record.owner,
        key_id=record.id,
        max_parallel_requests=limits.get("max_parallel_requests"),
        weight=limits.get("weight"),
        priority=limits.get("priority"),
    )


@dataclass(frozen=True)
class _Cached:
    record: KeyRecord
    principal: Principal


class KeyRegistry:
    """Every issued key in memory, kept in step with the database and the other replicas."""

    def __init__(self, database: Callable[[], Awaitable[Database]], redis_url: str = "", fail_mode: str = "fail_open",
                 refresh_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self._database = database
        self.redis_url = redis_url
        self.fail_mode = fail_mode
        self.refresh_s = refresh_s
        self.clock = clock
        self._keys: dict[str, _Cached] = {}
        self._unknown: dict[str, float] = {}  # id -> until when it is known to be unknown
        self._redis: redis.asyncio.Redis | None = None
        self._live = asyncio.Event()  # the change channel is connected (always, without Redis)
        if not redis_url:
            self._live.set()
        self._tasks: list[asyncio.Task] = []
        self.in_flight: dict[str, int] = {}  # calls in flight per key (max_parallel_requests)

    @property
    def channel_live(self) -> bool:
        return self._live.is_set()

    async def store(self) -> KeyStore:
        return KeyStore(await self._database())

    # -- verification -------------------------------------------------------------------------------

    async def authenticate(self, credential: str) -> Principal:
        """The key's Principal; KeyRefused when it is unknown, revoked, blocked or expired; 503 when
        fail_closed and neither the channel nor the database can vouch for it."""
        parsed = parse(credential)
        if parsed is None:
            raise KeyRefused("Incorrect API key provided.")
        key_id, secret = parsed
        cached = self._keys.get(key_id)
        if cached is None or not self.channel_live and self.fail_mode == "fail_closed":
            cached = await self._read(key_id)
        if cached is None:
            raise KeyRefused("Incorrect API key provided.")
        return self._accept(cached, secret)

    def _accept(self, cached: _Cached, secret: str) -> Principal:
        record, now = cached.record, self.clock()
        digest = hash_secret(secret)
        current = hmac.compare_digest(digest, record.secret_hash)
        previous = (record.previous_hash is not None and record.previous_until is not None
                    and now < record.previous_until and hmac.compare_digest(digest, record.previous_hash))
        if not (current or previous):
            raise KeyRefused("Incorrect API key provided.")
        if record.blocked:
            raise KeyRefused("This API key is blocked.")
        if record.expired(now):
            raise KeyRefused("This API key has expired.")
        return cached.principal

    async def _read(self, key_id: str) -> _Cached | None:
        """A key from the database (not in the cache yet, or fail_closed without the channel)."""
        if self._unknown.get(key_id, 0.0) > time.monotonic() and self.channel_live:
            return None
        try:
            record = await (await self.store()).get(key_id)
        except StoreError as err:
            if key_id in self._keys and self.fail_mode != "fail_closed":
                return self._keys[key_id]
            log.error("hub keys: the database cannot vouch for a key: %s", err)
            raise OpenAIError(503, "Keys cannot be verified right now; retry shortly.", type="server_error",
                              code="keys_unavailable", headers={"Retry-After": "1"}) from None
        if record is None:
            self._forget(key_id)
            self._unknown[key_id] = time.monotonic() + UNKNOWN_TTL_S
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            return None
        return self._remember(record)

    def _remember(self, record: KeyRecord) -> _Cached:
        cached = self._keys[record.id] = _Cached(record, principal_of(record))
        self._unknown.pop(record.id, None)
        return cached

    def _forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    # -- parallel requests --------------------------------------------------------------------------

    @contextlib.contextmanager
    def parallel(self, principal: Principal):
        """Counts a call of a key with max_parallel_requests (in this replica); 429 beyond it."""
        key_id, most = principal.key_id, principal.max_parallel_requests
        if key_id is None or most is None:
            yield
            return
        if self.in_flight.get(key_id, 0) >= most:
            raise OpenAIError(429, f"This API key allows at most {most} requests in parallel; retry when one "
                              "has finished.", type="max_parallel_requests", code="rate_limit_exceeded",
                              headers={"Retry-After": "1"})
        self.in_flight[key_id] = self.in_flight.get(key_id, 0) + 1
        try:
            yield
        finally:
            left = self.in_flight[key_id] - 1
            if left:
                self.in_flight[key_id] = left
            else:
                del self.in_flight[key_id]

    # -- keeping in step ----------------------------------------------------------------------------

    async def load_all(self) -> None:
        """Every key from the database (start-up, each refresh, and when the channel comes back)."""
        records = await (await self.store()).list()
        fresh = {r.id: _Cached(r, principal_of(r)) for r in records}
        self._keys = fresh
        self._unknown.clear()

    async def changed(self, key_id: str, record: KeyRecord | None) -> None:
        """After a change made here: applied here, and announced to the other replicas (ALL: reload all)."""
        if key_id == ALL:
            await self.load_all()
        elif record is None:
            self._forget(key_id)
        else:
            self._remember(record)
        await self._publish(key_id)

    async def _publish(self, key_id: str) -> None:
        if self._redis is None:
            return
        try:
            await self._redis.publish(CHANNEL, key_id)
        except Exception as err:  # redis-py raises several kinds; the refresh catches up
            log.warning("hub keys: could not announce a change (the other replicas see it within %.0f s): %s",
                        self.refresh_s, err)

    async def _apply(self, message: str) -> None:
        if message == ALL:
            await self.load_all()
            return
        try:
            record = await (await self.store()).get(message)
        except StoreError as err:
            log.warning("hub keys: could not reload key %s: %s", message, err)
            self._forget(message)  # safer to read it again on its next use than to trust a stale copy
            return
        if record is None:
            self._forget(message)
        else:
            self._remember(record)

    async def _listen(self) -> None:
        """Applies the other replicas' changes as they come; reloads everything after each (re)connect."""
        backoff = 0.2
        while True:
            try:
                async with redis.asyncio.from_url(self.redis_url).pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    await self.load_all()
                    if not self.channel_live:
                        log.info("hub keys: change channel connected")
                    self._live.set()
                    backoff = 0.2
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            await self._apply(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self.channel_live:
                    log.warning("hub keys: change channel lost (%s); %s until it is back", err,
                                "each key is read from the database" if self.fail_mode == "fail_closed"
                                else f"the cache serves, refreshed every {self.refresh_s:.0f} s")
                self._live.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.load_all()
            except StoreError as err:
                log.warning("hub keys: could not refresh from the database: %s", err)

    async def start(self) -> None:
        try:
            await self.load_all()
        except StoreError as err:
            log.error("hub keys: the database is unreachable at start-up (keys are read on use): %s", err)
        if self.redis_url:
            self._redis = redis.asyncio.from_url(self.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            self._tasks.append(asyncio.create_task(self._listen()))
        self._tasks.append(asyncio.create_task(self._refresh_forever()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def wait_live(self, timeout_s: float = 10.0) -> None:
        """Until the change channel is connected (start-up, tests); TimeoutError after timeout_s."""
        await asyncio.wait_for(self._live.wait(), timeout_s)


def registry_ctx(registry: KeyRegistry):
    """cleanup_ctx (after store_ctx): loads the keys, keeps them in step while the app runs."""

    async def ctx(app) -> AsyncIterator[None]:
        await registry.start()
        yield
        await registry.close()

    return ctx


KEY_REGISTRY = web.AppKey("key_registry", KeyRegistry)
