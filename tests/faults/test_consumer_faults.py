"""The SQS consumer (a real `python -m jobs.consumer --mode sqs` subprocess) behind the fault proxy.

Objects reach the queue as in production: S3 → SNS → SQS. What is checked is what landed in the tenants'
own CloudWatch accounts, the ledger, the queues and the consumer's own logs.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
from fault_helpers import (
    ConsumerProcess,
    FaultStack,
    accepted_objects,
    allow_receives,
    delivered,
    duplicated_keys,
    expected,
    ledger_keys,
    objects_of,
    queue_counts,
    queue_empty,
    set_queue,
    wait_for,
    write,
)

from devstack.faults import Delay, Drop, Error, Rule

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PUT = "PutLogEvents"


def test_consumer_retries_throttling_and_5xx_refreshes_expiry_and_holds_back_only_the_denied_tenant(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    allow_receives(stack, 20)  # the test decides when the customer fixes their side
    globex = stack.local.tenant("globex")
    proxy = stack.proxy
    faults = [
        proxy.add(Rule(Error.throttling(), service="logs", operation=PUT, probability=0.15)),
        proxy.add(Rule(Error.unavailable(), service="logs", operation=PUT, probability=0.05)),
        proxy.add(Rule(Drop(), service="logs", operation=PUT, probability=0.03)),
        proxy.add(Rule(Error.expired_token(), service="logs", operation=PUT, body_contains='"/logs/acme"', first=1)),
    ]
    denied = proxy.add(
        Rule(Error.access_denied(), service="sts", operation="AssumeRole", body_contains=globex.role_arn)
    )
    # globex's refusal opens its circuit (pipeline/circuits.py): its messages are held and come back after
    # the circuit's wait, with a 1 s back-off base instead of production's 30 s.
    c = consumer("--workers", "4", "--retry-delay", "2", "--backoff-delay", "1")
    manifest = write(
        stack.local, tenants=("acme", "globex"), applications=("payment-service", "frontend"), pods_per_app=2,
        objects_per_pod=2, seed=31,
    )  # fmt: skip
    acme_keys, globex_keys = objects_of(manifest, "acme"), objects_of(manifest, "globex")

    wait_for(lambda: ledger_keys(stack.local, "acme") == acme_keys, 90, "every acme object")

    def failed_once() -> set[str]:
        return {r["object_key"] for r in c.logs() if r.get("tenant") == "globex" and r.get("status") == "failed"}

    # Every globex object failed at least once: refused by STS, or held back once its circuit had opened (so
    # only the first attempts and the probes reach STS, not one AssumeRole per object).
    wait_for(lambda: failed_once() >= globex_keys, 60, "globex's first attempts")
    assert denied.stats.injected >= 1
    assert delivered(stack.local, "acme") == expected(manifest, "acme")  # once each, despite the faults
    assert ledger_keys(stack.local, "globex") == set()
    left = [r for r in c.logs() if r.get("msg") == "message left for redelivery"]
    assert left and all("AccessDenied" in r["reasons"][0] and "globex" in r["reasons"][0] for r in left)
    assert proxy.calls("logs", PUT) and not [
        x for x in proxy.calls("logs", PUT) if '"/logs/globex"' in x.body.decode()
    ], "globex had no credentials, so nothing may have been put for it"
    injected = sum(r.stats.injected for r in faults[:3])
    puts = proxy.calls("logs", PUT)
    ok = [x for x in puts if x.status == 200]
    # Bounded: every extra attempt is an injected fault (or a new stream's first put), never a retry storm.
    assert len(puts) == len(ok) + injected + faults[3].stats.injected + len(proxy.calls("logs", "CreateLogStream"))
    assert injected / len(ok) < 2.0
    print(f"consumer retry rate: {injected} injected over {len(ok)} batches ({injected / len(ok):.2f})")

    # The customer fixes the role: the messages that were left come back and are delivered, once.
    proxy.clear()
    # Its held messages come back within about two of the circuit's open times (≤ 40 s here) and the probe
    # among them closes it.
    wait_for(lambda: ledger_keys(stack.local, "globex") == globex_keys, 240, "globex after the fix")
    wait_for(lambda: queue_empty(stack.local), 30, "the queue to drain")
    assert delivered(stack.local, "globex") == expected(manifest, "globex")
    assert delivered(stack.local, "acme") == expected(manifest, "acme")
    assert queue_counts(stack.local, stack.local.dlq_url) == (0, 0)
    assert c.terminate()[0] == 0


def test_consumer_sigkill_while_puts_are_slow_resends_exactly_the_unrecorded_objects(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    set_queue(stack, VisibilityTimeout="3")
    ledger_table = stack.local.names.ledger_table
    stack.proxy.add(Rule(Delay(0.3), service="logs", operation=PUT))
    # Ledger writes are held long enough that the kill lands while they are held (the proxy then drops
    # them: their client is gone). With a short hold, a write released between the check below and the
    # kill would still record its object, and the run would have nothing unrecorded to resend.
    stack.proxy.add(Rule(Delay(4.0), service="dynamodb", operation="UpdateItem", body_contains=ledger_table))
    first = consumer("--workers", "3")
    manifest = write(stack.local, applications=("payment-service",), pods_per_app=3, objects_per_pod=3, seed=32)
    keys = set(manifest.keys)

    wait_for(lambda: len(ledger_keys(stack.local, "acme")) >= 2, 60, "objects done")
    wait_for(lambda: accepted_objects(stack, manifest) - ledger_keys(stack.local, "acme"), 30, "an unrecorded object")
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    wait_for(lambda: stack.proxy.inflight() == 0, 30, "requests held by the proxy to settle")
    settled = ledger_keys(stack.local, "acme")
    sent_unrecorded = accepted_objects(stack, manifest) - settled
    assert settled < keys and sent_unrecorded

    stack.proxy.clear()
    consumer("--workers", "3")  # the messages come back after the 3 s visibility timeout
    wait_for(lambda: ledger_keys(stack.local, "acme") == keys, 60, "every object in the ledger")
    wait_for(lambda: queue_empty(stack.local), 30, "the queue to drain")
    got = delivered(stack.local, "acme")
    assert not expected(manifest, "acme") - got, "events lost"
    dups = duplicated_keys(manifest, got, "acme")
    assert set(dups) == sent_unrecorded and set(dups.values()) == {2}
    assert len(dups) <= 3  # at most one per worker
    assert queue_counts(stack.local, stack.local.dlq_url) == (0, 0)


def test_consumer_sigterm_while_puts_are_slow_finishes_in_flight_work_exactly_once(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    set_queue(stack, VisibilityTimeout="30")
    stack.proxy.add(Rule(Delay(0.5), service="logs", operation=PUT))
    first = consumer("--workers", "2", "--drain-timeout", "20")
    manifest = write(stack.local, applications=("payment-service",), pods_per_app=2, objects_per_pod=4, seed=33)
    keys = set(manifest.keys)
    wait_for(lambda: stack.proxy.inflight() >= 1 and ledger_keys(stack.local, "acme"), 60, "slow puts in flight")
    assert first.terminate(timeout=60)[0] == 0
    drained = next(r for r in first.logs() if r.get("msg") == "drained")
    assert drained["released"] == 0  # in-flight objects were finished, not abandoned
    done = ledger_keys(stack.local, "acme")
    assert done < keys
    visible, invisible = queue_counts(stack.local, stack.local.queue_url)
    assert invisible == 0 and visible == len(keys - done)  # the rest is waiting for the next consumer

    stack.proxy.clear()
    consumer("--workers", "2")
    wait_for(lambda: ledger_keys(stack.local, "acme") == keys, 60, "every object")
    assert delivered(stack.local, "acme") == expected(manifest, "acme")  # exactly once: a clean stop
