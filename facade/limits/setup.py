"""The façade's Metering from its settings, and its lifetime in the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from facade.limits.limiter import create_limiter
from facade.limits.meter import Metering
from facade.limits.middleware import METERING
from facade.limits.policy import Limits, Policy

log = logging.getLogger(__name__)


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
    """cleanup_ctx: says where the counters live; closes the Redis connections at shutdown."""
    metering = app[METERING]
    log.info(metering.describe())
    yield
    await metering.limiter.close()
