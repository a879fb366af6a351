"""Lambda and manual mode on the moto server, fed with the messages S3 → SNS → SQS really produced.

The test plays Lambda's event source mapping: it receives the messages from the queue and hands them
to the handler in the Lambda event shape (CONTRACTS.md §6).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import orjson
import pytest
from boto3.dynamodb.types import TypeSerializer

from devstack import generator as gen
from devstack.provision import LocalEnvironment
from pipeline.consumer import lambda_handler
from pipeline.ledger import Ledger

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_lambda() -> Iterator[None]:
    lambda_handler.reset()  # the runtime is cached per container; each test gets its own local stack
    yield
    lambda_handler.reset()


def put(local: LocalEnvironment, tenant: str, seed: int) -> gen.ManifestObject:
    now = datetime.now(UTC)
    cfg = gen.GeneratorConfig(since=now - timedelta(minutes=5), until=now, tenants=(tenant,), seed=seed)
    return gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3")).objects[0]


def receive_all(local: LocalEnvironment, expected: int) -> list[dict[str, Any]]:
    sqs = local.client("sqs")
    got: list[dict[str, Any]] = []
    for _ in range(20):
        resp = sqs.receive_message(
            QueueUrl=local.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60
        )
        got.extend(resp.get("Messages", []))
        if len(got) >= expected:
            break
    return got


def add_unreachable_tenant(local: LocalEnvironment, tenant_id: str) -> None:
    """Well-formed, but its region (eu-south-3) has no moto backend: every call there gets HTTP 500."""
    item = {
        "tenant_id": tenant_id,
        "delivery_id": "cloudwatch",
        "type": "cloudwatch",
        "log_distribution_role_arn": f"arn:aws:iam::444444444444:role/CustomerLogDistribution-{tenant_id}",
        "log_group_name": f"/logs/{tenant_id}",
        "target_region": "eu-south-3",
    }
    ser = TypeSerializer()
    local.client("dynamodb").put_item(
        TableName=local.names.tenant_table, Item={k: ser.serialize(v) for k, v in item.items()}
    )


def test_lambda_handler_returns_exactly_the_failed_message_ids(
    local_aws: LocalEnvironment, fresh_lambda: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_unreachable_tenant(local_aws, "oscorp")
    good = put(local_aws, "acme", seed=1)
    retry = put(local_aws, "oscorp", seed=2)
    put(local_aws, "tyrell", seed=3)  # unknown tenant: non-recoverable
    put(local_aws, "initech", seed=4)  # disabled: skipped
    messages = receive_all(local_aws, 5)  # four objects and provisioning's s3:TestEvent
    assert len(messages) == 5
    by_key = {}
    for m in messages:
        inner = orjson.loads(orjson.loads(m["Body"])["Message"])
        key = inner["Records"][0]["s3"]["object"]["key"] if "Records" in inner else inner["Event"]
        by_key[key] = m["MessageId"]
    records = [
        {
            "messageId": m["MessageId"],
            "body": m["Body"],
            "eventSource": "aws:sqs",
            "attributes": m.get("Attributes", {}),
        }
        for m in messages
    ]
    records.append({"messageId": "not-json", "body": "<html>502 Bad Gateway</html>", "eventSource": "aws:sqs"})

    monkeypatch.setenv("PUT_ATTEMPTS", "1")  # fail the unreachable region fast instead of backing off
    monkeypatch.syspath_prepend(str(REPO))
    entry = importlib.import_module("jobs.consumer").lambda_handler  # what the container image points at
    response = entry({"Records": records}, None)

    assert response == {"batchItemFailures": [{"itemIdentifier": by_key[quote_plus(retry.key)]}]}
    assert {e.object_key for e in Ledger(local_aws.names.ledger_table).entries("acme")} == {good.key}


def run_manual(local: LocalEnvironment, stdin: bytes, *args: str) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | local.env
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.consumer", "--mode", "manual", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert proc.stdout, proc.stderr.decode()[-2000:]
    return proc.returncode, orjson.loads(proc.stdout)


def test_manual_mode_reproduces_one_object(local_aws: LocalEnvironment) -> None:
    obj = put(local_aws, "acme", seed=5)
    put(local_aws, "tyrell", seed=6)
    messages = receive_all(local_aws, 3)
    bodies = {"acme" if "acme" in m["Body"] else "tyrell" if "tyrell" in m["Body"] else "test": m for m in messages}

    code, report = run_manual(local_aws, bodies["acme"]["Body"].encode())
    assert code == 0
    assert report["outcome"] == "delivered"
    [result] = report["objects"]
    assert (result["key"], result["status"], result["events_delivered"]) == (obj.key, "delivered", obj.expected_count)

    # The whole message as `aws sqs receive-message` prints it works too; the ledger now says delivered.
    code, report = run_manual(local_aws, orjson.dumps(bodies["acme"]))
    assert (code, report["objects"][0]["status"], report["message_id"]) == (0, "skipped", bodies["acme"]["MessageId"])
    code, report = run_manual(local_aws, bodies["acme"]["Body"].encode(), "--redeliver")
    assert (code, report["objects"][0]["status"]) == (0, "delivered")

    code, report = run_manual(local_aws, bodies["tyrell"]["Body"].encode())
    assert code == 1
    assert report["outcome"] == "rejected"
    assert "unknown tenant 'tyrell'" in report["objects"][0]["reason"]
