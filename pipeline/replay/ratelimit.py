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
    """Per tenant, a bucket of events and one of PutLogEvents requests (the unit AWS's quotas count), each
    created on first use with a one-second burst. A limit that is None is not applied."""

    def __init__(self, events_per_second: float | None, requests_per_second: float | None = None) -> None:
        self.rates = (events_per_second, requests_per_second)
        self._buckets: dict[tuple[str, int], TokenBucket] = {}

    def reserve(self, tenant: str, events: int, requests: int, now: float) -> float:
        """Take the tokens; return how long to wait: the longer of the two limits' waits."""
        wait = 0.0
        for kind, (rate, n) in enumerate(zip(self.rates, (events, requests), strict=True)):
            if rate is None or n == 0:
                continue
            bucket = self._buckets.get((tenant, kind))
            if bucket is None:
                bucket = self._buckets[(tenant, kind)] = TokenBucket(rate, burst=rate)
            wait = max(wait, bucket.reserve(n, now))
        return wait


class EventCap:
    """`--max-events`: the events a run may deliver, counted as objects finish, across every worker.

    `spend` is told each finished object's events and answers whether the run may start another. The cap is
    checked between objects, never inside one, so what the run delivered is whole objects, each in the ledger,
    and a later run sends the rest; it may pass the cap by the objects already in flight when it is reached.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the cap must be at least one event")
        self.limit = limit
        self.spent = 0

    def spend(self, events: int) -> bool:
        self.spent += events
        return self.spent < self.limit

    @property
    def reached(self) -> bool:
        return self.spent >= self.limit
