"""Lambda mode against the local AWS: remaining-time awareness, EMF metrics with the Prometheus names, and
JSON logs carrying the request id. The handler runs in this process, as Lambda's runtime would run it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from devstack import generator as gen
from devstack.provision import LocalEnvironment
from pipeline import logs
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
        records.append({"messageId": m["MessageId"], "body": m["Body"], "eventSource": "aws:sqs", "attributes": {}})
    assert len(records) == len(objects)
    return records, key_of


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
        (dims,) = directive["Dimensions"]
        for m in directive["Metrics"]:
            assert m["Name"] in prometheus, m["Name"]
            values[(m["Name"], tuple((k, d[k]) for k in dims))] = d[m["Name"]]
    assert values[("logdelivery_objects_total", (("status", "delivered"), ("tenant", "acme")))] == 2
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
