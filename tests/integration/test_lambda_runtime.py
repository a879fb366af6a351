"""Lambda mode against the local AWS: remaining-time awareness, EMF metrics with the Prometheus names, and
JSON logs carrying the request id. The handler runs in this process, as Lambda's runtime would run it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from devstack import generator as gen
from devstack.provision import LocalEnvironment
from pipeline import logs
from pipeline.circuits import CircuitBreakers, Verdict
from pipeline.consumer.emf import EmfMetrics
from pipeline.consumer.lambda_handler import NOT_STARTED, LambdaRuntime, install_request_id_logging
from pipeline.consumer.metrics import Metrics
from pipeline.ledger import Ledger

pytestmark = pytest.mark.integration


@dataclass
class Context:
    """Lambda's context object: plenty of time for the first record started, then almost none."""

    aws_request_id: str = "req-7f3a"
    first_ms: int = 120_000
    then_ms: int = 2_000
    calls: int = 0

    def get_remaining_time_in_millis(self) -> int:
        self.calls += 1
        return self.first_ms if self.calls == 1 else self.then_ms


def sqs_records(local: LocalEnvironment, tenant: str, n: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """n objects of `tenant` written to the bucket, and their SQS notifications as Lambda's records."""
    now = datetime.now(UTC)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=30), until=now, tenants=(tenant,), pods_per_app=1, objects_per_pod=n, seed=3
    )
    objects = gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3")).objects
    sqs = local.client("sqs")
    messages: list[dict[str, Any]] = []
    for _ in range(30):
        resp = sqs.receive_message(QueueUrl=local.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages += resp.get("Messages", [])
        if len(messages) > len(objects):
            break
    key_of: dict[str, str] = {}
    records = []
    for m in messages:
        inner = orjson.loads(orjson.loads(m["Body"])["Message"])
        if "Records" not in inner:
            continue  # provisioning's s3:TestEvent
        key_of[m["MessageId"]] = inner["Records"][0]["s3"]["object"]["key"]
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn(local),
                "attributes": {},
            }
        )
    assert len(records) == len(objects)
    return records, key_of


def queue_arn(local: LocalEnvironment) -> str:
    attrs = local.client("sqs").get_queue_attributes(QueueUrl=local.queue_url, AttributeNames=["QueueArn"])
    return str(attrs["Attributes"]["QueueArn"])


def runtime(local: LocalEnvironment) -> LambdaRuntime:
    return LambdaRuntime.from_env({**local.env, "CONSUMER_WORKERS": "1", "LAMBDA_TIME_RESERVE_SECONDS": "30"})


def emf_lines(text: str) -> list[dict[str, Any]]:
    return [d for d in (orjson.loads(line) for line in text.splitlines() if line.startswith("{")) if "_aws" in d]


def test_records_not_started_in_time_come_back_and_started_ones_finish(
    local_aws: LocalEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    records, key_of = sqs_records(local_aws, "acme", 4)
    response = runtime(local_aws).handle({"Records": records}, Context())

    first, rest = records[0]["messageId"], [r["messageId"] for r in records[1:]]
    assert response == {"batchItemFailures": [{"itemIdentifier": m} for m in rest]}
    delivered = {e.object_key for e in Ledger(local_aws.names.ledger_table).entries("acme")}
    from urllib.parse import unquote_plus

    assert delivered == {unquote_plus(key_of[first])}, "the started record finished, no other was started"
    docs = emf_lines(capsys.readouterr().out)
    released = [d for d in docs if d.get("outcome") == "released"]
    assert released and released[0]["logdelivery_messages_total"] == 3


def test_every_record_runs_with_time_to_spare(local_aws: LocalEnvironment) -> None:
    records, _ = sqs_records(local_aws, "acme", 3)
    response = runtime(local_aws).handle({"Records": records}, Context(then_ms=600_000))
    assert response == {"batchItemFailures": []}
    assert len(Ledger(local_aws.names.ledger_table).entries("acme")) == 3


def test_emf_lines_carry_the_prometheus_names_and_labels(
    local_aws: LocalEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    records, _ = sqs_records(local_aws, "acme", 2)
    runtime(local_aws).handle({"Records": records}, Context(then_ms=600_000))
    docs = emf_lines(capsys.readouterr().out)

    prometheus = {f.name + ("_total" if f.type == "counter" else "") for f in Metrics().registry.collect()}
    values: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for d in docs:
        (directive,) = d["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "LogDelivery"
        assert isinstance(d["_aws"]["Timestamp"], int)
        assert d["request_id"] == "req-7f3a"
        # A counter with a reason label is also published without it, for alarms keyed on the rest.
        for dims in directive["Dimensions"]:
            for m in directive["Metrics"]:
                assert m["Name"] in prometheus, m["Name"]
                values[(m["Name"], tuple((k, d[k]) for k in dims))] = d[m["Name"]]
    assert values[("logdelivery_objects_total", (("status", "delivered"), ("tenant", "acme")))] == 2
    assert values[("logdelivery_objects_total", (("reason", "none"), ("status", "delivered"), ("tenant", "acme")))] == 2
    assert values[("logdelivery_messages_total", (("outcome", "delivered"),))] == 2
    assert values[("logdelivery_messages_received_total", ())] == 2
    assert (
        values[("logdelivery_deliveries_total", (("status", "delivered"), ("tenant", "acme"), ("type", "cloudwatch")))]
        == 2
    )
    assert len(values[("logdelivery_object_duration_seconds", ())]) == 2


def test_json_logs_carry_the_request_id(local_aws: LocalEnvironment, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.setup("INFO")
        install_request_id_logging()
        records, _ = sqs_records(local_aws, "acme", 1)
        runtime(local_aws).handle({"Records": records}, Context(aws_request_id="req-42", then_ms=600_000))
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("msg", "").startswith(("object ", "lambda batch done"))]
    assert mine and all(line.get("request_id") == "req-42" for line in mine), lines


def test_emf_documents_split_at_100_values() -> None:
    m = EmfMetrics()
    for i in range(250):
        m.duration.observe(i / 1000)
    docs = [d for d in m.documents() if "logdelivery_object_duration_seconds" in d]
    assert [len(d["logdelivery_object_duration_seconds"]) for d in docs] == [100, 100, 50]
    assert NOT_STARTED  # the reason a record is handed back, as the logs show it


def test_records_of_a_destination_in_back_off_come_back_at_once_with_their_visibility_shortened(
    local_aws: LocalEnvironment, capsys: pytest.CaptureFixture[str]
) -> None:
    """acme's CloudWatch circuit is open (as after a throttled put): its records are not attempted, are
    listed in batchItemFailures, and their visibility is set to the grown delay (2 s here) rather than left
    at what the receive gave them (10 min), so they come back as soon as the destination may be probed."""
    records, _ = sqs_records(local_aws, "acme", 2)
    sqs = local_aws.client("sqs")
    for r in records:  # as an event source would have received them: invisible for the queue's long timeout
        sqs.change_message_visibility(
            QueueUrl=local_aws.queue_url, ReceiptHandle=r["receiptHandle"], VisibilityTimeout=600
        )
    rt = LambdaRuntime.from_env({**local_aws.env, "CONSUMER_WORKERS": "2", "BACKOFF_DELAY_SECONDS": "1"})
    assert rt.processor.circuits is not None
    # A clock that stands still: the circuit stays open through the test however slow the machine is.
    rt.processor.circuits = circuits = CircuitBreakers(base_s=2.0, cap_s=2.0, clock=lambda: 1000.0)
    circuits.report(("acme", "cloudwatch"), Verdict.THROTTLED, "PutLogEvents throttled", "ThrottlingException")
    bogus = {**records[1], "messageId": "stale", "receiptHandle": "not-a-receipt-handle"}

    response = rt.handle({"Records": [*records, bogus]}, Context(then_ms=600_000))

    assert sorted(f["itemIdentifier"] for f in response["batchItemFailures"]) == sorted(
        [r["messageId"] for r in records] + ["stale"]
    )
    assert Ledger(local_aws.names.ledger_table).entries("acme") == []  # held: nothing attempted
    # Visible again within seconds, not after the 10 minutes the receive set.
    back: set[str] = set()
    deadline = time.monotonic() + 30
    while back != {r["messageId"] for r in records} and time.monotonic() < deadline:
        got = sqs.receive_message(QueueUrl=local_aws.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        back |= {m["MessageId"] for m in got.get("Messages", [])}
    assert back == {r["messageId"] for r in records}
    docs = emf_lines(capsys.readouterr().out)
    errors = [d for d in docs if d.get("operation") == "ChangeMessageVisibility"]
    assert errors and errors[0]["logdelivery_sqs_errors_total"] == 1  # the bogus handle: only listed
    held = [d for d in docs if d.get("reason") == "throttled" and "logdelivery_deliveries_total" in d]
    assert held and held[0]["logdelivery_deliveries_total"] == 3
    gauge = [d for d in docs if "logdelivery_destinations_backing_off" in d]
    assert gauge and gauge[0]["tenant"] == "acme" and gauge[0]["delivery_type"] == "cloudwatch"
    assert gauge[0]["logdelivery_destinations_backing_off"] == 1
