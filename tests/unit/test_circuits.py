"""The per-destination circuits (pipeline/circuits.py): the state machine against a model, the verdicts
that move it, and the delay arithmetic that keeps a storm's messages out of the DLQ."""

from __future__ import annotations

import heapq
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.circuits import (
    DEFAULT_HOLD_BASE_S,
    MAX_HOLD_S,
    SQS_MAX_VISIBILITY_S,
    CircuitBreakers,
    CircuitState,
    Verdict,
    release_delay,
    spread,
    verdict_of,
)
from pipeline.classify import is_throttling
from pipeline.retry import RetryPolicy

KEY = ("acme", "cloudwatch")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttling_opens_then_one_probe_then_closes() -> None:
    clock = Clock()
    c = CircuitBreakers(base_s=5, cap_s=300, clock=clock)
    assert c.allow(KEY) and c.state(KEY) is CircuitState.CLOSED
    c.report(KEY, Verdict.THROTTLED, "throttled", "ThrottlingException")
    assert c.state(KEY) is CircuitState.OPEN and not c.allow(KEY)
    assert c.retry_after(KEY) == 5 and c.cause(KEY) == ("throttled", "ThrottlingException")
    assert c.backing_off() == {KEY: True}
    clock.now = 5
    assert c.state(KEY) is CircuitState.HALF_OPEN
    assert c.allow(KEY)  # the probe
    assert not c.allow(KEY) and not c.allow(KEY)  # exactly one
    c.report(KEY, Verdict.SUCCESS)
    assert c.state(KEY) is CircuitState.CLOSED and c.allow(KEY) and c.allow(KEY)
    assert c.backing_off() == {}


def test_failed_probes_grow_the_open_time_to_the_cap_and_a_success_resets_it() -> None:
    clock = Clock()
    c = CircuitBreakers(base_s=5, cap_s=60, clock=clock)
    c.report(KEY, Verdict.FAILURE, "AccessDenied", "AccessDenied")
    seen = []
    for _ in range(6):
        seen.append(c.retry_after(KEY))
        clock.now += c.retry_after(KEY)
        assert c.allow(KEY)
        c.report(KEY, Verdict.THROTTLED)
    assert seen == [5, 10, 20, 40, 60, 60]
    clock.now += 60
    assert c.allow(KEY)
    c.report(KEY, Verdict.SUCCESS)
    c.report(KEY, Verdict.THROTTLED)
    assert c.retry_after(KEY) == 5


def test_a_probe_that_tells_nothing_hands_the_probe_to_the_next_message() -> None:
    clock = Clock()
    c = CircuitBreakers(clock=clock)
    c.report(KEY, Verdict.THROTTLED)
    clock.now = 100
    assert c.allow(KEY) and not c.allow(KEY)
    c.report(KEY, Verdict.NONE)  # e.g. the object was skipped: the ledger had it
    assert c.state(KEY) is CircuitState.HALF_OPEN and c.allow(KEY)


def test_stragglers_of_one_failure_do_not_grow_the_open_time() -> None:
    """Eight workers whose puts started before the circuit opened all fail: that is one failure."""
    c = CircuitBreakers(base_s=5, cap_s=300, clock=Clock())
    for _ in range(8):
        c.report(KEY, Verdict.THROTTLED)
    assert c.retry_after(KEY) == 5


def test_an_idle_half_open_circuit_stops_counting_as_backing_off() -> None:
    clock = Clock()
    c = CircuitBreakers(base_s=5, clock=clock)
    c.report(KEY, Verdict.THROTTLED)
    clock.now = 9  # half-open, nobody probed yet
    assert c.backing_off() == {KEY: True}
    clock.now = 10  # one more open time without a message: another pod has them
    assert c.backing_off() == {}
    assert c.allow(KEY)  # the probe
    assert c.backing_off() == {KEY: True}


def test_destinations_are_apart() -> None:
    c = CircuitBreakers(clock=Clock())
    c.report(("acme", "cloudwatch"), Verdict.THROTTLED)
    assert not c.allow(("acme", "cloudwatch"))
    assert c.allow(("acme", "s3-archive")) and c.allow(("globex", "cloudwatch"))


def test_the_circuit_refuses_a_bad_configuration() -> None:
    with pytest.raises(ValueError):
        CircuitBreakers(base_s=0)
    with pytest.raises(ValueError):
        CircuitBreakers(base_s=10, cap_s=5)


@pytest.mark.parametrize(
    ("done", "failed", "recoverable", "held", "code", "verdict"),
    [
        (True, False, False, False, "", Verdict.SUCCESS),
        (False, False, False, False, "", Verdict.NONE),  # skipped
        (False, True, True, False, "ThrottlingException", Verdict.THROTTLED),
        (False, True, True, False, "SlowDown", Verdict.THROTTLED),
        (False, True, True, False, "AccessDenied", Verdict.FAILURE),
        (False, True, True, False, "HTTP 500", Verdict.FAILURE),
        (False, True, True, False, "", Verdict.NONE),  # a ledger write or the source object: no code
        (False, True, False, False, "InvalidParameterException", Verdict.NONE),  # the data's fault
        (False, True, True, True, "ThrottlingException", Verdict.NONE),  # held: nothing was tried
    ],
)
def test_verdicts(done: bool, failed: bool, recoverable: bool, held: bool, code: str, verdict: Verdict) -> None:
    assert verdict_of(done, failed, recoverable, held, code) is verdict


def test_is_throttling_knows_each_services_word() -> None:
    assert all(is_throttling(c) for c in ("ThrottlingException", "Throttling", "SlowDown", "RequestThrottled"))
    assert not any(is_throttling(c) for c in ("AccessDenied", "HTTP 500", "", "ServiceUnavailableException"))


def test_a_throttled_loop_gives_up_after_its_throttle_attempts_but_5xx_keeps_the_full_budget() -> None:
    from pipeline.errors import DeliveryError

    policy = RetryPolicy(attempts=8, throttle_attempts=3)
    r = policy.begin(sleep=lambda _: None)
    r.backoff("put", "ThrottlingException")
    r.backoff("put", "ThrottlingException")
    with pytest.raises(DeliveryError) as exc:
        r.backoff("put", "ThrottlingException")
    assert exc.value.code == "ThrottlingException" and exc.value.recoverable
    r = policy.begin(sleep=lambda _: None)
    calls = 0
    with pytest.raises(DeliveryError):
        while True:
            calls += 1
            r.backoff("put", "HTTP 503")
    assert calls == 8


# -- the state machine against a model ---------------------------------------------------------------------

Op = tuple[str, float]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(0, 400)),
        st.tuples(st.sampled_from(["allow", "success", "throttled", "failure", "none"]), st.just(0.0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_state_machine_matches_its_model(sequence: list[Op]) -> None:
    """A reference model of the documented machine: closed → open (base·2^(n−1), capped) → half-open with
    one probe → closed on success, open longer on failure; a report only counts for an attempt allowed."""
    clock = Clock()
    c = CircuitBreakers(base_s=5, cap_s=300, clock=clock)
    state, opened, open_s, failures, probing, allowed = "closed", 0.0, 0.0, 0, False, 0
    for op, arg in sequence:
        if op == "tick":
            clock.now += arg
            continue
        half = state == "open" and clock.now - opened >= open_s
        if op == "allow":
            expect = state == "closed" or (half and not probing)
            assert c.allow(KEY) is expect
            if expect:
                allowed += 1
                probing = probing or state == "open"
            continue
        if not allowed:
            continue  # a report always follows an allow
        allowed -= 1
        if op == "success":
            c.report(KEY, Verdict.SUCCESS)
            state, failures, probing = "closed", 0, False
        elif op == "none":
            c.report(KEY, Verdict.NONE)
            probing = False
        else:
            c.report(KEY, Verdict.THROTTLED if op == "throttled" else Verdict.FAILURE)
            if state == "open" and not probing and clock.now - opened < open_s:
                pass  # a straggler of the failure that opened it
            else:
                failures += 1
                state, opened, open_s, probing = "open", clock.now, min(300.0, 5.0 * 2 ** (failures - 1)), False
        expected_state = (
            CircuitState.CLOSED
            if state == "closed"
            else CircuitState.HALF_OPEN
            if clock.now - opened >= open_s
            else CircuitState.OPEN
        )
        assert c.state(KEY) is expected_state
        if state == "open":
            assert c.retry_after(KEY) == pytest.approx(max(0.0, open_s - (clock.now - opened)))
            assert 5 <= open_s <= 300


def test_exactly_one_probe_under_threads() -> None:
    clock = Clock()
    c = CircuitBreakers(clock=clock)
    c.report(KEY, Verdict.THROTTLED)
    clock.now = 10
    barrier = threading.Barrier(16)
    got: list[bool] = []
    lock = threading.Lock()

    def ask() -> None:
        barrier.wait()
        answer = c.allow(KEY)
        with lock:
            got.append(answer)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got.count(True) == 1


# -- the delay arithmetic ------------------------------------------------------------------------------------


def test_release_delay_grows_by_four_per_receive_and_stops_at_12_hours() -> None:
    assert [release_delay(0, n) for n in range(1, 6)] == [30, 120, 480, 1920, 7680]
    assert release_delay(200, 1) == 200  # the circuit's wait, when longer
    assert release_delay(0.2, 1, base_s=0) == 1  # never 0: the message must not spin back at once
    assert release_delay(0, 30) == MAX_HOLD_S < SQS_MAX_VISIBILITY_S  # SQS counts 12 h from the receive
    assert release_delay(0, 0) == 30  # a count SQS did not give: the first receive


@settings(max_examples=400, deadline=None)
@given(
    storm_start=st.floats(0, 600),
    storm_s=st.floats(0, 600),
    arrivals=st.lists(st.floats(0, 1500), min_size=1, max_size=40),
    work_s=st.floats(0.01, 30),
    rng=st.randoms(use_true_random=False),
)
def test_a_10_minute_storm_with_max_receive_count_5_sends_nothing_to_the_dlq(
    storm_start: float, storm_s: float, arrivals: list[float], work_s: float, rng: random.Random
) -> None:
    """One tenant's destination fails every attempt for up to 10 minutes; its messages arrive at any time and
    go through the consumer's circuit, spread and release_delay with the defaults (30 s base, ×4; circuit
    5 s ×2 to 5 min). An attempt takes `work_s`, and messages that come back while it is out are held (the herd at a
    half-open circuit). Every message is delivered within 5 receives: none reaches a DLQ of
    maxReceiveCount 5."""
    clock = Clock()
    circuits = CircuitBreakers(clock=clock)
    storm_end = storm_start + storm_s
    # Events in time order: ("receive", message, receive count so far) or ("answer", message, count): an
    # attempt's outcome, `work_s` after it started.
    events: list[tuple[float, int, str, int, int]] = []
    seq = 0
    for i, t in enumerate(sorted(arrivals)):
        heapq.heappush(events, (t, seq, "receive", i, 0))
        seq += 1
    delivered = set()
    while events:
        at, _, kind, i, count = heapq.heappop(events)
        clock.now = at
        if kind == "answer":
            failing = storm_start <= at < storm_end
            circuits.report(KEY, Verdict.THROTTLED if failing else Verdict.SUCCESS)
            if not failing:
                delivered.add(i)
                continue
            wait = spread(circuits.retry_after(KEY), circuits.open_time(KEY), rng)
            heapq.heappush(events, (at + release_delay(wait, count, DEFAULT_HOLD_BASE_S), seq, "receive", i, count))
            seq += 1
            continue
        count += 1
        assert count <= 5, f"message {i} would reach the DLQ (storm {storm_start:.0f}..{storm_end:.0f})"
        if circuits.allow(KEY):
            heapq.heappush(events, (at + work_s, seq, "answer", i, count))
        else:
            wait = spread(circuits.retry_after(KEY), circuits.open_time(KEY), rng)
            heapq.heappush(events, (at + release_delay(wait, count, DEFAULT_HOLD_BASE_S), seq, "receive", i, count))
        seq += 1
    assert delivered == set(range(len(arrivals)))


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 300), st.floats(0, 300), st.randoms(use_true_random=False))
def test_spread_brings_held_messages_back_within_one_open_time_after_the_wait(
    wait: float, open_s: float, rng: random.Random
) -> None:
    assert wait <= spread(wait, open_s, rng) <= wait + open_s
