"""Where the limits' counters live: in this process (the embedded default) or in Redis (shared by
every façade replica). Both implement one contract, operation for operation, and each operation
answers with the state it has just computed of every counter it touched (`Level`: its limit, what
is left, the seconds until it is back at its full limit; what the x-ratelimit-* headers show,
facade/limits/headers.py), never from a second read:

- `hit_levels(specs, member)`: one request against request logs. Admitted (wait 0.0) only when
  every log has room, and then counted in all of them; else the seconds until the first of them has
  room. Levels: each log after the hit (as it stands, when refused).
- `reserve_levels(specs, want)`: up to `want` tokens from token buckets and budgets. Grants
  min(want, what every counter has left), taken from all of them at once; the index of the counter
  that bound it (-1: none), the seconds until it has room again when nothing was granted, and the
  levels after the reservation.
- `adjust_levels(specs, delta)`: gives back `delta` tokens of a reservation (negative: takes more),
  when the request has settled what it really used; the levels after.
- `levels(specs)`: the token counters' levels, read only (a response that reserved nothing).

`hit`, `reserve` and `adjust` are the same operations without the levels.

Each operation is atomic: in Redis one Lua script (the server's clock, no read-modify-write race
between replicas); here one synchronous step of the event loop. Counters expire when untouched for
their `ttl_s` (Redis: PEXPIRE); the local store also holds at most `max_keys` of them, dropping the
least recently used, so memory is bounded however many subjects come and go.

"Back at its full limit": a request log when its newest request leaves the window (after a hit:
the window, 60 s); a token bucket when it has refilled; a budget when its period ends (0 when
nothing of it is used).
"""

from __future__ import annotations

import abc
import math
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from facade.limits.policy import Spec, period_left_s

Reserved = tuple[int, int, float]  # granted, binding counter (-1: none), seconds to wait


@dataclass(frozen=True, slots=True)
class Level:
    """One counter as an operation left it: its limit, what is left of it (requests or tokens, never
    below 0) and the seconds until it is back at its full limit."""

    limit: int
    remaining: int
    reset_s: float


class Hit(NamedTuple):
    wait: float  # 0.0: admitted (and counted); else seconds until every log has room
    levels: tuple[Level, ...]  # per spec


class Reservation(NamedTuple):
    granted: int
    binding: int  # the counter that bound the grant (-1: none)
    wait: float  # nothing granted: seconds until the binding counter has room again
    levels: tuple[Level, ...]  # per spec, after the reservation


def token_level(spec: Spec, left: float, bucket_reset_s: float) -> Level:
    """A token counter's Level from what is left of it (a bucket's reset computed by the store)."""
    if spec.kind == "rate":
        reset = bucket_reset_s
    else:  # a budget is back at its limit when its period ends, unless nothing of it is used
        reset = period_left_s(spec) if left < spec.limit else 0.0
    return Level(spec.limit, max(0, math.floor(left)), reset)


class Store(abc.ABC):
    name: str

    @abc.abstractmethod
    async def hit_levels(self, specs: Sequence[Spec], member: str) -> Hit: ...

    @abc.abstractmethod
    async def reserve_levels(self, specs: Sequence[Spec], want: int) -> Reservation: ...

    @abc.abstractmethod
    async def adjust_levels(self, specs: Sequence[Spec], delta: int) -> tuple[Level, ...]: ...

    @abc.abstractmethod
    async def levels(self, specs: Sequence[Spec]) -> tuple[Level, ...]: ...

    async def hit(self, specs: Sequence[Spec], member: str) -> float:
        return (await self.hit_levels(specs, member)).wait

    async def reserve(self, specs: Sequence[Spec], want: int) -> Reserved:
        granted, binding, wait, _ = await self.reserve_levels(specs, want)
        return granted, binding, wait

    async def adjust(self, specs: Sequence[Spec], delta: int) -> None:
        if delta:
            await self.adjust_levels(specs, delta)

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

    def _left(self, spec: Spec, now: float) -> float:
        if spec.kind == "rate":
            return self._bucket_level(spec, now)[1]
        used = self._get(spec.key, now)
        return spec.limit - (used[0] if used else 0)

    @staticmethod
    def _token_levels(specs: Sequence[Spec], lefts: Sequence[float]) -> tuple[Level, ...]:
        return tuple(token_level(spec, left, max(0.0, (spec.limit - left) * spec.ttl_s / spec.limit))
                     for spec, left in zip(specs, lefts, strict=True))

    async def hit_levels(self, specs: Sequence[Spec], member: str) -> Hit:
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
        if wait > 0:  # counted nowhere; each log is full again when its newest request leaves it
            return Hit(max(wait, 0.001), tuple(
                Level(spec.limit, max(0, spec.limit - len(log)), log[-1] + spec.ttl_s - now if log else 0.0)
                for spec, log in zip(specs, logs, strict=True)))
        for spec, log in zip(specs, logs, strict=True):
            log.append(now)
            self._put(spec.key, log, spec.ttl_s, now)
        return Hit(0.0, tuple(Level(spec.limit, max(0, spec.limit - len(log)), spec.ttl_s)
                              for spec, log in zip(specs, logs, strict=True)))

    async def reserve_levels(self, specs: Sequence[Spec], want: int) -> Reservation:
        now = self.clock()
        grant, binding, lefts = float(want), -1, []
        for i, spec in enumerate(specs):
            left = self._left(spec, now)
            lefts.append(left)
            if left < grant:
                grant, binding = left, i
        granted = math.floor(grant)
        if granted < 1:
            spec, left = specs[binding], lefts[binding]
            wait = (1 - left) * spec.ttl_s / spec.limit if spec.kind == "rate" else spec.ttl_s
            return Reservation(0, binding, max(wait, 0.001), self._token_levels(specs, lefts))
        return Reservation(granted, binding, 0.0, self._token_levels(specs, self._take(specs, granted, now)))

    def _take(self, specs: Sequence[Spec], tokens: int, now: float) -> list[float]:
        """Takes `tokens` from every counter; what is left of each."""
        lefts = []
        for spec in specs:
            if spec.kind == "rate":
                state, level = self._bucket_level(spec, now)
                state[0], state[1] = min(spec.limit, level - tokens), now
                self._put(spec.key, state, spec.ttl_s, now)
                lefts.append(state[0])
            else:
                used = self._get(spec.key, now) or [0]
                used[0] = max(0, used[0] + tokens)
                self._put(spec.key, used, spec.ttl_s, now)
                lefts.append(spec.limit - used[0])
        return lefts

    async def adjust_levels(self, specs: Sequence[Spec], delta: int) -> tuple[Level, ...]:
        return self._token_levels(specs, self._take(specs, -delta, self.clock()))

    async def levels(self, specs: Sequence[Spec]) -> tuple[Level, ...]:
        now = self.clock()
        return self._token_levels(specs, [self._left(spec, now) for spec in specs])


# -- Redis -------------------------------------------------------------------------------------------

_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: request logs; ARGV: member, then (limit, window ms) per key. Returns {0 or ms to wait, then
# (remaining, ms until full) per key}: after the hit, or as the logs stand when it is refused.
HIT = _NOW + """
local wait = 0
local counts = {}
for i, key in ipairs(KEYS) do
  local limit, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  counts[i] = count
  if count >= limit then
    local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now, 1)
  end
end
local out = {wait}
for i, key in ipairs(KEYS) do
  local limit, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local reset = 0
  if wait > 0 then
    if counts[i] > 0 then
      local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      reset = tonumber(newest[2]) + window - now
    end
  else
    redis.call('ZADD', key, now, ARGV[1])
    redis.call('PEXPIRE', key, window)
    counts[i], reset = counts[i] + 1, window
  end
  out[2 * i] = limit - counts[i]
  out[2 * i + 1] = reset
end
return out
"""

# Token counters. ARGV: tokens, then (kind, limit, ttl ms) per key; a bucket refills `limit` per ttl.
# levels(out) appends (tokens left, floored; ms until a bucket is full, 0 for a budget) per key.
_LEVELS = _NOW + """
local left = {}
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
      left[i] = math.min(limit, left[i] - tokens)
      redis.call('HSET', key, 'level', tostring(left[i]), 'at', tostring(now))
    else
      local used = redis.call('INCRBY', key, tokens)
      if used < 0 then
        redis.call('SET', key, 0)
        used = 0
      end
      left[i] = limit - used
    end
    redis.call('PEXPIRE', key, ttl)
  end
end
local function levels(out)
  for i = 1, #KEYS do
    local kind, limit, ttl = ARGV[3 * i - 1], tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
    local reset = 0
    if kind == 'rate' and left[i] < limit then reset = math.ceil((limit - left[i]) * ttl / limit) end
    out[#out + 1] = math.floor(left[i])
    out[#out + 1] = reset
  end
  return out
end
"""

# Returns {granted, binding key (1-based, 0: none), ms to wait, levels...}.
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
  return levels({0, binding, math.max(1, math.ceil(wait))})
end
take(grant)
return levels({grant, binding, 0})
"""

ADJUST = _LEVELS + """
take(-tonumber(ARGV[1]))
return levels({})
"""

PEEK = _LEVELS + """
return levels({})
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
        self._peek = client.register_script(PEEK)

    @staticmethod
    def _token_args(specs: Sequence[Spec], tokens: int) -> list[Any]:
        args: list[Any] = [tokens]
        for spec in specs:
            args += [spec.kind, spec.limit, _ms(spec.ttl_s)]
        return args

    @staticmethod
    def _token_levels(specs: Sequence[Spec], flat: Sequence[Any]) -> tuple[Level, ...]:
        return tuple(token_level(spec, int(flat[2 * i]), int(flat[2 * i + 1]) / 1000) for i, spec in enumerate(specs))

    async def hit_levels(self, specs: Sequence[Spec], member: str) -> Hit:
        args: list[Any] = [member]
        for spec in specs:
            args += [spec.limit, _ms(spec.ttl_s)]
        out = await self._hit(keys=[s.key for s in specs], args=args)
        return Hit(int(out[0]) / 1000, tuple(Level(spec.limit, max(0, int(out[2 * i + 1])), int(out[2 * i + 2]) / 1000)
                                             for i, spec in enumerate(specs)))

    async def reserve_levels(self, specs: Sequence[Spec], want: int) -> Reservation:
        out = await self._reserve(keys=[s.key for s in specs], args=self._token_args(specs, want))
        return Reservation(int(out[0]), int(out[1]) - 1, int(out[2]) / 1000, self._token_levels(specs, out[3:]))

    async def adjust_levels(self, specs: Sequence[Spec], delta: int) -> tuple[Level, ...]:
        out = await self._adjust(keys=[s.key for s in specs], args=self._token_args(specs, delta))
        return self._token_levels(specs, out)

    async def levels(self, specs: Sequence[Spec]) -> tuple[Level, ...]:
        out = await self._peek(keys=[s.key for s in specs], args=self._token_args(specs, 0))
        return self._token_levels(specs, out)

    async def close(self) -> None:
        await self.client.aclose()
