"""Token-bucket arithmetic on a simulated clock: the rate holds over long runs, tenants are independent."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.replay.ratelimit import TenantRateLimits, TokenBucket


def run_greedy(bucket: TokenBucket, n: float, calls: int, start: float, think: float = 0.0) -> list[float]:
    """One caller that takes n tokens, sleeps as told, works `think` seconds, and goes again.

    Returns the times at which each batch of tokens is used.
    """
    now = start
    used = []
    for _ in range(calls):
        wait = bucket.reserve(n, now)
        assert wait >= 0
        now += wait
        used.append(now)
        now += think
    return used


@pytest.mark.parametrize("start", [0.0, 1000.0])
def test_a_greedy_caller_gets_the_rate_and_no_more(start: float) -> None:
    rate = 500.0
    bucket = TokenBucket(rate, burst=rate)
    used = run_greedy(bucket, 100, 10_000, start)
    tokens = 100 * len(used)
    # The first second's burst is free; after that, exactly `rate` per second.
    assert used[-1] - start == pytest.approx((tokens - rate) / rate, rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(1, 10_000),
    burst_s=st.floats(0.1, 5),
    steps=st.lists(
        st.tuples(st.floats(0, 2), st.integers(1, 5_000)),  # (gap before the call, tokens asked)
        min_size=1,
        max_size=200,
    ),
)
def test_tokens_used_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst_s: float, steps: list[tuple[float, int]]
) -> None:
    """Whatever the arrival pattern, by the time a caller may use its tokens, total use fits the budget."""
    burst = rate * burst_s
    bucket = TokenBucket(rate, burst=burst)
    start = now = 50.0
    total = 0
    for gap, n in steps:
        now += gap
        wait = bucket.reserve(n, now)
        total += n
        assert total <= burst + rate * (now + wait - start) + 1e-6 * total
        # Nobody is kept waiting longer than the tokens ahead of them need.
        assert wait <= total / rate + 1e-9


def test_burst_is_free_then_waits_grow_with_debt() -> None:
    bucket = TokenBucket(rate=10, burst=20)
    assert bucket.reserve(20, 100.0) == 0.0  # the whole burst at once
    assert bucket.reserve(5, 100.0) == pytest.approx(0.5)
    assert bucket.reserve(5, 100.0) == pytest.approx(1.0)  # queued behind the previous reservation
    # 1 s later the debt of 10 is paid back to zero: 10 more wait a full second again.
    assert bucket.reserve(10, 101.0) == pytest.approx(1.0)


def test_idle_time_refills_only_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=20)
    bucket.reserve(20, 1.0)
    # An hour idle does not bank 36,000 tokens: at most the burst is available.
    assert bucket.reserve(20, 3601.0) == 0.0
    assert bucket.reserve(10, 3601.0) == pytest.approx(1.0)


def test_idle_from_a_clock_at_zero_refills_too() -> None:
    """A clock that starts at 0.0 (a simulated one, a fresh monotonic clock) is a time like any other."""
    bucket = TokenBucket(rate=10, burst=10)
    assert bucket.reserve(10, 0.0) == 0.0
    assert bucket.reserve(10, 1.0) == 0.0  # one second refilled the ten tokens


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


def test_tenants_have_independent_buckets() -> None:
    limits = TenantRateLimits(events_per_second=1000)
    # acme exhausts its bucket and runs 9 s into debt...
    assert limits.reserve("acme", 1000, 0, 10.0) == 0.0
    assert limits.reserve("acme", 9000, 0, 10.0) == pytest.approx(9.0)
    # ...which costs globex nothing: it still has its own full one-second burst.
    assert limits.reserve("globex", 1000, 0, 10.0) == 0.0
    assert limits.reserve("globex", 500, 0, 10.0) == pytest.approx(0.5)
    assert limits.reserve("acme", 1, 0, 10.0) == pytest.approx(9.001)


def test_each_tenant_gets_its_own_rate_under_interleaved_load() -> None:
    rate = 2000.0
    limits = TenantRateLimits(rate)
    rng = random.Random(7)
    next_free = {"acme": 0.0, "globex": 0.0, "initech": 0.0}
    used = {t: 0 for t in next_free}
    last_use = dict(next_free)
    start = 100.0
    now = start
    # Many workers' worth of reservations arriving in one shared stream, tenants interleaved at random.
    for _ in range(30_000):
        now += rng.expovariate(5000)
        t = rng.choice(list(next_free))
        n = rng.randint(1, 200)
        wait = limits.reserve(t, n, 0, now)
        used[t] += n
        last_use[t] = max(last_use[t], now + wait)
    for t in used:
        elapsed = last_use[t] - start
        assert used[t] <= rate + rate * elapsed + 1e-6
        # Each tenant asked for far more than its rate, so it got close to all of it, independently.
        assert used[t] / elapsed == pytest.approx(rate, rel=0.02)


def test_requests_have_their_own_bucket_and_the_longer_wait_wins() -> None:
    limits = TenantRateLimits(events_per_second=1000, requests_per_second=2)
    assert limits.reserve("acme", 500, 1, 0.0) == 0.0
    assert limits.reserve("acme", 500, 1, 0.0) == 0.0  # both bursts spent, neither in debt
    # 100 events would wait 0.1 s; the third call in the same second waits 0.5 s for its request token.
    assert limits.reserve("acme", 100, 1, 0.0) == pytest.approx(0.5)
    assert limits.reserve("globex", 100, 1, 0.0) == 0.0  # per tenant


def test_a_limit_left_unset_is_not_applied() -> None:
    only_requests = TenantRateLimits(None, requests_per_second=1)
    assert only_requests.reserve("acme", 10**9, 1, 0.0) == 0.0
    assert only_requests.reserve("acme", 0, 1, 0.0) == pytest.approx(1.0)
    only_events = TenantRateLimits(100)
    assert [only_events.reserve("acme", 0, 1, 0.0) for _ in range(1000)] == [0.0] * 1000
