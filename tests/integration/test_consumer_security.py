"""The consumer's own boundaries, as a real subprocess (`python -m jobs.consumer --mode sqs`) on moto.

- A customer role with an IAM path (`role/logging/CustomerLogDistribution-x`, CONTRACTS.md §3) is assumed
  and delivered into, like any other.
- Only objects of the central bucket (`S3_BUCKET_NAME`) are delivered. A notification naming another
  bucket is refused with a reason that names both buckets, acknowledged once (not retried, not sent to the
  DLQ), and nothing of that bucket reaches the tenant, even when the consumer's identity could read it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from devstack import generator as gen
from devstack.provision import LocalEnvironment, SampleBucket, SampleTenant, add_tenants
from devstack.readback import read_bucket, read_group
from pipeline.ledger import Ledger
from tests.support.consumer_process import ConsumerProcess, queue_counts, queue_empty, wait_for

pytestmark = pytest.mark.integration

WAYNE = SampleTenant("wayne", "666666666666", role_path="logging/", s3=SampleBucket())


@pytest.fixture
def start_consumer(local_aws: LocalEnvironment, tmp_path: Path) -> Iterator[Callable[[], ConsumerProcess]]:
    started: list[ConsumerProcess] = []

    def start() -> ConsumerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | local_aws.env
        args = ["--wait-time", "1", "--heartbeat-interval", "1", "--retry-delay", "0", "--workers", "2"]
        c = ConsumerProcess(env, tmp_path / f"consumer-{len(started)}.log", args)
        started.append(c)
        return c.wait_ready()

    # A short visibility timeout: a message the consumer did not acknowledge would be back within seconds.
    local_aws.client("sqs").set_queue_attributes(QueueUrl=local_aws.queue_url, Attributes={"VisibilityTimeout": "3"})
    yield start
    for c in started:
        c.kill()


def write(local: LocalEnvironment, tenant: str, bucket: str | None = None, seed: int = 71) -> gen.Manifest:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=10),
        until=now - timedelta(minutes=1),
        tenants=(tenant,),
        applications=("payment-service",),
        objects_per_pod=2,
        events_per_object=10,
        message_bytes=120,
        seed=seed,
    )
    return gen.write_dataset(cfg, bucket or local.names.bucket, s3=local.client("s3"))


def test_a_tenant_whose_role_has_an_iam_path_is_delivered(
    local_aws: LocalEnvironment, start_consumer: Callable[[], ConsumerProcess]
) -> None:
    add_tenants(local_aws, [WAYNE])
    local_aws.tenants = (*local_aws.tenants, WAYNE)
    role = local_aws.client("iam", account_id=WAYNE.account_id).get_role(RoleName="CustomerLogDistribution-wayne")
    assert role["Role"]["Arn"] == "arn:aws:iam::666666666666:role/logging/CustomerLogDistribution-wayne"
    assert WAYNE.delivery("cloudwatch").role_arn == role["Role"]["Arn"]  # the validator keeps the path

    manifest = write(local_aws, "wayne")
    consumer = start_consumer()
    ledger = Ledger(local_aws.names.ledger_table)
    wait_for(lambda: {e.object_key for e in ledger.entries("wayne")} == set(manifest.keys), 60, "wayne's delivery")
    wait_for(lambda: queue_empty(local_aws), 30, "every message to be acknowledged")

    group = read_group(local_aws.tenant_logs("wayne"), WAYNE.log_group)
    assert sorted(ev for evs in group.values() for ev in evs) == sorted(
        ev for o in manifest.objects for ev in o.expected or []
    )
    stored = read_bucket(local_aws.tenant_s3("wayne"), WAYNE.bucket)
    assert len(stored) == len(manifest.objects)
    assert {r["status"] for r in consumer.logs() if r.get("tenant") == "wayne"} == {"delivered"}


def test_an_event_naming_another_bucket_is_refused_once_and_nothing_is_delivered(
    local_aws: LocalEnvironment, start_consumer: Callable[[], ConsumerProcess]
) -> None:
    # A bucket the consumer's identity can read (moto's central account), holding a well-formed object of a
    # real tenant: only the check on the bucket name stands between it and acme's log group.
    other = "not-the-central-bucket"
    local_aws.client("s3").create_bucket(Bucket=other)
    planted = write(local_aws, "acme", bucket=other, seed=72)
    key = planted.keys[0]
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": other}, "object": {"key": key, "size": 100}},
            }
        ]
    }
    body = orjson.dumps({"Type": "Notification", "Message": orjson.dumps(event).decode()}).decode()
    local_aws.client("sqs").send_message(QueueUrl=local_aws.queue_url, MessageBody=body)

    consumer = start_consumer()
    reason = (
        f"object s3://{other}/{key} refused: bucket {other!r} is not the central bucket "
        f"{local_aws.names.bucket!r} (S3_BUCKET_NAME); only its objects are delivered"
    )
    wait_for(lambda: any(r.get("reason") == reason for r in consumer.logs()), 60, "the refusal to be logged")
    wait_for(lambda: queue_empty(local_aws), 30, "the message to be acknowledged")
    time.sleep(4)  # past the visibility timeout: an unacknowledged message would have come back by now
    assert queue_counts(local_aws, local_aws.queue_url) == (0, 0)
    assert queue_counts(local_aws, local_aws.dlq_url) == (0, 0)
    assert [r["msg"] for r in consumer.logs() if r.get("reason") == reason] == [f"record rejected: {reason}"]
    assert consumer.metric("logdelivery_messages_total", outcome="rejected") == 1
    assert consumer.metric("logdelivery_objects_total") == 0  # never fetched, never delivered
    assert read_group(local_aws.tenant_logs("acme"), local_aws.tenant("acme").log_group) == {}
    assert Ledger(local_aws.names.ledger_table).entries("acme") == []
