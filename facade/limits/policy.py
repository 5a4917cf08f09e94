"""Which limits bind a request: the configured defaults, a token's claims over them, per model.

Every number is a limit per subject (a verified credential); 0 means unlimited:
- `rpm`: requests in any 60-second window (a sliding log: exactly `rpm`, however they are spread);
- `tpm`: tokens per minute, a token bucket of `tpm` tokens refilled continuously over 60 s;
- `tokens_per_day`, `tokens_per_month`: budgets over UTC calendar periods.

A subject's limits are HUBMESH_RATE_LIMIT_RPM / _TPM and HUBMESH_BUDGET_TOKENS_PER_DAY / _PER_MONTH,
overridden by the token's `rpm`, `tpm`, `tokens_per_day`, `tokens_per_month` claims. Limits per model
come on top (a subject's use of that model, besides its use of all models): HUBMESH_MODEL_LIMITS
(JSON: `{"model-id": {"rpm": 10, "tpm": 20000}}`), overridden field by field by the token's
`model_limits` claim of the same shape.

This module names the counters (`Spec`s) a request touches; facade/limits/stores.py keeps them.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

WINDOW_S = 60.0  # rpm's window and tpm's refill period
PERIOD_GRACE_S = 3600.0  # a budget's counter outlives its period by this much (late settlements)
KEY_PREFIX = "hm:lim:"


@dataclass(frozen=True)
class Limits:
    rpm: int = 0
    tpm: int = 0
    tokens_per_day: int = 0
    tokens_per_month: int = 0

    def over(self, base: Limits) -> Limits:
        return _over(self, base)

    @property
    def counts_tokens(self) -> bool:
        return bool(self.tpm or self.tokens_per_day or self.tokens_per_month)


LIMIT_NAMES = tuple(f.name for f in fields(Limits))


@dataclass(frozen=True)
class LimitClaims:
    """What a token says about its own limits; None: the configured value."""

    rpm: int | None = None
    tpm: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    def over(self, base: Limits) -> Limits:
        return _over(self, base)


def _over(limits: Limits | LimitClaims, base: Limits) -> Limits:
    """`limits` where set (not None), `base`'s elsewhere (`base` itself when none is set:
    the usual case, made on every request)."""
    changes = {name: v for name in LIMIT_NAMES if (v := getattr(limits, name)) is not None}
    return replace(base, **changes) if changes else base


NO_LIMITS = Limits()
NO_CLAIMS = LimitClaims()


def limits_from(value: Any, where: str) -> LimitClaims:
    """{"rpm": 10, ...} -> LimitClaims; ValueError naming `where` for anything else."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be an object of limits")
    known = {f.name for f in fields(LimitClaims)}
    if unknown := set(value) - known:
        raise ValueError(f"{where}: unknown limits {sorted(unknown)}; known: {sorted(known)}")
    for name, number in value.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"{where}.{name} must be a non-negative integer")
    return LimitClaims(**value)


def model_limits_from(value: Any, where: str) -> dict[str, LimitClaims]:
    """{"model": {limits}} (or its JSON text) -> {model: LimitClaims}."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must map model ids to limits")
    return {str(model): limits_from(limits, f"{where}[{model!r}]") for model, limits in value.items()}


@dataclass(frozen=True)
class Spec:
    """One counter: a request log (`requests`), a token bucket (`rate`) or a budget (`quota`).

    `ttl_s`: how long an untouched counter is kept (the window; a budget: to its period's end plus
    PERIOD_GRACE_S). `scope` says what it limits, for error messages.
    """

    key: str
    kind: str
    limit: int
    ttl_s: float
    scope: str

    @property
    def is_budget(self) -> bool:
        return self.kind == "quota"


def _tag(subject: str) -> str:
    # every key of a subject shares one Redis Cluster hash slot; the hash keeps keys short and safe
    return "{" + hashlib.sha256(subject.encode()).hexdigest()[:20] + "}"


def _periods(now: float) -> tuple[tuple[str, float], tuple[str, float]]:
    """(day id, seconds to its end), (month id, seconds to its end), in UTC."""
    t = time.gmtime(now)
    day_end = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    month_end = calendar.timegm((year, month, 1, 0, 0, 0))
    return ((f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", day_end - now),
            (f"{t.tm_year:04d}{t.tm_mon:02d}", month_end - now))


def request_specs(subject: str, limits: Limits, model: str | None = None) -> list[Spec]:
    """The request logs of `limits` (per subject, or per subject and model)."""
    if not limits.rpm:
        return []
    suffix, scope = (f":{model}", f"model {model!r}") if model is not None else ("", "all models")
    return [Spec(KEY_PREFIX + _tag(subject) + ":r" + suffix, "requests", limits.rpm, WINDOW_S, scope)]


def token_specs(subject: str, limits: Limits, model: str | None = None, now: float | None = None) -> list[Spec]:
    """The token counters of `limits`: its tpm bucket and its budgets of the current periods."""
    base = KEY_PREFIX + _tag(subject)
    suffix, scope = (f":{model}", f"model {model!r}") if model is not None else ("", "all models")
    specs = []
    if limits.tpm:
        specs.append(Spec(base + ":t" + suffix, "rate", limits.tpm, WINDOW_S, scope))
    if limits.tokens_per_day or limits.tokens_per_month:
        (day, day_left), (month, month_left) = _periods(time.time() if now is None else now)
        if limits.tokens_per_day:
            specs.append(Spec(f"{base}:d{day}{suffix}", "quota", limits.tokens_per_day, day_left + PERIOD_GRACE_S,
                              f"daily budget ({scope})"))
        if limits.tokens_per_month:
            specs.append(Spec(f"{base}:m{month}{suffix}", "quota", limits.tokens_per_month,
                              month_left + PERIOD_GRACE_S, f"monthly budget ({scope})"))
    return specs


def period_left_s(spec: Spec) -> float:
    """Seconds until a budget's period ends (when it is refilled)."""
    return max(1.0, spec.ttl_s - PERIOD_GRACE_S)


@dataclass(frozen=True)
class Policy:
    """The configured limits: a default for every subject, and per model."""

    default: Limits = Limits()
    per_model: Mapping[str, LimitClaims] = field(default_factory=dict)

    def subject_limits(self, claims: LimitClaims) -> Limits:
        return claims.over(self.default)

    def model_limits(self, model: str, claims: Mapping[str, LimitClaims]) -> Limits:
        configured = self.per_model.get(model, NO_CLAIMS)
        return claims.get(model, NO_CLAIMS).over(configured.over(NO_LIMITS))
