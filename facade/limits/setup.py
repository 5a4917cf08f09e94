"""The façade's Metering from its settings, and its lifetime in the app; the configured budgets as
gauges (hubmesh_budget_tokens_per_day, _per_month: HUBMESH_BUDGET_TOKENS_PER_DAY / _PER_MONTH, every
subject's default; 0 is unlimited), for the alerts and dashboards to compare spend with. Budgets a
token's own claims set, and per-model budgets, are not among them (no per-subject series)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import Gauge

from facade.limits.limiter import create_limiter
from facade.limits.meter import Metering
from facade.limits.middleware import METERING
from facade.limits.policy import Limits, Policy

log = logging.getLogger(__name__)

BUDGET_PER_DAY = Gauge("hubmesh_budget_tokens_per_day",
                       "Configured daily token budget of every subject (HUBMESH_BUDGET_TOKENS_PER_DAY; 0: unlimited)")
BUDGET_PER_MONTH = Gauge("hubmesh_budget_tokens_per_month",
                         "Configured monthly token budget of every subject (HUBMESH_BUDGET_TOKENS_PER_MONTH; 0: unlimited)")


def metering_from(settings) -> Metering:
    policy = Policy(
        default=Limits(rpm=settings.rate_limit_rpm, tpm=settings.rate_limit_tpm,
                       tokens_per_day=settings.budget_tokens_per_day,
                       tokens_per_month=settings.budget_tokens_per_month),
        per_model=dict(settings.model_limits),
    )
    limiter = create_limiter(settings.redis_url, settings.limits_fail_mode, settings.redis_timeout_s,
                             settings.redis_retry_s, settings.limits_local_max_keys)
    return Metering(limiter, policy, settings.limits_reserve_tokens)


async def metering_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: says where the counters live, sets the budgets' gauges; closes the Redis
    connections at shutdown."""
    metering = app[METERING]
    log.info(metering.describe())
    BUDGET_PER_DAY.set(metering.policy.default.tokens_per_day)
    BUDGET_PER_MONTH.set(metering.policy.default.tokens_per_month)
    yield
    await metering.limiter.close()
