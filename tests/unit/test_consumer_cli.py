"""The consumer CLI as a subprocess: configuration errors exit 3 before touching AWS, usage errors 2,
and manual mode reports a body that is not an S3 event without any AWS call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]
# Points nowhere: any AWS call would fail to connect, so a passing test proves none was made.
OFFLINE = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_MAX_ATTEMPTS": "1",
}
CONFIGURED = {
    **OFFLINE,
    "S3_BUCKET_NAME": "central-logs",
    "TENANT_CONFIG_TABLE": "tenant-configs",
    "DELIVERY_LEDGER_TABLE": "delivery-ledger",
    "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/CentralLogDistributionRole",
    "SQS_QUEUE_URL": "http://127.0.0.1:9/123456789012/log-delivery",
    "METRICS_PORT": "0",
}


def run(args: list[str], env: dict[str, str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SQS_", "TENANT_", "DELIVERY_"))}
    base.pop("EXECUTION_MODE", None)
    return subprocess.run(
        [sys.executable, "-m", "jobs.consumer", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        env={**base, **env},
        timeout=60,
    )


@pytest.mark.parametrize("mode", ["sqs", "manual"])
def test_missing_configuration_exits_3_naming_the_variables(mode: str) -> None:
    proc = run(["--mode", mode], OFFLINE)
    assert proc.returncode == 3
    assert b"TENANT_CONFIG_TABLE" in proc.stderr and b"CENTRAL_LOG_DISTRIBUTION_ROLE_ARN" in proc.stderr
    assert b"S3_BUCKET_NAME" in proc.stderr  # the only bucket the consumer delivers from


@pytest.mark.parametrize("mode", ["sqs", "manual", "lambda"])
def test_missing_bucket_exits_3_in_every_mode(mode: str) -> None:
    env = {k: v for k, v in CONFIGURED.items() if k != "S3_BUCKET_NAME"}
    proc = run(["--mode", mode], env, stdin=b'{"Records": []}')
    assert proc.returncode == 3 and b"S3_BUCKET_NAME" in proc.stderr, proc.stderr.decode()


def test_missing_queue_url_exits_3() -> None:
    env = {k: v for k, v in CONFIGURED.items() if k != "SQS_QUEUE_URL"}
    proc = run(["--mode", "sqs"], env)
    assert proc.returncode == 3 and b"SQS_QUEUE_URL" in proc.stderr


def test_heartbeat_not_shorter_than_visibility_exits_3() -> None:
    proc = run(["--visibility-timeout", "5", "--heartbeat-interval", "5"], CONFIGURED)
    assert proc.returncode == 3
    assert b"heartbeat interval" in proc.stderr


def test_execution_mode_env_selects_the_mode() -> None:
    proc = run([], {**CONFIGURED, "EXECUTION_MODE": "manual"}, stdin=b"this is not json")
    assert proc.returncode == 1
    report = orjson.loads(proc.stdout)
    assert report["outcome"] == "rejected" and "message body is not JSON" in report["rejected"][0]


def test_bad_usage_exits_2() -> None:
    assert run(["--mode", "batch"], CONFIGURED).returncode == 2
    assert run(["--mode", "sqs", "--sink", "null"], CONFIGURED).returncode == 2


def test_lambda_mode_outside_lambda_answers_one_event_from_stdin() -> None:
    event = {"Records": [{"messageId": "m-1", "body": '{"Event": "s3:TestEvent"}', "eventSource": "aws:sqs"}]}
    proc = run(["--mode", "lambda"], CONFIGURED, stdin=orjson.dumps(event))
    assert proc.returncode == 0, proc.stderr.decode()
    assert orjson.loads(proc.stdout) == {"batchItemFailures": []}


def test_module_exposes_the_lambda_handler() -> None:
    code = "import jobs.consumer as c; print(callable(c.lambda_handler))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    assert proc.stdout.strip() == b"True", proc.stderr.decode()
