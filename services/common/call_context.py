"""What a service knows about the gRPC call it is serving, set per call by the servers' interceptor
(services.common.interceptors) and read by the work done for it."""

from __future__ import annotations

import contextvars

# When the gRPC call being served must be answered (time.monotonic()), set per call by the servers'
# interceptor; Triton calls made for it get no more than what remains.
CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("call_deadline", default=None)
# What the work done for the call being served wants its access-log line to say (e.g. that its
# generation moved to another replica); a fresh dict per call, set by the servers' interceptor.
CALL_NOTES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("call_notes", default=None)
