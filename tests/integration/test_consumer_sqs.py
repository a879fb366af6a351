"""The SQS consumer as a real subprocess (`python -m jobs.consumer --mode sqs`) against the moto server.

Objects are written to the central bucket and reach the queue the way production wires it: S3 → SNS
(envelope) → SQS, with a DLQ after 3 receives. Nothing of the project is mocked: what is checked is
what landed in each tenant's own CloudWatch account, the ledger, the queues and the process itself.

The queue's visibility timeout is shortened with set_queue_attributes, and the consumer gets a short
poll wait and heartbeat interval, so the whole file runs in about a minute.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote_plus

import orjson
import pytest
from boto3.dynamodb.types import TypeSerializer

from devstack import generator as gen
from devstack.faults import Delay, FaultProxy, Hold, Rule
from devstack.provision import LocalEnvironment
from devstack.readback import read_group
from pipeline.ledger import Ledger
from tests.support.consumer_process import ConsumerProcess, queue_counts, queue_empty, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "prod-1"


# --------------------------------------------------------------------------------------------------------
# Helpers


def consumer_env(local: LocalEnvironment, endpoint: str | None = None) -> dict[str, str]:
    """This process's environment without its AWS settings, pointed at the local stack (or a proxy in front)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | local.env
    if endpoint:  # e.g. a FaultProxy in front of moto
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


@pytest.fixture
def start_consumer(local_aws: LocalEnvironment, tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    started: list[ConsumerProcess] = []

    def start(*args: str, name: str = "consumer", ready: bool = True, endpoint: str | None = None) -> ConsumerProcess:
        fast = ["--wait-time", "1", "--heartbeat-interval", "0.4", "--retry-delay", "0", "--workers", "4"]
        c = ConsumerProcess(consumer_env(local_aws, endpoint), tmp_path / f"{name}-{len(started)}.log", [*fast, *args])
        started.append(c)
        return c.wait_ready() if ready else c

    yield start
    for c in started:
        c.kill()
        # Shown by pytest only when the test failed: the consumer's own account of what went wrong.
        problems = [r for r in c.logs() if r.get("level") in ("warning", "error") or "raw" in r]
        print(f"--- {c.log_path.name}: {len(problems)} warning/error lines")
        for r in problems[-20:]:
            print(orjson.dumps(r).decode()[:600])


def set_visibility(local: LocalEnvironment, seconds: int) -> None:
    local.client("sqs").set_queue_attributes(QueueUrl=local.queue_url, Attributes={"VisibilityTimeout": str(seconds)})


def write(
    local: LocalEnvironment,
    tenants: tuple[str, ...] = ("acme",),
    applications: tuple[str, ...] = ("payment-service",),
    objects_per_pod: int = 1,
    events: int = 10,
    seed: int = 0,
) -> gen.Manifest:
    now = datetime.now(UTC)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=10),
        until=now,
        tenants=tenants,
        clusters=(CLUSTER,),
        applications=applications,
        objects_per_pod=objects_per_pod,
        events_per_object=events,
        message_bytes=200,
        seed=seed,
    )
    return gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3"))


def delivered_events(local: LocalEnvironment, tenant: str, account_of: str | None = None) -> Counter[tuple[int, str]]:
    """Every event in `tenant`'s log group, read in the account (and region) of `account_of` (default: its own)."""
    owner = local.tenant(account_of or tenant)
    logs = local.client("logs", region=owner.region, account_id=owner.account_id)
    return Counter(ev for events in read_group(logs, local.tenant(tenant).log_group).values() for ev in events)


def expected_events(
    manifest: gen.Manifest, tenant: str, apps: tuple[str, ...] | None = None
) -> Counter[tuple[int, str]]:
    out: Counter[tuple[int, str]] = Counter()
    for o in manifest.objects:
        parts = o.key.split("/")
        if parts[1] == tenant and (apps is None or parts[2] in apps):
            out.update(tuple(e) for e in o.expected or [])
    return out


def ledger_keys(local: LocalEnvironment, tenant: str) -> set[str]:
    return {e.object_key for e in Ledger(local.names.ledger_table).entries(tenant)}


# --------------------------------------------------------------------------------------------------------
# Tests


def test_objects_reach_each_tenants_own_account_and_nothing_crosses(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    consumer = start_consumer()
    apps = ("payment-service", "checkout")
    manifest = write(local_aws, tenants=("acme", "globex"), applications=apps, objects_per_pod=3)
    # globex only wants payment-service (and frontend): its checkout objects are skipped, not delivered.
    acme_want = expected_events(manifest, "acme")
    globex_want = expected_events(manifest, "globex", apps=("payment-service",))
    wait_for(lambda: queue_empty(local_aws), 30, "the queue to drain")

    assert delivered_events(local_aws, "acme") == acme_want
    assert delivered_events(local_aws, "globex") == globex_want
    # Isolation: neither tenant's group exists in the other's account.
    assert delivered_events(local_aws, "acme", account_of="globex") == Counter()
    assert delivered_events(local_aws, "globex", account_of="acme") == Counter()

    assert len(ledger_keys(local_aws, "acme")) == 6
    assert len(ledger_keys(local_aws, "globex")) == 3
    assert queue_counts(local_aws, local_aws.dlq_url) == (0, 0)

    # Observability: per-tenant counters, the s3:TestEvent from provisioning ignored, a healthy probe.
    assert consumer.metric("logdelivery_objects_total", tenant="acme", status="delivered") == 6
    assert consumer.metric("logdelivery_objects_total", tenant="globex", status="delivered") == 3
    assert consumer.metric("logdelivery_objects_total", tenant="globex", status="skipped") == 3
    assert consumer.metric("logdelivery_events_total", tenant="acme", outcome="delivered") == sum(acme_want.values())
    assert consumer.metric("logdelivery_messages_total", outcome="ignored") == 1
    assert consumer.metric("logdelivery_delivery_latency_seconds_count") == 9
    assert consumer.metric("logdelivery_inflight_messages") == 0
    status, body = consumer.get("/healthz")
    assert status == 200 and orjson.loads(body)["status"] == "running"
    delivered_logs = [r for r in consumer.logs() if r.get("msg") == "object delivered"]
    assert {r["tenant"] for r in delivered_logs} == {"acme", "globex"}
    assert all(r["latency_s"] >= 0 for r in delivered_logs)
    assert consumer.terminate()[0] == 0


def test_non_recoverable_failures_are_deleted_and_reported_never_retried(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    consumer = start_consumer()
    s3, sqs = local_aws.client("s3"), local_aws.client("sqs")
    bucket = local_aws.names.bucket
    body = gen.gzip_bytes(b'{"message": "hello", "timestamp": 1700000000}\n')
    s3.put_object(Bucket=bucket, Key="stray-upload.json.gz", Body=body)  # one segment
    s3.put_object(Bucket=bucket, Key=f"{CLUSTER}/Acme_Corp/app/pod-1/20240101-000000-x.json.gz", Body=body)
    s3.put_object(Bucket=bucket, Key=f"{CLUSTER}/tyrell/app/pod-1/20240101-000000-x.json.gz", Body=body)
    write(local_aws, tenants=("initech",))  # a disabled tenant
    sqs.send_message(QueueUrl=local_aws.queue_url, MessageBody="this is not json")
    removed = {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete", "s3": {}}]}
    sqs.send_message(QueueUrl=local_aws.queue_url, MessageBody=orjson.dumps(removed).decode())

    # --retry-delay 0: anything left for redelivery would come straight back and keep the queue busy.
    wait_for(lambda: queue_empty(local_aws), 30, "the queue to drain")
    time.sleep(1.5)  # a wrongly released message would be visible again by now
    assert queue_empty(local_aws)
    assert queue_counts(local_aws, local_aws.dlq_url) == (0, 0)

    logs = consumer.logs()
    handled = [r for r in logs if "receive_count" in r and r.get("msg", "").startswith(("object", "message", "event"))]
    assert handled and all(r["receive_count"] == 1 for r in handled), "a message was received twice"
    assert not [r for r in logs if r.get("msg") == "message left for redelivery"]
    reasons = " | ".join(r.get("reason", "") for r in logs if r.get("level") == "warning")
    assert "has 1 segments" in reasons
    assert "'Acme_Corp' is not a valid namespace name" in reasons
    assert "unknown tenant 'tyrell'" in reasons
    assert "message body is not JSON" in reasons
    assert consumer.metric("logdelivery_objects_total", tenant="_invalid", status="rejected") == 2
    assert consumer.metric("logdelivery_objects_total", tenant="tyrell", status="rejected") == 1
    assert consumer.metric("logdelivery_objects_total", tenant="initech", status="skipped") == 1
    assert consumer.metric("logdelivery_messages_total", outcome="rejected") == 4
    assert consumer.metric("logdelivery_messages_total", outcome="retried") == 0
    assert consumer.metric("logdelivery_messages_total", outcome="ignored") == 2  # test event, ObjectRemoved
    skipped = [r for r in logs if r.get("msg", "").startswith("object skipped")]
    assert skipped and "disabled" in skipped[0]["reason"]
    assert delivered_events(local_aws, "initech") == Counter()


def add_unreachable_tenant(local: LocalEnvironment, tenant_id: str = "oscorp") -> None:
    """A tenant whose target_region is well-formed but has no CloudWatch endpoint behind it.

    moto has no backend for eu-south-3 and answers every call there with HTTP 500: the path a
    regional CloudWatch outage takes (5xx → sink retries → recoverable failure).
    """
    item = {
        "tenant_id": tenant_id,
        "delivery_id": "cloudwatch",
        "type": "cloudwatch",
        "log_distribution_role_arn": f"arn:aws:iam::444444444444:role/CustomerLogDistribution-{tenant_id}",
        "log_group_name": f"/logs/{tenant_id}",
        "target_region": "eu-south-3",
        "enabled": True,
    }
    ser = TypeSerializer()
    local.client("dynamodb").put_item(
        TableName=local.names.tenant_table, Item={k: ser.serialize(v) for k, v in item.items()}
    )


def test_recoverable_failure_comes_back_and_ends_in_the_dlq_after_three_receives(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    add_unreachable_tenant(local_aws)
    # The failure opens oscorp's circuit (pipeline/circuits.py): each later receive is its probe, handed back
    # after the circuit's wait (--circuit-wait 1: 1, then 2 s, plus up to one open time of spread) rather than
    # --retry-delay; a 1 s back-off base keeps the receive-count floor at those waits.
    consumer = start_consumer("--put-attempts", "1", "--backoff-delay", "1", "--circuit-wait", "1")
    bad = write(local_aws, tenants=("oscorp",))
    good = write(local_aws, tenants=("acme",), seed=1)
    bad_key = bad.objects[0].key

    wait_for(lambda: queue_counts(local_aws, local_aws.dlq_url)[0] == 1, 120, "the message to reach the DLQ")
    wait_for(lambda: queue_empty(local_aws), 10, "the queue to drain")
    dlq = local_aws.client("sqs").receive_message(QueueUrl=local_aws.dlq_url, WaitTimeSeconds=1)["Messages"]
    assert quote_plus(bad_key) in orjson.loads(dlq[0]["Body"])["Message"]

    retried = [r for r in consumer.logs() if r.get("msg") == "message left for redelivery"]
    assert sorted(r["receive_count"] for r in retried) == [1, 2, 3]
    assert all("eu-south-3" in r["reasons"][0] and r["reasons"][0].endswith(": 500") for r in retried)
    assert consumer.metric("logdelivery_objects_total", tenant="oscorp", status="failed") == 3
    assert ledger_keys(local_aws, "oscorp") == set()
    # One broken tenant does not hold the others back.
    assert delivered_events(local_aws, "acme") == expected_events(good, "acme")


def test_kill_9_mid_batch_loses_nothing(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    set_visibility(local_aws, 2)
    first = start_consumer("--workers", "2")
    manifest = write(local_aws, objects_per_pod=6, events=5_000)
    keys = set(manifest.keys)

    def mid_batch() -> bool:
        done = len(ledger_keys(local_aws, "acme"))
        return 1 <= done < len(keys) and first.metric("logdelivery_inflight_messages") >= 1

    wait_for(mid_batch, 40, "the first consumer to be in the middle of the batch", interval=0.05)
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    done_before = ledger_keys(local_aws, "acme")
    assert done_before < keys, "the first consumer finished everything; nothing was in flight"

    second = start_consumer("--workers", "4", name="second")
    wait_for(lambda: ledger_keys(local_aws, "acme") == keys, 60, "every object in the ledger")
    wait_for(lambda: queue_empty(local_aws), 10, "the queue to drain")
    missing = expected_events(manifest, "acme") - delivered_events(local_aws, "acme")
    assert not missing, f"{sum(missing.values())} events lost"
    assert queue_counts(local_aws, local_aws.dlq_url) == (0, 0)
    # The second consumer only picked up what the first had not finished.
    assert second.metric("logdelivery_objects_total", tenant="acme", status="delivered") == len(keys - done_before)


def test_sigterm_finishes_in_flight_work_and_exits_zero(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    set_visibility(local_aws, 30)  # a message neither deleted nor released would stay invisible for 30 s
    with FaultProxy(local_aws.endpoint_url) as proxy:
        # The objects' puts are held until the drain has begun: work is in flight at SIGTERM by construction,
        # not because the machine was slow enough, and it finishes after it, whatever the machine's speed.
        puts = Hold()
        proxy.add(Rule(puts, service="logs", operation="PutLogEvents"))
        consumer = start_consumer("--workers", "3", "--drain-timeout", "120", endpoint=proxy.url)
        manifest = write(local_aws, objects_per_pod=3, events=600)
        puts.wait_held(2)  # two objects (two workers) in flight
        assert consumer.metric("logdelivery_inflight_messages") >= 2
        consumer.request_stop()
        wait_for(lambda: any(r.get("msg") == "draining" for r in consumer.logs()), 30, "the drain to begin")
        puts.open()
        code = consumer.wait_exit(120)
    assert code == 0
    logs = consumer.logs()
    draining = next(r for r in logs if r.get("msg") == "draining")
    assert draining["inflight"] >= 2
    drained = next(r for r in logs if r.get("msg") == "drained")
    assert drained["released"] == 0  # everything in flight was finished, nothing handed back at the deadline
    assert drained["seconds"] < 120  # it ended when the work did, not at the drain deadline
    # The objects in flight at SIGTERM ran to their end (normally delivered; a moto hiccup under load
    # would show as "object failed" and a retry, which is the right behaviour too).
    assert len([r for r in logs if r.get("msg", "").startswith("object ")]) >= 2
    done = ledger_keys(local_aws, "acme")
    # Nothing stranded: every object is delivered, or its message is visible for the next consumer now.
    visible, invisible = queue_counts(local_aws, local_aws.queue_url)
    assert invisible == 0
    assert len(done) + visible == len(manifest.keys)


def test_sigterm_releases_what_it_cannot_finish_before_the_drain_deadline(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    set_visibility(local_aws, 30)
    with FaultProxy(local_aws.endpoint_url) as proxy:
        # Puts held until the consumer is gone: they outlast the drain deadline whatever the machine's speed.
        held_puts = Hold()
        proxy.add(Rule(held_puts, service="logs", operation="PutLogEvents"))
        consumer = start_consumer("--workers", "2", "--drain-timeout", "0.2", endpoint=proxy.url)
        manifest = write(local_aws, objects_per_pod=2, events=50)
        # A put held by the proxy (not just the consumer's long poll, which is in flight too).
        held_puts.wait_held(1, timeout=30)
        try:
            code, seconds = consumer.terminate()
            # It exited with its puts still unanswered: it stopped at the drain deadline, not when the work did.
            unanswered = held_puts.held
        finally:
            held_puts.open()  # the consumer is gone: its held puts are dropped, not forwarded
    assert code == 0
    assert unanswered >= 1
    assert seconds < 30  # the deadline (0.2 s) plus one 1 s long poll, normally; the held puts would be 300 s
    released = next(r for r in consumer.logs() if r.get("msg") == "drained")["released"]
    assert released >= 1
    # Released means visible again now, not after the 30 s visibility timeout.
    visible, invisible = queue_counts(local_aws, local_aws.queue_url)
    assert invisible == 0
    assert visible + len(ledger_keys(local_aws, "acme")) >= len(manifest.keys)
    got = local_aws.client("sqs").receive_message(QueueUrl=local_aws.queue_url, MaxNumberOfMessages=10)
    assert len(got.get("Messages", [])) == visible >= released


def test_duplicate_notifications_do_not_resend_events(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    consumer = start_consumer()
    manifest = write(local_aws)
    obj = manifest.objects[0]
    wait_for(lambda: ledger_keys(local_aws, "acme") == {obj.key}, 20, "the first delivery")

    # The same object written again (same bytes, same ETag) notifies again through SNS ...
    s3 = local_aws.client("s3")
    body = s3.get_object(Bucket=local_aws.names.bucket, Key=obj.key)["Body"].read()
    s3.put_object(Bucket=local_aws.names.bucket, Key=obj.key, Body=body, **gen.GZIP_PUT_ARGS)
    # ... and the same event arrives raw (S3 → SQS directly), URL-encoded as S3 sends keys.
    raw = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": local_aws.names.bucket},
                    "object": {"key": quote_plus(obj.key), "size": obj.size, "eTag": obj.etag.strip('"')},
                },
            }
        ]
    }
    local_aws.client("sqs").send_message(QueueUrl=local_aws.queue_url, MessageBody=orjson.dumps(raw).decode())

    wait_for(
        lambda: consumer.metric("logdelivery_objects_total", tenant="acme", status="skipped") == 2,
        20,
        "both duplicates to be skipped",
    )
    wait_for(lambda: queue_empty(local_aws), 10, "the queue to drain")
    assert delivered_events(local_aws, "acme") == expected_events(manifest, "acme")  # each event exactly once
    assert consumer.metric("logdelivery_objects_total", tenant="acme", status="delivered") == 1
    reasons = [r["reason"] for r in consumer.logs() if r.get("msg", "").startswith("object skipped")]
    assert reasons == ["already delivered (ledger)"] * 2


def s3_event(local: LocalEnvironment, records: list[tuple[str, str]]) -> str:
    """A raw S3 event (S3 → SQS directly) naming (key, eTag) records, keys URL-encoded as S3 sends them."""
    return orjson.dumps(
        {
            "Records": [
                {
                    "eventSource": "aws:s3",
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": local.names.bucket}, "object": {"key": quote_plus(k), "eTag": e}},
                }
                for k, e in records
            ]
        }
    ).decode()


def test_a_forged_etag_and_repeated_records_deliver_nothing_twice(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    """The ledger is checked at the ETag the consumer reads from S3, never at one a message names; a key
    named several times in one message is delivered once."""
    s3 = local_aws.client("s3")
    # The objects' own notifications are purged before the consumer starts: the messages below are the only ones.
    manifest = write(local_aws, objects_per_pod=2)
    sqs = local_aws.client("sqs")
    sqs.purge_queue(QueueUrl=local_aws.queue_url)
    assert queue_empty(local_aws)
    first, second = (o.key for o in manifest.objects)
    real = s3.head_object(Bucket=local_aws.names.bucket, Key=first)["ETag"].strip('"')

    # One message naming the first object three times, each with another eTag (one real, two forged),
    # and the second object twice.
    sqs.send_message(
        QueueUrl=local_aws.queue_url,
        MessageBody=s3_event(
            local_aws, [(first, real), (first, "0" * 32), (second, "f" * 32), (first, "1" * 32), (second, "")]
        ),
    )
    consumer = start_consumer()
    wait_for(lambda: ledger_keys(local_aws, "acme") == {first, second}, 30, "both objects to be delivered")
    wait_for(lambda: queue_empty(local_aws), 20, "the queue to drain")
    # The same two objects again, each named with a forged eTag: the ledger still knows them.
    sqs.send_message(QueueUrl=local_aws.queue_url, MessageBody=s3_event(local_aws, [(first, "a" * 32)]))
    sqs.send_message(QueueUrl=local_aws.queue_url, MessageBody=s3_event(local_aws, [(second, "b" * 32)]))
    wait_for(
        lambda: consumer.metric("logdelivery_objects_total", tenant="acme", status="skipped") == 2,
        20,
        "both forged messages to be skipped",
    )
    wait_for(lambda: queue_empty(local_aws), 10, "the queue to drain")

    assert delivered_events(local_aws, "acme") == expected_events(manifest, "acme")  # each event exactly once
    assert consumer.metric("logdelivery_objects_total", tenant="acme", status="delivered") == 2
    # The ledger holds the ETag S3 answered, not any the messages named.
    entries = Ledger(local_aws.names.ledger_table).entries("acme")
    assert {e.object_key: e.etag for e in entries} == {
        o.key: s3.head_object(Bucket=local_aws.names.bucket, Key=o.key)["ETag"].strip('"') for o in manifest.objects
    }
    assert queue_counts(local_aws, local_aws.dlq_url) == (0, 0)
    repeated = [r for r in consumer.logs() if "named again in the same message" in str(r.get("reason", ""))]
    assert len(repeated) == 3


def test_heartbeat_keeps_a_slow_object_from_a_second_consumer(
    local_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    # A 2 s visibility timeout, beaten every 0.4 s, and a put held 4 s by the proxy: the object outlasts
    # the timeout twice over on any machine.
    set_visibility(local_aws, 2)
    with FaultProxy(local_aws.endpoint_url) as proxy:
        proxy.add(Rule(Delay(4.0), service="logs", operation="PutLogEvents", first=1))
        a = start_consumer(name="a", endpoint=proxy.url)
        b = start_consumer(name="b", endpoint=proxy.url)
        manifest = write(local_aws, events=200)
        wait_for(lambda: ledger_keys(local_aws, "acme") == set(manifest.keys), 60, "the slow object")
        wait_for(lambda: queue_empty(local_aws), 10, "the queue to drain")
        time.sleep(2.5)  # past one more visibility timeout: a message still around would be received again

    slow = [r for c in (a, b) for r in c.logs() if r.get("msg") == "object delivered"]
    assert len(slow) == 1
    assert slow[0]["duration_s"] > 2, "the object was not slow enough to outlast the visibility timeout"
    # Two messages in all (provisioning's s3:TestEvent and the object), each received exactly once, by
    # either consumer: without the heartbeat the object's message comes back every second while it is
    # being delivered.
    assert sum(c.metric("logdelivery_messages_received_total") for c in (a, b)) == 2
    assert sum(c.metric("logdelivery_visibility_extensions_total", result="ok") for c in (a, b)) >= 4
    assert not [r for c in (a, b) for r in c.logs() if r.get("msg", "").startswith("delete failed")]
    assert delivered_events(local_aws, "acme") == expected_events(manifest, "acme")
