"""CloudWatch and STS faults injected on the wire, against the replay worker's body (UnitRunner: 8 pod
threads, one sink, one credential broker) and the Deliverer, in this process, through the fault proxy.

Each test checks what arrived in the tenants' own CloudWatch accounts, the ledger, and what the proxy saw.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import unquote_plus

import orjson
import pytest
from fault_helpers import (
    Events,
    FaultStack,
    delivered,
    expected,
    ledger_keys,
    min_calls,
    objects_of,
    write,
)

from devstack import generator as gen
from devstack.faults import Call, Drop, Error, Hook, HttpStatus, Request, Rule
from pipeline.credentials import CredentialBroker
from pipeline.delivery.engine import Deliverer
from pipeline.delivery.results import Status
from pipeline.delivery.routing import ObjectRef
from pipeline.ledger import Ledger
from pipeline.replay.plan import ObjectSpec, WorkUnit
from pipeline.replay.workers import UnitRunner
from pipeline.sinks.cloudwatch.sink import CloudWatchSink, RetryPolicy
from pipeline.tenants import DeliveryType, TenantDirectory

pytestmark = pytest.mark.integration

PUT = "PutLogEvents"


def unit_of(stack: FaultStack, manifest: gen.Manifest) -> WorkUnit:
    """Every object of the manifest as one work unit, in key order (what the planner does per pod)."""
    s3 = stack.local.client("s3")
    objs = []
    for o in sorted(manifest.objects, key=lambda o: o.key):
        head = s3.head_object(Bucket=stack.bucket, Key=o.key)
        objs.append(ObjectSpec(o.key, o.size, o.etag.strip('"'), head["LastModified"].timestamp()))
    return WorkUnit(1, tuple(objs), sum(o.size for o in objs))


def run_unit(stack: FaultStack, unit: WorkUnit) -> dict[str, dict[str, Any]]:
    runner = UnitRunner(stack.local.settings, "cloudwatch", None)
    try:
        return {r.key: r.to_dict() for r in runner.run(unit)}
    finally:
        runner.close()


def put_events(call: Call) -> Events:
    doc = orjson.loads(call.body)
    return Counter((doc["logStreamName"], e["timestamp"], e["message"]) for e in doc["logEvents"])


def puts_for(stack: FaultStack, group: str) -> list[Call]:
    return [c for c in stack.proxy.calls("logs", PUT) if f'"{group}"' in c.body.decode()]


def assumes_of(stack: FaultStack, role_arn: str) -> list[Call]:
    return [c for c in stack.proxy.calls("sts", "AssumeRole") if role_arn in _form(c)]


def _form(c: Call) -> str:
    return unquote_plus(c.body.decode())


def deliverer(stack: FaultStack, retry: RetryPolicy | None = None) -> Deliverer:
    s = stack.local.settings
    return Deliverer(
        TenantDirectory(s.tenant_table),
        {DeliveryType.CLOUDWATCH: CloudWatchSink(CredentialBroker(s.central_role_arn), retry=retry)},
        Ledger(s.ledger_table),
    )


def ref(stack: FaultStack, o: gen.ManifestObject) -> ObjectRef:
    return ObjectRef(stack.bucket, o.key, o.etag, o.size)


# --------------------------------------------------------------------------------------------------------


def test_throttling_and_5xx_are_retried_with_backoff_and_every_event_arrives_once(stack: FaultStack) -> None:
    manifest = write(
        stack.local, applications=("payment-service", "frontend", "checkout"), pods_per_app=6, objects_per_pod=2,
        events_per_object=40, seed=1,
    )  # fmt: skip
    proxy = stack.proxy
    rules = [
        proxy.add(Rule(Error.throttling(), service="logs", operation=PUT, probability=0.2)),
        proxy.add(Rule(Error.unavailable(), service="logs", operation=PUT, probability=0.05)),
        proxy.add(Rule(HttpStatus(502), service="logs", operation=PUT, probability=0.03)),
        proxy.add(Rule(Error.internal(500), service="logs", operation=PUT, probability=0.03)),
        proxy.add(Rule(Drop(), service="logs", operation=PUT, probability=0.03)),
    ]
    results = run_unit(stack, unit_of(stack, manifest))

    assert {r["status"] for r in results.values()} == {"delivered"}, [r["reason"] for r in results.values()]
    assert delivered(stack.local, "acme") == expected(manifest, "acme")  # each event once, none lost
    assert ledger_keys(stack.local, "acme") == set(manifest.keys)

    calls = stack.proxy.calls("logs", PUT)
    ok = [c for c in calls if c.status == 200]
    injected = sum(r.stats.injected for r in rules)
    streams = stack.proxy.calls("logs", "CreateLogStream")
    # Batches filled across each pod's objects, each accepted exactly once: the fewest calls possible.
    assert len(ok) == min_calls(manifest, "acme") < len(manifest.objects)
    # Every other attempt failed because of an injected fault, or was the first put to a new stream
    # (ResourceNotFoundException, then CreateLogStream: that is create-on-missing, not a retry).
    assert injected > 0
    assert len(calls) == len(ok) + injected + len(streams)
    # Bounded: with 31% of attempts failing, attempts per batch average 1/(1-0.31) ≈ 1.45.
    rate = injected / len(ok)
    assert rate < 1.0, f"{injected} retries for {len(ok)} batches"
    # Backoff: the time between an injected failure and the next attempt at the same batch. Full jitter
    # draws the first wait from U(0, 0.1 s) (mean 0.05 s); a sink that retried at once would sum to ~0.
    gaps = []
    for i, c in enumerate(calls):
        if c.injected:
            nxt = next((x for x in calls[i + 1 :] if x.body == c.body), None)
            assert nxt is not None, "a failed batch was never retried"
            gaps.append(nxt.at - c.at)
    assert sum(gaps) > 0.25 * 0.05 * len(gaps), gaps
    # The results count what the wire saw: every put, accepted or refused, and every create.
    assert sum(r["requests"] for r in results.values()) == len(ok)
    assert sum(r["requests_refused"] for r in results.values()) == len(calls) - len(ok)
    creates = len(streams) + len(stack.proxy.calls("logs", "CreateLogGroup"))
    assert sum(r["creates"] for r in results.values()) == creates
    print(f"retry rate: {injected} injected faults over {len(ok)} batches ({rate:.2f} retries per batch)")


def test_retries_stop_after_the_policy_and_the_object_stays_undelivered(stack: FaultStack) -> None:
    manifest = write(stack.local, tenants=("acme", "globex"), objects_per_pod=1, seed=2)
    rule = stack.proxy.add(
        Rule(Error.throttling(), service="logs", operation=PUT, body_contains='"/logs/globex"')
    )  # always
    d = deliverer(stack, RetryPolicy(attempts=4, base_s=0.01, cap_s=0.05))
    results = {o.key: d.deliver(ref(stack, o)) for o in manifest.objects}

    globex = [results[k] for k in objects_of(manifest, "globex")]
    assert [(r.status, r.recoverable) for r in globex] == [(Status.FAILED, True)]
    assert "still failing after 4 attempts: ThrottlingException" in globex[0].reason
    assert len(puts_for(stack, "/logs/globex")) == 4 == rule.stats.injected  # bounded: exactly the policy
    assert ledger_keys(stack.local, "globex") == set()  # so the next run (or redelivery) sends it
    assert delivered(stack.local, "acme") == expected(manifest, "acme")


def test_expired_credentials_are_refreshed_without_a_failure(stack: FaultStack) -> None:
    manifest = write(stack.local, pods_per_app=2, objects_per_pod=2, seed=3)
    acme = stack.local.tenant("acme")
    pods = sorted({k.split("/")[3] for k in manifest.keys})
    # The session expires twice during the run: at the first put of each pod's stream.
    rules = [
        stack.proxy.add(Rule(Error.expired_token(), service="logs", operation=PUT, body_contains=pod, first=1))
        for pod in pods
    ]
    d = deliverer(stack)
    results = [d.deliver(ref(stack, o)) for o in sorted(manifest.objects, key=lambda o: o.key)]

    assert [r.status for r in results] == [Status.DELIVERED] * 4, [r.reason for r in results]
    assert [r.stats.injected for r in rules] == [1, 1]
    assert delivered(stack.local, "acme") == expected(manifest, "acme")
    # One AssumeRole for the tenant at first, one more per expired token; the central session stays cached.
    assert len(assumes_of(stack, acme.role_arn)) == 3
    assert len(assumes_of(stack, stack.local.central_role_arn)) == 1
    # The puts after each refresh are signed with the new credentials, all issued for the tenant's role.
    keys = [c.access_key for c in puts_for(stack, acme.log_group)]
    assert len(set(keys)) == 3 and all(stack.proxy.role_of(k) == acme.role_arn for k in keys)


def test_credentials_that_stay_expired_fail_the_object_recoverably_after_one_refresh(stack: FaultStack) -> None:
    manifest = write(stack.local, objects_per_pod=1, seed=4)
    acme = stack.local.tenant("acme")
    stack.proxy.add(Rule(Error.expired_token(), service="logs", operation=PUT, body_contains='"/logs/acme"'))
    result = deliverer(stack).deliver(ref(stack, manifest.objects[0]))
    assert (result.status, result.recoverable) == (Status.FAILED, True)
    assert "ExpiredTokenException" in result.reason
    assert len(puts_for(stack, acme.log_group)) == 2  # one refresh, not a loop
    assert len(assumes_of(stack, acme.role_arn)) == 2
    assert ledger_keys(stack.local, "acme") == set()


def test_sts_failures_are_retried_and_delivery_goes_on(stack: FaultStack) -> None:
    manifest = write(stack.local, objects_per_pod=2, seed=5)
    acme = stack.local.tenant("acme")
    stack.proxy.add(Rule(Error.internal(500), service="sts", operation="AssumeRole", first=2))
    stack.proxy.add(Rule(Drop(), service="sts", operation="AssumeRole", first=1))
    d = deliverer(stack)
    results = [d.deliver(ref(stack, o)) for o in manifest.objects]
    assert [r.status for r in results] == [Status.DELIVERED] * 2, [r.reason for r in results]
    assert delivered(stack.local, "acme") == expected(manifest, "acme")
    assumes = stack.proxy.calls("sts", "AssumeRole")
    assert [c.status for c in assumes] == [500, 500, 0, 200, 200]  # central (after 3 failures), then acme
    assert acme.role_arn in _form(assumes[-1])


def test_sts_outage_longer_than_the_retries_fails_objects_recoverably(stack: FaultStack) -> None:
    manifest = write(stack.local, objects_per_pod=2, seed=6)
    stack.proxy.add(Rule(Error.unavailable(), service="sts", operation="AssumeRole"))
    d = deliverer(stack)
    results = [d.deliver(ref(stack, o)) for o in manifest.objects]
    assert [(r.status, r.recoverable) for r in results] == [(Status.FAILED, True)] * 2
    assert all("cannot assume" in r.reason and "ServiceUnavailable" in r.reason for r in results)
    assert ledger_keys(stack.local, "acme") == set()
    assert stack.proxy.calls("logs", PUT) == []


@pytest.mark.parametrize(
    "where",
    ["sts-assume-role", "logs-put"],
)
def test_one_tenants_access_denied_does_not_slow_or_fail_the_others(stack: FaultStack, where: str) -> None:
    manifest = write(
        stack.local, tenants=("acme", "globex"), applications=("payment-service", "frontend"), pods_per_app=2,
        objects_per_pod=2, seed=7,
    )  # fmt: skip
    globex = stack.local.tenant("globex")
    if where == "sts-assume-role":
        rule = Rule(Error.access_denied(), service="sts", operation="AssumeRole", body_contains=globex.role_arn)
    else:
        rule = Rule(
            Error.access_denied("AccessDeniedException"), service="logs", operation=PUT, body_contains='"/logs/globex"'
        )
    stack.proxy.add(rule)
    unit = unit_of(stack, manifest)
    results = run_unit(stack, unit)

    globex_keys, acme_keys = objects_of(manifest, "globex"), objects_of(manifest, "acme")
    for k in globex_keys:
        r = results[k]
        assert (r["status"], r["recoverable"]) == ("failed", True), r
        assert "AccessDenied" in r["reason"] and "globex" in r["reason"]
    assert {results[k]["status"] for k in acme_keys} == {"delivered"}
    assert delivered(stack.local, "acme") == expected(manifest, "acme")
    assert ledger_keys(stack.local, "globex") == set()  # undelivered, so a later run picks them up
    # Not slowed: AccessDenied is not retried, so no backoff is spent on it: one attempt per batch.
    assert rule.stats.injected == min_calls(manifest, "globex")

    # The customer fixes the role: the same unit again delivers globex and skips acme (ledger).
    stack.proxy.clear()
    again = run_unit(stack, unit)
    assert {again[k]["status"] for k in globex_keys} == {"delivered"}
    assert {again[k]["reason"] for k in acme_keys} == {"already delivered (ledger)"}
    assert delivered(stack.local, "globex") == expected(manifest, "globex")
    assert delivered(stack.local, "acme") == expected(manifest, "acme")


def test_log_group_deleted_mid_run_is_recreated_and_the_rest_is_delivered(stack: FaultStack) -> None:
    manifest = write(stack.local, objects_per_pod=6, seed=8)
    acme = stack.local.tenant("acme")
    tenant_logs = stack.local.tenant_logs("acme")
    deleted: list[bool] = []

    def delete_before_the_third_object(req: Request) -> None:
        # The customer deletes the group just before the third object's put.
        if not deleted and len([c for c in puts_for(stack, acme.log_group) if c.status == 200]) == 2:
            tenant_logs.delete_log_group(logGroupName=acme.log_group)
            deleted.append(True)

    hook = Hook(delete_before_the_third_object)
    stack.proxy.add(Rule(hook, service="logs", operation=PUT, body_contains='"/logs/acme"'))
    d = deliverer(stack)
    results = [d.deliver(ref(stack, o)) for o in sorted(manifest.objects, key=lambda o: o.key)]

    assert [r.status for r in results] == [Status.DELIVERED] * 6, [r.reason for r in results]
    assert ledger_keys(stack.local, "acme") == set(manifest.keys)
    puts = puts_for(stack, acme.log_group)
    # A new stream's first put, two objects, the put that found the group gone, then the rest.
    assert [c.status for c in puts] == [400, 200, 200, 400, 200, 200, 200, 200]
    # What the group holds now: exactly what was put after it was recreated, the third object included.
    after = Counter[tuple[str, int, str]]()
    for c in puts[4:]:
        after.update(put_events(c))
    assert delivered(stack.local, "acme") == after
    third_onwards = sorted(manifest.keys)[2:]
    assert after == expected(manifest, "acme", third_onwards)
    assert len(stack.proxy.calls("logs", "CreateLogGroup")) == 1
