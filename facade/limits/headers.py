"""OpenAI's rate-limit headers on every response of a subject that has limits, and `Retry-After` on
every 429: one on_response_prepare hook (streams included: it runs before their first byte).

- `x-ratelimit-limit-requests`, `-remaining-requests`, `-reset-requests`: the request log (rpm) with
  the least remaining of those the request was counted in (the subject's, the model's), as the
  store's own operation left it (Redis: the Lua script that counted the request, so every replica
  shows the same count); only for a subject with request limits.
- `x-ratelimit-limit-tokens`, `-remaining-tokens`, `-reset-tokens`: the token counter (tpm bucket,
  daily or monthly budget, the subject's or the model's) with the least remaining, as the last
  operation on it left it: the settlement for a response sent when the request has ended, the
  reservation for a stream (sent before it generates), a read of the counters (one round trip) for a
  request that reserved nothing; only for a subject with token limits.
- reset: the time until that counter is back at its full limit (a request log: until its newest
  request leaves the 60 s window, so `1m0s` right after a hit; a bucket: until it has refilled; a
  budget: until its period ends, `0s` when nothing of it is used), in OpenAI's format (`20ms`,
  `1s`, `6m0s`, `1h2m3.5s`).

While Redis cannot answer, the values are those of whichever store answered (fail_open: this
process's counters); with fail_closed and no answer, the headers that need one are left out.
"""

from __future__ import annotations

import math

from aiohttp import web

from facade.call import call_of
from facade.limits.stores import Level

LIMIT_REQUESTS = "x-ratelimit-limit-requests"
REMAINING_REQUESTS = "x-ratelimit-remaining-requests"
RESET_REQUESTS = "x-ratelimit-reset-requests"
LIMIT_TOKENS = "x-ratelimit-limit-tokens"
REMAINING_TOKENS = "x-ratelimit-remaining-tokens"
RESET_TOKENS = "x-ratelimit-reset-tokens"
REQUEST_HEADERS = (LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS)
TOKEN_HEADERS = (LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS)


def duration(seconds: float) -> str:
    """OpenAI's (Go's) duration format, to the millisecond, rounded up: 0s, 20ms, 1s, 1.5s, 6m0s, 1h0m0s."""
    ms = math.ceil(round(seconds * 1000, 3)) if seconds > 0 else 0
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, fraction = divmod(ms, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") + "s" if fraction else f"{whole}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def _trio(headers: dict[str, str], names: tuple[str, str, str], level: Level) -> None:
    limit, remaining, reset = names
    headers[limit] = str(level.limit)
    headers[remaining] = str(level.remaining)
    headers[reset] = duration(level.reset_s)


def rate_limit_headers(requests: Level | None, tokens: Level | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if requests is not None:
        _trio(headers, REQUEST_HEADERS, requests)
    if tokens is not None:
        _trio(headers, TOKEN_HEADERS, tokens)
    return headers


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the x-ratelimit-* headers of the request's meter (a subject with limits),
    and Retry-After on a 429 that does not say it yet (every source of one does: this is the net)."""
    call = call_of(request)
    meter = call.meter
    if meter is not None:
        response.headers.update(rate_limit_headers(*await meter.rate_limits(call.model)))
    if response.status == 429 and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = "1"
