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
    release_received,
    set_queue,
    wait_for,
    watch_receives,
    write,
)

from devstack.faults import Drop, Error, Hold, Rule

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PUT = "PutLogEvents"


def test_consumer_retries_throttling_and_5xx_refreshes_expiry_and_holds_back_only_the_denied_tenant(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    # The test decides when the customer fixes their side: no message may reach the DLQ before, however
    # slowly a loaded machine gets there (SQS's highest maxReceiveCount).
    allow_receives(stack, 1000)
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
    # The proxy counts a denial before the consumer logs what it did about it: wait for the log, too.
    left = wait_for(
        lambda: [r for r in c.logs() if r.get("msg") == "message left for redelivery"], 30, "a message left"
    )
    assert all("AccessDenied" in r["reasons"][0] and "globex" in r["reasons"][0] for r in left)
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
    """Killed while every worker has delivered an object and waits on its ledger write: exactly those
    objects are sent again by the next consumer, the ones recorded before are not.

    Decided by events, not by how long things take: the proxy holds every ledger write until the test lets
    it go, so at the kill the test knows which objects are recorded (the two it let through) and which were
    accepted by CloudWatch and are not (one per worker, held). The visibility timeout is long, so no message
    comes back while a slow (loaded) consumer still holds it; after the kill the test makes the messages the
    dead consumer held visible itself, as SQS would after the timeout."""
    set_queue(stack, VisibilityTimeout="300")
    watch_receives(stack)
    workers = 3
    hold = Hold()
    ledger_table = stack.local.names.ledger_table
    stack.proxy.add(Rule(hold, service="dynamodb", operation="UpdateItem", body_contains=ledger_table))
    first = consumer("--workers", str(workers))
    manifest = write(stack.local, applications=("payment-service",), pods_per_app=3, objects_per_pod=3, seed=32)
    keys = set(manifest.keys)

    hold.wait_held(workers)  # each worker has delivered an object and waits on its ledger write
    hold.release(2)

    def two_recorded() -> set[str]:
        got = ledger_keys(stack.local, "acme")
        assert len(got) <= 2, "a ledger write went through that was not released"
        return got if len(got) == 2 else set()

    recorded = wait_for(two_recorded, 60, "the two released objects in the ledger")
    hold.wait_held(workers)  # the two released workers took the next objects, delivered them, and wait
    held_unrecorded = accepted_objects(stack, manifest) - recorded
    assert len(held_unrecorded) == workers
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    hold.open()  # the held writes find their client gone: the proxy drops them
    wait_for(lambda: stack.proxy.inflight() == 0, 30, "requests held by the proxy to settle")
    settled = ledger_keys(stack.local, "acme")
    sent_unrecorded = accepted_objects(stack, manifest) - settled
    assert settled == recorded and sent_unrecorded == held_unrecorded

    stack.proxy.clear()
    assert release_received(stack) == workers  # a worker receives only when it is free: one message each
    consumer("--workers", str(workers))
    wait_for(lambda: ledger_keys(stack.local, "acme") == keys, 60, "every object in the ledger")
    wait_for(lambda: queue_empty(stack.local), 30, "the queue to drain")
    got = delivered(stack.local, "acme")
    assert not expected(manifest, "acme") - got, "events lost"
    dups = duplicated_keys(manifest, got, "acme")
    assert set(dups) == sent_unrecorded and set(dups.values()) == {2}
    assert queue_counts(stack.local, stack.local.dlq_url) == (0, 0)


def test_consumer_sigterm_while_puts_are_slow_finishes_in_flight_work_exactly_once(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    """SIGTERM while every worker waits on a CloudWatch put: the drain finishes those objects and hands the
    rest back. The proxy holds the puts until the consumer says it is draining, so the stop lands mid-put
    however slow the machine is."""
    set_queue(stack, VisibilityTimeout="300")
    workers = 2
    hold = Hold()
    stack.proxy.add(Rule(hold, service="logs", operation=PUT))
    # The drain deadline is far from what finishing two objects takes: it is not what this test is about.
    first = consumer("--workers", str(workers), "--drain-timeout", "120")
    manifest = write(stack.local, applications=("payment-service",), pods_per_app=2, objects_per_pod=4, seed=33)
    keys = set(manifest.keys)
    hold.wait_held(workers)
    assert ledger_keys(stack.local, "acme") == set()
    first.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: any(r.get("msg") == "draining" for r in first.logs()), 60, "the consumer to start draining")
    hold.open()
    assert first.terminate(timeout=120)[0] == 0
    drained = next(r for r in first.logs() if r.get("msg") == "drained")
    assert drained["released"] == 0  # in-flight objects were finished, not abandoned
    done = ledger_keys(stack.local, "acme")
    assert len(done) == workers  # exactly the objects in flight at the stop
    visible, invisible = queue_counts(stack.local, stack.local.queue_url)
    assert invisible == 0 and visible == len(keys - done)  # the rest is waiting for the next consumer

    stack.proxy.clear()
    consumer("--workers", str(workers))
    wait_for(lambda: ledger_keys(stack.local, "acme") == keys, 60, "every object")
    assert delivered(stack.local, "acme") == expected(manifest, "acme")  # exactly once: a clean stop
