"""Per-tenant token buckets: the arithmetic, apart from where the buckets live (a Ray actor)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """Reserve-then-wait: a caller takes its tokens now and sleeps for the returned time.

    Reserving ahead (the balance may go negative) keeps one shared bucket fair across many workers
    without them polling it.
    """

    rate: float  # tokens per second
    burst: float
    tokens: float = 0.0
    updated: float | None = None  # time of the last reservation; None before the first

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        self.tokens = self.burst

    def reserve(self, n: float, now: float) -> float:
        """Take n tokens; return how long to wait before using them."""
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class TenantRateLimits:
    """One bucket per tenant, created on first use, with a one-second burst."""

    def __init__(self, events_per_second: float) -> None:
        self.rate = events_per_second
        self._buckets: dict[str, TokenBucket] = {}

    def reserve(self, tenant: str, n: int, now: float) -> float:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = TokenBucket(self.rate, burst=self.rate)
        return bucket.reserve(n, now)
