"""Calls per object, counted on the wire (the fault proxy sees every DynamoDB and CloudWatch call): the
ledger's share of a replay and of the consumer, and what a backfill into new streams costs CloudWatch.

No test double: the replay CLI with its local Ray, and the consumer as a subprocess, both through the proxy.
Only calls naming the ledger table are ledger calls (the tenant table's lookups are not)."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_helpers import (
    ConsumerProcess,
    FaultStack,
    delivered,
    expected,
    ledger_keys,
    ledger_records,
    min_calls,
    queue_counts,
    queue_empty,
    release_received,
    run_replay,
    set_queue,
    stream_of,
    wait_for,
    watch_receives,
    write,
)

from devstack.faults import Call, Hold, Rule
from pipeline.environment import PROBE_KEY as PROBE

pytestmark = [pytest.mark.integration]

REPLAY_LEDGER_CALLS_PER_OBJECT = 0.15  # issue 27: "today about 1"
CONSUMER_LEDGER_CALLS_PER_OBJECT = 1.1  # issue 27: "today 2"


def ledger_calls(stack: FaultStack) -> list[Call]:
    """Calls on the ledger about objects: not the consumer's startup check (it reads a key no object has),
    nor this test's own read-back (a Query, which neither path makes)."""
    table = stack.local.names.ledger_table.encode()
    return [
        c
        for c in stack.proxy.calls("dynamodb")
        if table in c.body and PROBE.encode() not in c.body and c.operation != "Query"
    ]


@pytest.mark.ray
@pytest.mark.slow
def test_a_replay_of_many_small_objects_into_27_new_streams_costs_the_wire_what_the_report_says(
    stack: FaultStack,
    tmp_path: Path,
    shared_ray: str,  # on the session's Ray head, not a cold Ray of its own
) -> None:
    manifest = write(
        stack.local, applications=("payment-service", "frontend", "checkout"), pods_per_app=9, objects_per_pod=15,
        events_per_object=4, seed=27,
    )  # fmt: skip
    streams = {stream_of(o.key, ts) for o in manifest.objects for ts, _ in o.expected or []}
    assert len(streams) >= 27  # 27 pods: one stream each, two for a pod whose events cross midnight
    code, doc, output = run_replay(
        stack, "--tenant", "acme", "--since", "45m", "--workers", "2", report=tmp_path / "r.json"
    )

    assert code == 0, output[-3000:]
    assert delivered(stack.local, "acme") == expected(manifest, "acme")  # every event once
    assert ledger_keys(stack.local, "acme") == set(manifest.keys)
    objects = len(manifest.objects)
    assert doc["objects_delivered"] == objects

    # The ledger: reads batched (the survey's and the worker's), the records of the objects one answer
    # settles written together. About one call per object before.
    calls = ledger_calls(stack)
    ops = sorted({c.operation for c in calls})
    assert set(ops) <= {"BatchGetItem", "TransactWriteItems", "UpdateItem"}, ops
    per_object = len(calls) / objects
    assert per_object <= REPLAY_LEDGER_CALLS_PER_OBJECT, (per_object, ops)

    # New streams: one CreateLogStream each, at most one refused put each, and the report equals the wire.
    puts = stack.proxy.calls("logs", "PutLogEvents")
    creates = stack.proxy.calls("logs", "CreateLogStream")
    accepted = [c for c in puts if c.status == 200]
    assert len(creates) <= len(streams)
    assert len(accepted) == min_calls(manifest, "acme")
    assert len(puts) <= min_calls(manifest, "acme") + len(streams)
    assert doc["put_requests"] == len(accepted)
    assert doc["requests_refused"] == len(puts) - len(accepted)
    assert doc["creates"] == len(creates) + len(stack.proxy.calls("logs", "CreateLogGroup"))
    print(f"replay: {len(calls)} ledger calls for {objects} objects ({per_object:.3f}/object), {len(puts)} puts")


def consume(stack: FaultStack, consumer: Callable[..., ConsumerProcess], tenant: str, seed: int) -> set[str]:
    """A backlog of the tenant's objects, drained by a consumer of 8 workers; the objects' keys."""
    manifest = write(
        stack.local, tenants=(tenant,), applications=("payment-service",), pods_per_app=4, objects_per_pod=10,
        events_per_object=20, seed=seed,
    )  # fmt: skip
    keys = set(manifest.keys)
    stack.proxy.keep_answers.add(("sqs", "ReceiveMessage"))
    consumer("--workers", "8")
    wait_for(lambda: ledger_keys(stack.local, tenant) == keys, 120, f"every {tenant} object recorded")
    wait_for(lambda: queue_empty(stack.local), 30, "the queue to drain")
    return keys


def test_the_consumer_makes_at_most_one_ledger_call_per_object_for_s3_deliveries(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    """S3 deliveries (hooli) skip the read: a resend overwrites the same key. The write stays, so the replay
    and the status know what was delivered; objects that finish together share one."""
    keys = consume(stack, consumer, "hooli", seed=28)
    assert ledger_records(stack.local, "hooli", "archive") == keys
    calls = ledger_calls(stack)
    assert {c.operation for c in calls} <= {"UpdateItem", "TransactWriteItems"}, "an S3-only object was read"
    per_object = len(calls) / len(keys)
    assert per_object <= CONSUMER_LEDGER_CALLS_PER_OBJECT
    assert len(calls) <= len(keys)
    groups = sum(c.operation == "TransactWriteItems" for c in calls)
    print(f"consumer, S3: {len(calls)} ledger calls for {len(keys)} objects ({per_object:.3f}/object), {groups} groups")


def test_the_consumer_reads_the_ledger_once_per_receive_for_cloudwatch_deliveries(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    """CloudWatch deliveries (acme) need the read (CloudWatch has no dedup): one BatchGetItem per received
    batch of messages, never one per message; every event arrives once. On a backlog (8 workers), the
    workers a group write frees are received for together, so a read serves several messages and their
    objects share writes: at most 1.1 calls per object."""
    keys = consume(stack, consumer, "acme", seed=29)
    calls = ledger_calls(stack)
    reads = [c for c in calls if c.operation in ("GetItem", "BatchGetItem")]
    writes = [c for c in calls if c.operation in ("UpdateItem", "TransactWriteItems")]
    receives = [c for c in stack.proxy.calls("sqs", "ReceiveMessage") if b"ReceiptHandle" in c.answer]
    assert not [c for c in reads if c.operation == "GetItem"], "a message read the ledger on its own"
    assert len(reads) <= len(receives)
    assert len(writes) <= len(keys)
    per_object = len(calls) / len(keys)
    assert per_object <= CONSUMER_LEDGER_CALLS_PER_OBJECT, (per_object, len(reads), len(receives), len(writes))
    print(
        f"consumer, CloudWatch: {len(calls)} ledger calls for {len(keys)} objects ({per_object:.3f}/object): "
        f"{len(reads)} reads for {len(receives)} receives, {len(writes)} writes"
    )


@pytest.mark.slow
def test_a_consumer_killed_while_its_s3_records_wait_leaves_their_messages_and_the_resend_overwrites(
    stack: FaultStack, consumer: Callable[..., ConsumerProcess]
) -> None:
    """S3 records wait to be written with others' (DeferredRecords), and a message is deleted only once its
    records are written. Killed while a group's write is held: no message was deleted, nothing is recorded;
    the next consumer delivers every object again, once more each, into the same keys (an overwrite, never a
    second copy) and records each once.

    Decided by events: the proxy holds every ledger write until the kill, so at the kill the test knows that
    no record is written; the visibility timeout is long, and the test makes the dead consumer's messages
    visible itself, as SQS would after the timeout."""
    set_queue(stack, VisibilityTimeout="300")
    watch_receives(stack)
    hooli = stack.local.tenant("hooli")
    table = stack.local.names.ledger_table
    hold = Hold()
    for operation in ("UpdateItem", "TransactWriteItems"):
        stack.proxy.add(Rule(hold, service="dynamodb", operation=operation, body_contains=table))
    first = consumer("--workers", "2")
    manifest = write(
        stack.local, tenants=("hooli",), applications=("payment-service",), pods_per_app=2, objects_per_pod=3, seed=57
    )
    keys = set(manifest.keys)

    hold.wait_held(1)  # a group of delivered objects is being recorded: its messages wait for it
    put = {c.path for c in stack.proxy.calls("s3", "PutObject") if c.status == 200 and hooli.bucket in c.path}
    assert put, "the held write records objects that were stored"
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    hold.open()  # the held writes find their client gone: the proxy drops them
    wait_for(lambda: stack.proxy.inflight() == 0, 30, "requests held by the proxy to settle")
    assert ledger_records(stack.local, "hooli", "archive") == set()

    stored = Counter(c.path for c in stack.proxy.calls("s3", "PutObject") if c.status == 200)  # by the first
    stack.proxy.clear()
    assert release_received(stack) >= 1
    consumer("--workers", "2")
    wait_for(lambda: ledger_records(stack.local, "hooli", "archive") == keys, 90, "every object recorded")
    wait_for(lambda: queue_empty(stack.local), 30, "the queue to drain")
    # The resend: every object stored before the kill is stored again (so its message was not deleted), once
    # more, into the key it had (the bucket holds one copy of each).
    again = Counter(c.path for c in stack.proxy.calls("s3", "PutObject") if c.status == 200) - stored
    assert put <= set(again) and set(again.values()) == {1}
    listed = stack.local.tenant_s3("hooli").list_objects_v2(Bucket=hooli.bucket).get("Contents", [])
    assert len(listed) == len(keys)
    assert queue_counts(stack.local, stack.local.dlq_url) == (0, 0)
