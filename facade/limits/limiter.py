"""The façade's limiter: Redis when HUBMESH_REDIS_URL is set, this process's memory otherwise, and
what happens while Redis cannot answer (HUBMESH_LIMITS_FAIL_MODE):

- `fail_open` (the default): requests are served and counted in this process's own store, so each
  replica still holds every subject to its limits by itself (N replicas: at most N times a limit,
  for as long as the outage lasts). The reason for the default: the limiter protects the GPUs and
  the budgets, but an outage of it should not become an outage of the API; the usage ledger still
  records every token, so billing stays exact. Adjustments owed to Redis are replayed when it is back.
- `fail_closed`: requests that need a counter get 503 `limits_unavailable` (Retry-After), for
  deployments where a budget must never be overspent.

Redis is given HUBMESH_REDIS_TIMEOUT_S per call; a call that fails or times out marks it down for
HUBMESH_REDIS_RETRY_S, during which no request waits on it; the first call after that tries again,
so the limiter recovers by itself within about that long after Redis is back (a restarted Redis has
lost its counters: they start again from zero).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import Counter
from redis.exceptions import RedisError, ResponseError

from facade.limits.policy import Spec
from facade.limits.stores import Hit, Level, LocalStore, RedisStore, Reservation, Store

log = logging.getLogger(__name__)

FAIL_MODES = ("fail_open", "fail_closed")
MAX_OWED = 100_000  # adjustments kept for Redis while it is down
# whatever Redis or the way to it does wrong is an outage of the shared limiter, handled by the fail
# mode, never a 500: unreachable, timed out, restarted (LOADING), out of memory, read-only replica
REDIS_FAILURES = (RedisError, OSError, TimeoutError)
LIMITER_FAILURES = Counter("hubmesh_limiter_redis_failures", "Limiter calls Redis failed or did not answer in time")


class LimiterUnavailable(Exception):
    """fail_closed and Redis cannot answer."""


@dataclass
class Grant:
    """Tokens reserved for a request, and where (so that they are settled in the same store)."""

    store: Store
    specs: Sequence[Spec]
    tokens: int


class Limiter:
    def __init__(self, local: LocalStore, shared: RedisStore | None = None, fail_mode: str = "fail_open",
                 retry_s: float = 1.0, clock=time.monotonic) -> None:
        if fail_mode not in FAIL_MODES:
            raise ValueError(f"fail mode must be one of {FAIL_MODES}, got {fail_mode!r}")
        self.local = local
        self.shared = shared
        self.fail_mode = fail_mode
        self.retry_s = retry_s
        self.clock = clock
        self._down_until = float("-inf")
        self._owed: deque[tuple[Sequence[Spec], int]] = deque(maxlen=MAX_OWED)
        self._replay: asyncio.Task | None = None

    def _usable(self) -> RedisStore | None:
        """The shared store when it may be asked now (configured, and not waiting out a failure)."""
        return self.shared if self.shared is not None and self.clock() >= self._down_until else None

    def _failed(self, err: BaseException) -> None:
        if self.clock() >= self._down_until:
            # an answer Redis gave (OOM, READONLY after a failover, a script refused) is logged louder
            # than silence: it will not go away by waiting
            (log.error if isinstance(err, ResponseError) else log.warning)("Redis limiter unavailable (%s: %s); %s for %.1f s", err.__class__.__name__, err,
                        "serving with this process's counters" if self.fail_mode == "fail_open" else "refusing",
                        self.retry_s)
        LIMITER_FAILURES.inc()
        self._down_until = self.clock() + self.retry_s

    def _fallback(self) -> Store:
        if self.fail_mode == "fail_closed":
            raise LimiterUnavailable("the shared limiter (Redis) cannot be reached")
        return self.local

    async def _run(self, operation: str, *args):
        """Runs the store operation on Redis if it can answer, else by the fail mode; (store, result)."""
        if self.shared is None:
            return self.local, await getattr(self.local, operation)(*args)
        if self._usable() is not None:
            try:
                result = await getattr(self.shared, operation)(*args)
            except REDIS_FAILURES as err:
                self._failed(err)
            else:
                if self._owed and self._replay is None:
                    self._replay = asyncio.create_task(self._pay_owed())
                return self.shared, result
        store = self._fallback()
        return store, await getattr(store, operation)(*args)

    async def hit(self, specs: Sequence[Spec], member: str) -> Hit:
        if not specs:
            return Hit(0.0, ())
        _, hit = await self._run("hit_levels", specs, member)
        return hit

    async def reserve(self, specs: Sequence[Spec], want: int) -> tuple[Grant | None, Reservation]:
        store, reserved = await self._run("reserve_levels", specs, want)
        granted = reserved.granted
        return (Grant(store, specs, granted) if granted > 0 else None), reserved

    async def levels(self, specs: Sequence[Spec]) -> tuple[Level, ...]:
        """The token counters' levels, read only: from Redis, else by the fail mode."""
        if not specs:
            return ()
        _, levels = await self._run("levels", specs)
        return levels

    async def settle(self, grant: Grant, used: int) -> tuple[Level, ...]:
        """Gives back what a reservation did not use (or takes what it used beyond it); the levels
        after it (none when nothing changed, or Redis is owed it). Never raises for an outage:
        what Redis is owed is replayed when it answers again."""
        delta = grant.tokens - used
        if not delta:
            return ()
        if grant.store is self.local:
            return await self.local.adjust_levels(grant.specs, delta)
        shared = self._usable()
        if shared is None:
            self._owed.append((grant.specs, delta))
            return ()
        try:
            return await shared.adjust_levels(grant.specs, delta)
        except REDIS_FAILURES as err:
            self._failed(err)
            self._owed.append((grant.specs, delta))
            return ()

    async def _pay_owed(self) -> None:
        try:
            while self._owed and (shared := self._usable()) is not None:
                specs, delta = self._owed[0]
                try:
                    await shared.adjust(specs, delta)
                except REDIS_FAILURES as err:
                    self._failed(err)
                    return
                self._owed.popleft()
        finally:
            self._replay = None

    async def close(self) -> None:
        if self._replay is not None:
            self._replay.cancel()
        if self.shared is not None:
            await self.shared.close()


def create_limiter(redis_url: str = "", fail_mode: str = "fail_open", timeout_s: float = 0.25,
                   retry_s: float = 1.0, local_max_keys: int = 100_000) -> Limiter:
    """The limiter the settings describe (Redis is connected lazily, on the first request)."""
    shared = None
    if redis_url:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no retries inside redis-py: a failed call is an outage at once, handled by the fail mode
        client = redis.asyncio.Redis.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
        )
        shared = RedisStore(client)
    return Limiter(LocalStore(local_max_keys), shared, fail_mode, retry_s)
