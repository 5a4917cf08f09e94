"""Limits and budgets per subject (and per model): request logs, token buckets and period budgets,
in this process or shared by every façade replica through Redis (HUBMESH_REDIS_URL).

policy.py says which counters bind a request, stores.py keeps them (atomically), limiter.py chooses
the store and handles Redis faults (HUBMESH_LIMITS_FAIL_MODE), meter.py walks one request through
admission, reservation and settlement.
"""

from facade.limits.limiter import Limiter, create_limiter
from facade.limits.meter import Meter
from facade.limits.policy import LimitClaims, Limits, Policy

__all__ = ["LimitClaims", "Limiter", "Limits", "Meter", "Policy", "create_limiter"]
