"""One request's limits, from admission to settlement.

1. `admit()`, in the limits middleware (facade/limits/middleware.py): the subject's request logs (rpm).
2. `admit_model(model)`, when the body names the model (facade/api/intake.py): that model's logs.
3. `reserve(model, want)`, before each model call: `want` is the most the call can cost (an upper
   bound of its prompt tokens plus n × max_tokens, or n × the configured cap when the request sets no
   max_tokens). It reserves min(want, what the tpm bucket and the budgets have left), taken from every
   counter at once, so that concurrent requests cannot spend the same tokens twice. What it grants
   goes to the text service as the call's `token_budget`: each choice stops at its share with finish
   reason `length`. Nothing left: 429.
4. `use(tokens)` (Call.record_usage) and `settle()`, when the request has ended whichever way: the
   unused part of each reservation goes back (a call that used more, an embedding, is charged the
   rest). A request that ended before using anything gives everything back.

Each step keeps the levels its store operation answered with, per counter (`requests`, `tokens`),
the latest of each counter winning; `rate_limits(model)` gives the binding ones to the
x-ratelimit-* headers (facade/limits/headers.py), reading the token counters (one round trip) only
for a request that reserved none.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

from facade.errors import OpenAIError
from facade.limits.limiter import Grant, Limiter, LimiterUnavailable
from facade.limits.policy import LimitClaims, Limits, Policy, Spec, period_left_s, request_specs, token_specs
from facade.limits.stores import Level

_MEMBERS = itertools.count()
_PROCESS = f"{os.getpid()}-{os.urandom(4).hex()}"


def unavailable() -> OpenAIError:
    return OpenAIError(503, "The rate limiter is unavailable; retry shortly.", type="server_error",
                       code="limits_unavailable", headers={"Retry-After": "1"})


def _retry_after(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}


def limit_error(spec: Spec, subject: str, wait_s: float) -> OpenAIError:
    """OpenAI's 429s: `requests`/`tokens` rate limits (rate_limit_exceeded), budgets (insufficient_quota)."""
    if spec.is_budget:
        wait_s = period_left_s(spec)
        return OpenAIError(
            429, f"You exceeded your {spec.scope} of {spec.limit} tokens; it is renewed in {math.ceil(wait_s)}s.",
            type="insufficient_quota", code="insufficient_quota", headers=_retry_after(wait_s),
        )
    unit, per = ("requests", "rpm") if spec.kind == "requests" else ("tokens", "tpm")
    return OpenAIError(
        429,
        f"Rate limit reached for {unit} ({per} {spec.limit}, {spec.scope}) for {subject}. "
        f"Please try again in {math.ceil(wait_s)}s.",
        type=unit, code="rate_limit_exceeded", headers=_retry_after(wait_s),
    )


class Meter:
    def __init__(self, limiter: Limiter, policy: Policy, subject: str, claims: LimitClaims,
                 model_claims: dict[str, LimitClaims], reserve_cap: int) -> None:
        self.limiter = limiter
        self.policy = policy
        self.subject = subject
        self.limits = policy.subject_limits(claims)
        self.model_claims = model_claims
        self.reserve_cap = reserve_cap
        self.grants: list[Grant] = []
        self._bound_by: list[Spec | None] = []  # each grant's binding counter (None: granted in full)
        self.used: int | None = None
        self._model_limits: dict[str, Limits] = {}
        # each counter's latest Level, by key: request logs, token counters
        self.requests: dict[str, Level] = {}
        self.tokens: dict[str, Level] = {}

    def _for_model(self, model: str) -> Limits:
        if model not in self._model_limits:
            self._model_limits[model] = self.policy.model_limits(model, self.model_claims)
        return self._model_limits[model]

    async def _hit(self, specs: list[Spec]) -> None:
        if not specs:
            return
        try:
            wait, levels = await self.limiter.hit(specs, f"{_PROCESS}-{next(_MEMBERS)}")
        except LimiterUnavailable:
            raise unavailable() from None
        _note(self.requests, specs, levels)
        if wait > 0:  # the log that refused it: the one with nothing left
            raise limit_error(specs[min(range(len(specs)), key=lambda i: levels[i].remaining)], self.subject, wait)

    async def admit(self) -> None:
        await self._hit(request_specs(self.subject, self.limits))

    async def admit_model(self, model: str) -> None:
        await self._hit(request_specs(self.subject, self._for_model(model), model))

    def counts_tokens(self, model: str) -> bool:
        return self.limits.counts_tokens or self._for_model(model).counts_tokens

    def _token_specs(self, model: str) -> list[Spec]:
        return token_specs(self.subject, self.limits) + token_specs(self.subject, self._for_model(model), model)

    async def reserve(self, model: str, want: int) -> int | None:
        """Tokens granted to a model call (None: no token limit applies); 429 when none are left."""
        specs = self._token_specs(model)
        if not specs:
            return None
        try:
            grant, (granted, binding, wait, levels) = await self.limiter.reserve(specs, max(1, want))
        except LimiterUnavailable:
            raise unavailable() from None
        _note(self.tokens, specs, levels)
        if grant is None:
            raise limit_error(specs[binding], self.subject, wait)
        self.grants.append(grant)
        self._bound_by.append(specs[binding] if binding >= 0 else None)
        return granted

    async def rate_limits(self, model: str) -> tuple[Level | None, Level | None]:
        """The binding (least remaining) request log and token counter of this request, None where
        no such limit applies. A request that reserved no tokens (GET /v1/models, one refused
        before) reads its token counters: one round trip, none where the store cannot answer."""
        if not self.tokens and self.counts_tokens(model):
            specs = self._token_specs(model)
            try:
                _note(self.tokens, specs, await self.limiter.levels(specs))
            except LimiterUnavailable:
                pass
        return binding_level(self.requests), binding_level(self.tokens)

    def cost_bound(self, input_bytes: int, choices: int = 0, max_tokens: int | None = None) -> int:
        """The most a call can cost: its input's tokens (never more than its bytes; a generation's
        prompt also gets its template, prompt_bound) plus what `choices` can generate."""
        if not choices:
            return max(1, input_bytes)
        return prompt_bound(input_bytes) + completion_bound(choices, max_tokens, self.reserve_cap)

    def use(self, tokens: int) -> None:
        """What the request really used, all its calls together (record_usage)."""
        self.used = tokens

    def refused_for_budget(self, err: OpenAIError) -> OpenAIError:
        """The text service found a prompt larger than its grant: the grant is spent (the prompt
        was read), and the error names the limit that bound it."""
        self.used = sum(g.tokens for g in self.grants)
        binding = self._bound_by[-1] if self._bound_by else None
        if binding is None:  # granted in full: the prompt bound was wrong, the service's word stands
            return err
        grant = self.grants[-1]
        if binding.is_budget:
            return limit_error(binding, self.subject, 0)
        return limit_error(binding, self.subject, grant.tokens * binding.ttl_s / binding.limit)

    async def release(self, since: int) -> None:
        """Gives back in full the grants made from the `since`-th on (model calls refused before they
        used anything: an alias's model at capacity, facade/aliases.py); their counters' levels are
        forgotten, so that the headers read those of the calls that ran."""
        released = self.grants[since:]
        del self.grants[since:], self._bound_by[since:]
        for grant in released:
            await self.limiter.settle(grant, 0)
            for spec in grant.specs:
                self.tokens.pop(spec.key, None)

    async def settle(self) -> None:
        left = self.used or 0
        for grant in self.grants:
            used = min(left, grant.tokens) if grant is not self.grants[-1] else left
            left -= used
            _note(self.tokens, grant.specs, await self.limiter.settle(grant, used))
        self.grants, self._bound_by = [], []


def _note(levels: dict[str, Level], specs: Sequence[Spec], answered: Sequence[Level]) -> None:
    """Keeps the levels a store operation answered with (none: it did not answer)."""
    for spec, level in zip(specs, answered, strict=False):
        levels[spec.key] = level


def binding_level(levels: dict[str, Level]) -> Level | None:
    """The counter with the least remaining (of equals, the one furthest from its full limit)."""
    if not levels:
        return None
    return min(levels.values(), key=lambda level: (level.remaining, -level.reset_s))


def completion_bound(n: int, max_tokens: int | None, cap: int) -> int:
    """The most tokens n choices can generate."""
    return max(1, n) * (max_tokens if max_tokens is not None else cap)


# Prompt tokens never exceed the bytes of what is rendered into the prompt (byte-level tokenizers:
# at most one token per byte); templates add markup and a default system prompt on top.
TEMPLATE_ALLOWANCE = 64


def prompt_bound(payload_bytes: int) -> int:
    return payload_bytes + TEMPLATE_ALLOWANCE


class Metering:
    """The app's limits: the limiter, the configured policy, and a Meter for each request."""

    def __init__(self, limiter: Limiter, policy: Policy, reserve_cap: int) -> None:
        self.limiter = limiter
        self.policy = policy
        self.reserve_cap = reserve_cap

    def meter(self, subject: str, claims: LimitClaims, model_claims: dict[str, LimitClaims]) -> Meter:
        return Meter(self.limiter, self.policy, subject, claims, model_claims, self.reserve_cap)

    def describe(self) -> str:
        shared = self.limiter.shared
        if shared is None:
            return "limits: counted in this process (set HUBMESH_REDIS_URL to share them between replicas)"
        return f"limits: shared in Redis ({self.limiter.fail_mode} while it cannot answer)"
