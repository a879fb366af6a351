"""Several deliveries per tenant (CloudWatch and S3) under faults injected on the wire (issue 12).

The sample tenants: `umbrella` has the delivery `cloudwatch` (payment-service only) and `s3-archive` (every
application, into its bucket in its own account); `hooli` has only the S3 delivery `archive`. What is
checked is what the proxy saw on the wire (each PutObject's bucket and key, each PutLogEvents), what the
tenants' own buckets and log groups hold, read back in their own accounts, and the ledger's record per
delivery.

- S3 `SlowDown`, 503 with an S3 error body and a bare 503 on PutObject are retried with backoff, bounded,
  and every object is stored once, byte for byte.
- One delivery's `AccessDenied` leaves the tenant's other delivery fully delivered; on the consumer path the
  message comes back, and after the fix only the missing delivery is sent.
- A consumer killed between the two deliveries of one object sends only the unrecorded one on restart.
"""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fault_helpers import (
    ConsumerProcess,
    FaultStack,
    accepted_objects,
    allow_receives,
    delivered,
    duplicated_keys,
    expected,
    kill_replay_mid_run,
    ledger_records,
    objects_of,
    queue_counts,
    queue_empty,
    release_received,
    run_replay,
    s3_path,
    set_queue,
    wait_for,
    watch_receives,
    write,
)

from devstack import generator as gen
from devstack.faults import Call, Error, Hold, HttpStatus, Rule
from devstack.readback import read_bucket
from pipeline.delivery.engine import Deliverer, build_deliverer
from pipeline.delivery.results import LEDGER_SKIP, ObjectResult, Status
from pipeline.delivery.routing import ObjectRef

pytestmark = pytest.mark.integration

PUT_OBJECT = "PutObject"
PUT_EVENTS = "PutLogEvents"
APPS = ("payment-service", "frontend")
HOT = "payment-service"  # umbrella's CloudWatch delivery takes only this application

SLOW_DOWN = Error("SlowDown", 503, "Please reduce your request rate.", sender_fault=False)
UNAVAILABLE = Error("ServiceUnavailable", 503, "Service Unavailable", sender_fault=False)
BARE_503 = HttpStatus(503, b"<html><body>503 Service Unavailable</body></html>")


def hot_keys(manifest: gen.Manifest, tenant: str) -> set[str]:
    """The tenant's objects its CloudWatch delivery takes (umbrella: payment-service only)."""
    return {k for k in objects_of(manifest, tenant) if k.split("/")[2] == HOT}


def paths_of(stack: FaultStack, manifest: gen.Manifest, tenant: str) -> dict[str, str]:
    """{source key: /bucket/key in the tenant's bucket} for the tenant's objects."""
    t = stack.local.tenant(tenant)
    return {k: s3_path(t, k) for k in objects_of(manifest, tenant)}


def stored(calls: list[Call]) -> Counter[str]:
    """How many PutObject calls S3 accepted, per /bucket/key."""
    return Counter(c.path for c in calls if c.operation == PUT_OBJECT and c.status == 200)


def group_puts(calls: list[Call], group: str) -> list[Call]:
    return [c for c in calls if c.operation == PUT_EVENTS and orjson.loads(c.body)["logGroupName"] == group]


def events_on_the_wire(calls: list[Call]) -> Counter[tuple[str, int, str]]:
    """Every event CloudWatch accepted in these PutLogEvents calls, as (stream, timestamp, message)."""
    out: Counter[tuple[str, int, str]] = Counter()
    for c in calls:
        if c.status == 200:
            doc = orjson.loads(c.body)
            out.update((doc["logStreamName"], e["timestamp"], e["message"]) for e in doc["logEvents"])
    return out


def assert_buckets_hold_the_sources(stack: FaultStack, manifest: gen.Manifest, *tenants: str) -> None:
    """Each tenant's bucket, read in its own account, holds exactly its objects, byte for byte, traceable."""
    central = stack.local.client("s3")
    for tenant in tenants:
        t = stack.local.tenant(tenant)
        got = read_bucket(stack.local.tenant_s3(tenant), t.bucket)
        paths = paths_of(stack, manifest, tenant)
        assert {f"/{t.bucket}/{k}" for k in got} == set(paths.values()), tenant
        for source_key, path in paths.items():
            obj = got[path.split("/", 2)[2]]
            source = central.get_object(Bucket=stack.bucket, Key=source_key)
            assert obj["body"] == source["Body"].read(), source_key
            assert obj["metadata"]["source-key"] == source_key
            assert obj["metadata"]["source-etag"] == source["ETag"].strip('"')


def deliver_all(d: Deliverer, stack: FaultStack, manifest: gen.Manifest) -> dict[str, ObjectResult]:
    """One object after another: the proxy's seeded faults then fall on requests in a fixed order."""
    return {o.key: d.deliver(ObjectRef(stack.bucket, o.key, o.etag, o.size)) for o in manifest.objects}


# --------------------------------------------------------------------------------------------------------
# Deliverer, in this process, through the proxy


def test_s3_slowdown_and_503_are_retried_with_backoff_and_every_object_is_stored_once(stack: FaultStack) -> None:
    manifest = write(
        stack.local, tenants=("umbrella", "hooli"), applications=APPS, pods_per_app=2, objects_per_pod=2,
        events_per_object=20, seed=51,
    )  # fmt: skip
    paths = paths_of(stack, manifest, "umbrella") | paths_of(stack, manifest, "hooli")
    first, second, third = (paths[k] for k in sorted(paths)[:3])
    proxy = stack.proxy
    put = {"service": "s3", "operation": PUT_OBJECT}
    # Each kind of answer for sure (one object three SlowDowns in a row), then seeded background noise.
    sure = [
        proxy.add(Rule(SLOW_DOWN, **put, body_contains=first, first=3)),
        proxy.add(Rule(UNAVAILABLE, **put, body_contains=second, first=1)),
        proxy.add(Rule(BARE_503, **put, body_contains=third, first=1)),
    ]
    noise = [
        proxy.add(Rule(SLOW_DOWN, **put, probability=0.2)),
        proxy.add(Rule(UNAVAILABLE, **put, probability=0.08)),
        proxy.add(Rule(BARE_503, **put, probability=0.04)),
    ]
    # 10 attempts: with ~30% of attempts failing, running out is a ~1e-4 event even for the burst object.
    d = build_deliverer(stack.local.settings, put_attempts=10)
    results = deliver_all(d, stack, manifest)

    assert {r.status for r in results.values()} == {Status.DELIVERED}, [r.reason for r in results.values()]
    assert [r.stats.injected for r in sure] == [3, 1, 1]
    injected = sum(r.stats.injected for r in sure + noise)
    calls = proxy.calls("s3", PUT_OBJECT)
    # Every object stored by exactly one accepted PutObject, and every other attempt was an injected fault:
    # bounded retries, no retry storm, nothing sent twice once it was stored.
    assert stored(calls) == Counter(paths.values())
    assert len(calls) == len(paths) + injected
    assert all(c.status == 503 for c in calls if c.injected)
    s3_results = [dr for r in results.values() for dr in r.deliveries if dr.type == "s3"]
    assert sum(dr.retries for dr in s3_results) == injected  # the sink counts what it retried
    burst = next(dr for k, r in results.items() if paths[k] == first for dr in r.deliveries if dr.type == "s3")
    assert burst.retries >= 3 and burst.status is Status.DELIVERED
    # Backoff: the time between a failed attempt and the next one at the same key. Full jitter draws the
    # first wait from U(0, 0.1 s); a sink that retried at once would sum to about nothing.
    gaps = []
    for i, c in enumerate(calls):
        if c.injected:
            nxt = next(x for x in calls[i + 1 :] if x.path == c.path)
            gaps.append(nxt.at - c.at)
    assert len(gaps) == injected and sum(gaps) > 0.25 * 0.05 * len(gaps), gaps
    print(f"S3 retry rate: {injected} injected over {len(paths)} objects ({injected / len(paths):.2f})")

    # What the tenants hold: every object once, byte for byte; CloudWatch untouched by the S3 faults.
    assert_buckets_hold_the_sources(stack, manifest, "umbrella", "hooli")
    assert delivered(stack.local, "umbrella") == expected(manifest, "umbrella", hot_keys(manifest, "umbrella"))
    assert ledger_records(stack.local, "umbrella", "s3-archive") == objects_of(manifest, "umbrella")
    assert ledger_records(stack.local, "hooli", "archive") == objects_of(manifest, "hooli")

    # Everything is in the ledger: the same objects again put nothing anywhere.
    proxy.clear()
    before = len(proxy.calls())
    again = deliver_all(d, stack, manifest)
    assert {r.status for r in again.values()} == {Status.SKIPPED}
    assert not [c for c in proxy.calls()[before:] if c.operation in (PUT_OBJECT, PUT_EVENTS)]


def test_one_deliverys_access_denied_leaves_the_other_delivered_and_a_retry_sends_only_the_missing_one(
    stack: FaultStack,
) -> None:
    manifest = write(
        stack.local, tenants=("umbrella", "hooli"), applications=APPS, pods_per_app=1, objects_per_pod=3, seed=52
    )
    umbrella = stack.local.tenant("umbrella")
    umbrella_keys, hot = objects_of(manifest, "umbrella"), hot_keys(manifest, "umbrella")
    denied = stack.proxy.add(
        Rule(Error.access_denied(), service="s3", operation=PUT_OBJECT, body_contains=f"/{umbrella.bucket}/")
    )
    d = build_deliverer(stack.local.settings)
    results = deliver_all(d, stack, manifest)

    for k in umbrella_keys:
        r = results[k]
        by_id = {x.delivery_id: x for x in r.deliveries}
        s3 = by_id["s3-archive"]
        assert (s3.status, s3.recoverable) == (Status.FAILED, True), s3
        # The reason says what the customer has to fix: which bucket, which role, which permission.
        assert "AccessDenied" in s3.reason and umbrella.bucket in s3.reason and umbrella.role_arn in s3.reason
        assert "s3:PutObject" in s3.reason
        assert by_id["cloudwatch"].status is (Status.DELIVERED if k in hot else Status.SKIPPED)
        assert (r.status, r.recoverable, r.acknowledged) == (Status.FAILED, True, False)
    assert {results[k].status for k in objects_of(manifest, "hooli")} == {Status.DELIVERED}
    assert denied.stats.injected == len(umbrella_keys)  # a refusal is not retried: one attempt per object
    assert delivered(stack.local, "umbrella") == expected(manifest, "umbrella", hot)
    assert ledger_records(stack.local, "umbrella", "cloudwatch") == hot
    assert ledger_records(stack.local, "umbrella", "s3-archive") == set()

    # The customer fixes the bucket policy: the same objects again send exactly the missing delivery.
    stack.proxy.clear()
    before = len(stack.proxy.calls())
    again = deliver_all(d, stack, manifest)
    after = stack.proxy.calls()[before:]
    assert not [c for c in after if c.operation == PUT_EVENTS]
    assert stored(after) == Counter(paths_of(stack, manifest, "umbrella").values())
    for k in hot:
        assert {x.delivery_id: (x.status, x.reason) for x in again[k].deliveries} == {
            "cloudwatch": (Status.SKIPPED, LEDGER_SKIP),
            "s3-archive": (Status.DELIVERED, ""),
        }
    assert delivered(stack.local, "umbrella") == expected(manifest, "umbrella", hot)  # still once each
    assert_buckets_hold_the_sources(stack, manifest, "umbrella", "hooli")


# --------------------------------------------------------------------------------------------------------
# The SQS consumer (a real subprocess), objects reaching it through S3 → SNS → SQS


def object_logs(c: ConsumerProcess, key: str) -> list[dict[str, object]]:
    return [r for r in c.logs() if r.get("object_key") == key and "deliveries" in r]


def delivery_outcomes(record: dict[str, object]) -> dict[str, tuple[str, str]]:
    return {d["delivery_id"]: (d["status"], d["reason"]) for d in record["deliveries"]}  # type: ignore[attr-defined]


@pytest.mark.slow
def test_consumer_denied_bucket_holds_the_message_back_and_after_the_fix_sends_only_the_s3_delivery(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    # The test decides when the customer fixes their side: no message may reach the DLQ before, however
    # slowly a loaded machine gets there (SQS's highest maxReceiveCount).
    allow_receives(stack, 1000)
    umbrella = stack.local.tenant("umbrella")
    proxy = stack.proxy
    proxy.add(Rule(Error.access_denied(), service="s3", operation=PUT_OBJECT, body_contains=f"/{umbrella.bucket}/"))
    # The denied bucket opens the circuit of umbrella's S3 delivery (pipeline/circuits.py): its messages come
    # back after the circuit's wait, with a 1 s back-off base instead of production's 30 s.
    c = consumer("--workers", "4", "--retry-delay", "1", "--backoff-delay", "1")
    manifest = write(
        stack.local, tenants=("umbrella", "hooli"), applications=APPS, pods_per_app=2, objects_per_pod=2, seed=53
    )
    umbrella_keys, hot, hooli_keys = (
        objects_of(manifest, "umbrella"),
        hot_keys(manifest, "umbrella"),
        objects_of(manifest, "hooli"),
    )
    umbrella_paths = paths_of(stack, manifest, "umbrella")

    def left() -> list[str]:
        """The reason of every message the consumer left for redelivery."""
        return [r["reasons"][0] for r in c.logs() if r.get("msg") == "message left for redelivery"]

    def came_back_twice() -> bool:
        return all(len(object_logs(c, k)) >= 2 for k in umbrella_keys)

    wait_for(lambda: ledger_records(stack.local, "hooli", "archive") == hooli_keys, 60, "every hooli object")
    wait_for(lambda: ledger_records(stack.local, "umbrella", "cloudwatch") == hot, 60, "umbrella's CloudWatch")
    # Every umbrella message came back at least once and was tried again: the S3 delivery is still missing.
    wait_for(came_back_twice, 60, "umbrella's messages to come back")

    assert ledger_records(stack.local, "umbrella", "s3-archive") == set()
    assert read_bucket(stack.local.tenant_s3("umbrella"), umbrella.bucket) == {}
    visible, invisible = queue_counts(stack.local, stack.local.queue_url)
    assert visible + invisible == len(umbrella_keys)  # hooli's are deleted; umbrella's are not acknowledged
    # Each says what the customer has to fix (a held delivery names the failure that opened its circuit),
    # and only umbrella's S3 delivery was ever held back.
    assert all(
        r.startswith(("s3-archive: AccessDenied", "s3-archive: held: ")) and umbrella.role_arn in r for r in left()
    )
    denied = [x.path for x in proxy.calls("s3", PUT_OBJECT) if x.injected]
    assert denied and set(denied) <= set(umbrella_paths.values())
    # Once its circuit opened, umbrella's S3 objects were held, not tried again on every receive.
    receives = sum(len(object_logs(c, k)) for k in umbrella_keys)
    assert len(denied) < receives
    # The redeliveries did not send CloudWatch again: on the wire, each umbrella event was accepted once.
    assert events_on_the_wire(group_puts(proxy.calls("logs", PUT_EVENTS), umbrella.log_group)) == expected(
        manifest, "umbrella", hot
    )
    for k in hot:
        outcomes = [delivery_outcomes(r) for r in object_logs(c, k)]
        assert len(outcomes) >= 2
        assert outcomes[0]["cloudwatch"][0] == "delivered" and outcomes[0]["s3-archive"][0] == "failed"
        assert all(o["cloudwatch"] == ("skipped", LEDGER_SKIP) for o in outcomes[1:])

    # The customer fixes the bucket policy: the messages come back once more and only S3 is sent.
    fixed_at = len(proxy.calls())
    proxy.clear()
    # The held messages come back within about two of the circuit's open times, the probe among them closes it.
    wait_for(lambda: ledger_records(stack.local, "umbrella", "s3-archive") == umbrella_keys, 240, "umbrella's S3")
    wait_for(lambda: queue_empty(stack.local), 30, "the queue to drain")
    after = proxy.calls()[fixed_at:]
    assert not group_puts(after, umbrella.log_group), "CloudWatch was sent again after the fix"
    assert stored(after) == Counter(umbrella_paths.values())  # each missing object once, nothing else
    assert delivered(stack.local, "umbrella") == expected(manifest, "umbrella", hot)  # each event once
    assert_buckets_hold_the_sources(stack, manifest, "umbrella", "hooli")
    assert queue_counts(stack.local, stack.local.dlq_url) == (0, 0)
    assert c.terminate()[0] == 0


@pytest.mark.slow
def test_consumer_killed_between_the_two_deliveries_of_an_object_resends_only_the_unrecorded_one(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    # Long: no message comes back while a slow (loaded) consumer still holds it. The test makes the killed
    # consumer's messages visible itself, as SQS would after the timeout.
    set_queue(stack, VisibilityTimeout="300")
    watch_receives(stack)
    umbrella = stack.local.tenant("umbrella")
    proxy = stack.proxy
    # Umbrella's CloudWatch puts are held until the test lets them go: a worker delivers and records S3
    # first, then waits here. The kill lands while they are held, so the proxy drops them (their client is
    # gone): CloudWatch never receives them.
    hold = Hold()
    proxy.add(Rule(hold, service="logs", operation=PUT_EVENTS, body_contains=f'"{umbrella.log_group}"'))
    workers = 2
    first = consumer("--workers", str(workers))
    manifest = write(stack.local, tenants=("umbrella",), applications=APPS, pods_per_app=2, objects_per_pod=3, seed=54)
    keys, hot = objects_of(manifest, "umbrella"), hot_keys(manifest, "umbrella")
    paths = paths_of(stack, manifest, "umbrella")

    # Every worker is waiting on a held CloudWatch put, so none is between an S3 put and its ledger write.
    hold.wait_held(workers)
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    hold.open()
    wait_for(lambda: proxy.inflight() == 0, 30, "requests held by the proxy to settle")

    s3_done = ledger_records(stack.local, "umbrella", "s3-archive")
    cw_done = ledger_records(stack.local, "umbrella", "cloudwatch")
    between = (s3_done & hot) - cw_done
    assert len(between) == workers, "the kill did not land between the two deliveries"
    # Every S3 put made before the kill is in the ledger, once; no CloudWatch put reached CloudWatch.
    assert stored(proxy.calls("s3", PUT_OBJECT)) == Counter(paths[k] for k in s3_done)
    sent_unrecorded = accepted_objects(stack, manifest) - cw_done
    assert not sent_unrecorded, "a held put was forwarded after its client was killed"

    proxy.clear()
    assert release_received(stack) == workers  # a worker receives only when it is free: one message each
    second = consumer("--workers", str(workers))
    wait_for(lambda: ledger_records(stack.local, "umbrella", "s3-archive") == keys, 60, "every S3 delivery")
    wait_for(lambda: ledger_records(stack.local, "umbrella", "cloudwatch") == hot, 60, "every CloudWatch delivery")
    wait_for(lambda: queue_empty(stack.local), 30, "the queue to drain")

    # S3: every object stored by exactly one PutObject over both runs; the ones recorded before the kill
    # were not sent again.
    assert stored(proxy.calls("s3", PUT_OBJECT)) == Counter(paths.values())
    # CloudWatch: each event once (at-least-once would apply only to batches accepted before the kill).
    got = delivered(stack.local, "umbrella")
    assert not expected(manifest, "umbrella", hot) - got, "events lost"
    assert set(duplicated_keys(manifest, got, "umbrella")) == sent_unrecorded
    assert got == expected(manifest, "umbrella", hot)
    for k in between:  # the restarted consumer sent only the delivery that was not recorded
        assert [delivery_outcomes(r) for r in object_logs(second, k)] == [
            {"s3-archive": ("skipped", LEDGER_SKIP), "cloudwatch": ("delivered", "")}
        ]
    assert_buckets_hold_the_sources(stack, manifest, "umbrella")
    assert queue_counts(stack.local, stack.local.dlq_url) == (0, 0)
    print(f"kill between deliveries: {len(s3_done)} of {len(keys)} in S3 at the kill, {len(between)} waiting on CW")


# --------------------------------------------------------------------------------------------------------
# The replay CLI, killed while an S3-only tenant's unit is half stored


@pytest.mark.slow
def test_replay_killed_before_its_batched_s3_records_resends_only_overwrites(
    stack: FaultStack, tmp_path: Path, shared_ray: str
) -> None:
    """An S3-only tenant's records are written in batches when a unit ends. A replay killed before that has
    stored objects it never recorded: the rerun stores them again, over themselves, and nothing is lost."""
    manifest = write(
        stack.local, tenants=("hooli",), applications=APPS, pods_per_app=2, objects_per_pod=4, seed=41
    )  # fmt: skip
    paths = paths_of(stack, manifest, "hooli")
    # The tenant's PutObjects are held after the first three: the kill lands mid-unit by construction.
    hold = Hold()
    stack.proxy.add(Rule(hold, service="s3", operation=PUT_OBJECT, body_contains=stack.local.tenant("hooli").bucket))
    hold.release(3)
    args = ("--tenant", "hooli", "--since", "45m", "--workers", "1")

    def some_stored(proc: subprocess.Popen[Any]) -> None:
        wait_for(lambda: len(stored(stack.proxy.calls("s3"))) >= 3 or proc.poll() is not None, 120, "objects stored")
        hold.wait_held(1)

    kill_replay_mid_run(stack, *args, report=tmp_path / "killed.json", when=some_stored, holds=[hold])
    before = stored(stack.proxy.calls("s3"))
    recorded = ledger_records(stack.local, "hooli", "archive")
    assert len(before) == 3 < len(paths), "the kill did not land mid-run"
    assert not recorded  # the unit had not ended: its records were still to be written, in one batch

    stack.proxy.clear()
    code, doc, output = run_replay(stack, *args, report=tmp_path / "rerun.json")
    assert code == 0, output[-3000:]
    assert ledger_records(stack.local, "hooli", "archive") == set(paths)
    assert doc["objects_delivered"] == len(paths)
    total = stored(stack.proxy.calls("s3"))
    # Every object stored; those stored before the kill exactly twice (over themselves), the rest once.
    assert set(total) == set(paths.values())
    assert {p for p, n in total.items() if n == 2} == set(before) and set(total.values()) <= {1, 2}
    assert_buckets_hold_the_sources(stack, manifest, "hooli")
    # A third run sends nothing: every object is in the ledger now.
    stack.proxy.reset_log()
    code, doc, output = run_replay(stack, *args, report=tmp_path / "third.json")
    assert code == 0 and doc["objects_skipped_ledger"] == len(paths), output[-3000:]
    assert not stored(stack.proxy.calls("s3"))
