"""Where the limits' counters live: in this process (the embedded default) or in Redis (shared by
every façade replica). Both implement one contract, operation for operation:

- `hit(specs, member)`: one request against request logs. Admitted (0.0) only when every log has
  room, and then counted in all of them; else the seconds until the first of them has room.
- `reserve(specs, want)`: up to `want` tokens from token buckets and budgets. Grants
  min(want, what every counter has left), taken from all of them at once; (granted, index of the
  counter that bound it or -1, seconds until it has room again when nothing was granted).
- `adjust(specs, delta)`: gives back `delta` tokens of a reservation (negative: takes more), when
  the request has settled what it really used.

Each operation is atomic: in Redis one Lua script (the server's clock, no read-modify-write race
between replicas); here one synchronous step of the event loop. Counters expire when untouched for
their `ttl_s` (Redis: PEXPIRE); the local store also holds at most `max_keys` of them, dropping the
least recently used, so memory is bounded however many subjects come and go.
"""

from __future__ import annotations

import abc
import math
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from facade.limits.policy import Spec

Reserved = tuple[int, int, float]  # granted, binding counter (-1: none), seconds to wait


class Store(abc.ABC):
    name: str

    @abc.abstractmethod
    async def hit(self, specs: Sequence[Spec], member: str) -> float: ...

    @abc.abstractmethod
    async def reserve(self, specs: Sequence[Spec], want: int) -> Reserved: ...

    @abc.abstractmethod
    async def adjust(self, specs: Sequence[Spec], delta: int) -> None: ...

    async def close(self) -> None:
        return None


# -- in this process --------------------------------------------------------------------------------


class LocalStore(Store):
    """Counters in an LRU dict: key -> [expires_at, state]. State: a deque of request times (log),
    [level, at] (bucket), [used] (budget)."""

    name = "local"

    def __init__(self, max_keys: int = 100_000, clock=time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[str, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _get(self, key: str, now: float) -> Any | None:
        entry = self._keys.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._keys[key]
            return None
        self._keys.move_to_end(key)
        return entry[1]

    def _put(self, key: str, state: Any, ttl_s: float, now: float) -> None:
        self._keys[key] = [now + ttl_s, state]
        self._keys.move_to_end(key)
        self._evict(now)

    def _evict(self, now: float) -> None:
        keys = self._keys
        # expired counters first (the oldest-touched sit at the front), then the least recently used
        while keys:
            first = next(iter(keys.values()))
            if first[0] > now and len(keys) <= self.max_keys:
                break
            keys.popitem(last=False)

    def _bucket_level(self, spec: Spec, now: float) -> tuple[list[float], float]:
        state = self._get(spec.key, now)
        if state is None:
            state = [float(spec.limit), now]
        level = min(spec.limit, state[0] + (now - state[1]) * spec.limit / spec.ttl_s)
        return state, level

    async def hit(self, specs: Sequence[Spec], member: str) -> float:
        now = self.clock()
        wait = 0.0
        logs = []
        for spec in specs:
            log = self._get(spec.key, now) or deque()
            while log and log[0] <= now - spec.ttl_s:
                log.popleft()
            if len(log) >= spec.limit:
                wait = max(wait, log[len(log) - spec.limit] + spec.ttl_s - now)
            logs.append(log)
        if wait > 0:
            return max(wait, 0.001)
        for spec, log in zip(specs, logs, strict=True):
            log.append(now)
            self._put(spec.key, log, spec.ttl_s, now)
        return 0.0

    async def reserve(self, specs: Sequence[Spec], want: int) -> Reserved:
        now = self.clock()
        grant, binding, levels = float(want), -1, []
        for i, spec in enumerate(specs):
            if spec.kind == "rate":
                _, left = self._bucket_level(spec, now)
            else:
                used = self._get(spec.key, now)
                left = spec.limit - (used[0] if used else 0)
            levels.append(left)
            if left < grant:
                grant, binding = left, i
        granted = math.floor(grant)
        if granted < 1:
            spec, left = specs[binding], levels[binding]
            wait = (1 - left) * spec.ttl_s / spec.limit if spec.kind == "rate" else spec.ttl_s
            return 0, binding, max(wait, 0.001)
        self._take(specs, granted, now)
        return granted, binding, 0.0

    def _take(self, specs: Sequence[Spec], tokens: int, now: float) -> None:
        for spec in specs:
            if spec.kind == "rate":
                state, level = self._bucket_level(spec, now)
                state[0], state[1] = min(spec.limit, level - tokens), now
                self._put(spec.key, state, spec.ttl_s, now)
            else:
                used = self._get(spec.key, now) or [0]
                used[0] = max(0, used[0] + tokens)
                self._put(spec.key, used, spec.ttl_s, now)

    async def adjust(self, specs: Sequence[Spec], delta: int) -> None:
        if delta:
            self._take(specs, -delta, self.clock())


# -- Redis -------------------------------------------------------------------------------------------

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: request logs; ARGV: member, then (limit, window ms) per key. Returns 0 or ms to wait.
HIT = _NOW + """
local wait = 0
for i, key in ipairs(KEYS) do
  local limit, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now, 1)
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, ARGV[2 * i + 1])
end
return 0
"""

# Token counters. ARGV: tokens, then (kind, limit, ttl ms) per key; a bucket refills `limit` per ttl.
_LEVELS = _NOW + """
local left = {}
local bucket = {}
for i, key in ipairs(KEYS) do
  local kind, limit, ttl = ARGV[3 * i - 1], tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  if kind == 'rate' then
    local state = redis.call('HMGET', key, 'level', 'at')
    local level, at = tonumber(state[1]), tonumber(state[2])
    if level == nil then level, at = limit, now end
    left[i] = math.min(limit, level + (now - at) * limit / ttl)
  else
    left[i] = limit - (tonumber(redis.call('GET', key)) or 0)
  end
end
local function take(tokens)
  for i, key in ipairs(KEYS) do
    local kind, limit, ttl = ARGV[3 * i - 1], tonumber(ARGV[3 * i]), ARGV[3 * i + 1]
    if kind == 'rate' then
      redis.call('HSET', key, 'level', tostring(math.min(limit, left[i] - tokens)), 'at', tostring(now))
    else
      local used = redis.call('INCRBY', key, tokens)
      if used < 0 then redis.call('SET', key, 0) end
    end
    redis.call('PEXPIRE', key, ttl)
  end
end
"""

# Returns {granted, binding key (1-based, 0: none), ms to wait}.
RESERVE = _LEVELS + """
local grant, binding = tonumber(ARGV[1]), 0
for i = 1, #KEYS do
  if left[i] < grant then grant, binding = left[i], i end
end
grant = math.floor(grant)
if grant < 1 then
  local limit, ttl = tonumber(ARGV[3 * binding]), tonumber(ARGV[3 * binding + 1])
  local wait = ttl
  if ARGV[3 * binding - 1] == 'rate' then wait = (1 - left[binding]) * ttl / limit end
  return {0, binding, math.max(1, math.ceil(wait))}
end
take(grant)
return {grant, binding, 0}
"""

ADJUST = _LEVELS + """
take(-tonumber(ARGV[1]))
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisStore(Store):
    """The same counters in Redis, one Lua script per operation (redis-py loads them, and loads
    them again after a restart of the server)."""

    name = "redis"

    def __init__(self, client) -> None:
        self.client = client
        self._hit = client.register_script(HIT)
        self._reserve = client.register_script(RESERVE)
        self._adjust = client.register_script(ADJUST)

    @staticmethod
    def _token_args(specs: Sequence[Spec], tokens: int) -> list[Any]:
        args: list[Any] = [tokens]
        for spec in specs:
            args += [spec.kind, spec.limit, _ms(spec.ttl_s)]
        return args

    async def hit(self, specs: Sequence[Spec], member: str) -> float:
        args: list[Any] = [member]
        for spec in specs:
            args += [spec.limit, _ms(spec.ttl_s)]
        wait_ms = await self._hit(keys=[s.key for s in specs], args=args)
        return int(wait_ms) / 1000

    async def reserve(self, specs: Sequence[Spec], want: int) -> Reserved:
        granted, binding, wait_ms = await self._reserve(keys=[s.key for s in specs],
                                                        args=self._token_args(specs, want))
        return int(granted), int(binding) - 1, int(wait_ms) / 1000

    async def adjust(self, specs: Sequence[Spec], delta: int) -> None:
        if delta:
            await self._adjust(keys=[s.key for s in specs], args=self._token_args(specs, delta))

    async def close(self) -> None:
        await self.client.aclose()
