"""Per-subject rate limits: requests per minute and tokens per minute (token buckets, per façade process).

With several façade replicas each enforces its share; a shared store (Redis) is the next step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float, per_second: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * per_second)
        self.updated = now


@dataclass
class RateLimiter:
    """Token buckets per subject; a limit of 0 means unlimited."""

    default_rpm: int = 0
    default_tpm: int = 0
    clock: object = time.monotonic
    _requests: dict[str, _Bucket] = field(default_factory=dict)
    _tokens: dict[str, _Bucket] = field(default_factory=dict)

    def _bucket(self, table: dict[str, _Bucket], subject: str, per_minute: int) -> _Bucket:
        now = self.clock()
        bucket = table.get(subject)
        if bucket is None or bucket.capacity != per_minute:
            bucket = table[subject] = _Bucket(per_minute, per_minute, now)
        bucket.refill(now, per_minute / 60.0)
        return bucket

    def admit(self, subject: str, rpm: int | None = None, tpm: int | None = None) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        rpm = self.default_rpm if rpm is None else rpm
        tpm = self.default_tpm if tpm is None else tpm
        if tpm:
            tokens = self._bucket(self._tokens, subject, tpm)
            if tokens.level <= 0:  # spent tokens are settled after each response, so the level may go negative
                return (1 - tokens.level) / (tpm / 60.0)
        if rpm:
            requests = self._bucket(self._requests, subject, rpm)
            if requests.level < 1:
                return (1 - requests.level) / (rpm / 60.0)
            requests.level -= 1
        return 0.0

    def spend_tokens(self, subject: str, count: int, tpm: int | None = None) -> None:
        """Charges tokens used by a finished request."""
        tpm = self.default_tpm if tpm is None else tpm
        if tpm and count:
            self._bucket(self._tokens, subject, tpm).level -= count
