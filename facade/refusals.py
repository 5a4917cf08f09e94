"""Why the façade answered 429: hubmesh_requests_refused_total{endpoint, model, reason}, counted by
the access log (facade/observability.py) beside hubmesh_requests_total{status="429"}, one for one.

The reason comes from the error the request was answered with (its OpenAI `type` and `code`), by
the one table below, REASONS:

- `rate_limit_requests`: a request log (rpm), the subject's or the model's (facade/limits);
- `rate_limit_tokens`: a token bucket (tpm);
- `budget`: a daily or monthly token budget (insufficient_quota);
- `max_parallel`: a hub key's max_parallel_requests (facade/auth/hub_keys.py);
- `capacity`: this façade worker's requests in flight (HUBMESH_MAX_IN_FLIGHT, facade/capacity.py);
- `service_capacity`: a gRPC service refused the call AT_CAPACITY (its admission control);
- `other`: any other 429 (none is made today: a new source of 429s belongs in REASONS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter

if TYPE_CHECKING:
    from facade.errors import OpenAIError

OTHER = "other"
# (OpenAI error type, code) of a 429 -> its reason
REASONS: dict[tuple[str, str | None], str] = {
    ("requests", "rate_limit_exceeded"): "rate_limit_requests",
    ("tokens", "rate_limit_exceeded"): "rate_limit_tokens",
    ("insufficient_quota", "insufficient_quota"): "budget",
    # a service found the grant too small for the prompt, and no limit bound the grant
    # (facade/limits/meter.py names the limit when one did)
    ("insufficient_quota", "token_budget_exceeded"): "budget",
    ("max_parallel_requests", "rate_limit_exceeded"): "max_parallel",
    ("server_overloaded", "server_overloaded"): "capacity",
    ("rate_limit_error", "rate_limit_exceeded"): "service_capacity",
}
REASON_NAMES = (*dict.fromkeys(REASONS.values()), OTHER)

REFUSED = Counter(
    "hubmesh_requests_refused", "Requests the façade answered 429, by endpoint, model and reason "
    "(rate_limit_requests, rate_limit_tokens, budget, max_parallel, capacity, service_capacity, other)",
    ["endpoint", "model", "reason"],
)


def refusal_reason(err: OpenAIError) -> str:
    """The reason label of an error answered 429."""
    return REASONS.get((err.type, err.code), OTHER)
