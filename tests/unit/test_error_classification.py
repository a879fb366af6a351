"""One error hierarchy, one classification table, one retry mechanism: each on its own, then where the
sinks, the broker, the ledger and the consumer meet them. No server: stubs and botocore's Stubber only."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.stub import Stubber

from pipeline import classify as classification
from pipeline.admin.store import TenantStore
from pipeline.classify import TABLE, Action, Remedy, classify, classify_error, describe, remedy
from pipeline.consumer.events import InvalidMessageError
from pipeline.consumer.metrics import Metrics
from pipeline.consumer.sqs import SqsConsumer, SqsOptions
from pipeline.credentials import CredentialBroker
from pipeline.environment import EnvironmentProblem, check_sink
from pipeline.errors import ConfigError, DeliveryError, NonRecoverableError, NotFound
from pipeline.keys import InvalidKeyError, parse_key
from pipeline.ledger import UNPROCESSED_ATTEMPTS, UNPROCESSED_RETRY, Ledger, LedgerEntry, LedgerError
from pipeline.retry import RetryPolicy
from pipeline.settings import Settings
from pipeline.sinks import check_sinks
from pipeline.sinks.base import SourceObject
from pipeline.sinks.cloudwatch.sink import CloudWatchSink
from pipeline.sinks.s3 import S3Sink
from pipeline.sinks.vector import resolve_binary
from pipeline.tenants import Delivery, DeliveryType, TenantConfigError, TenantDirectory

# ---------------------------------------------------------------------------------------------------------
# The hierarchy
# ---------------------------------------------------------------------------------------------------------


def test_invalid_key_is_non_recoverable_and_still_a_value_error() -> None:
    with pytest.raises(InvalidKeyError) as info:
        parse_key("a/b")
    exc = info.value
    assert isinstance(exc, NonRecoverableError) and isinstance(exc, DeliveryError) and isinstance(exc, ValueError)
    assert exc.recoverable is False
    assert exc.reason == "has 2 segments, needs at least 5"  # without the key: results name the key already
    assert str(exc).startswith("invalid object key 'a/b'")


def test_config_error_is_one_class_a_value_error_and_keeps_the_work() -> None:
    with pytest.raises(ConfigError) as raised:  # what settings raises is the hierarchy's class, no twin
        Settings().require("bucket")
    assert type(raised.value) is ConfigError
    exc = ConfigError("missing required setting(s): S3_BUCKET_NAME")
    assert isinstance(exc, ValueError) and isinstance(exc, DeliveryError)
    # Met mid-delivery, a deployment error must leave the message for after the fix, never acknowledge it.
    assert exc.recoverable is True and exc.reason == str(exc)
    assert issubclass(EnvironmentProblem, ConfigError)


@pytest.mark.parametrize(
    ("error", "recoverable"),
    [
        (DeliveryError("x"), True),
        (DeliveryError("x", recoverable=False), False),
        (NonRecoverableError("x"), False),
        (TenantConfigError("unknown tenant 'x'"), False),
        (InvalidMessageError("message body is empty"), False),
        (LedgerError("ledger table t: 3 keys still unprocessed"), True),
        (ConfigError("no vector"), True),
    ],
)
def test_every_error_says_whether_the_work_is_kept(error: DeliveryError, recoverable: bool) -> None:
    assert isinstance(error, DeliveryError)
    assert error.recoverable is recoverable


# ---------------------------------------------------------------------------------------------------------
# The classification table, code by code
# ---------------------------------------------------------------------------------------------------------

R, FR, F = Action.RETRY, Action.FAIL_RECOVERABLE, Action.FAIL


@pytest.mark.parametrize(
    ("service", "code", "status", "expected"),
    [
        # CloudWatch Logs: PutLogEvents, CreateLogStream, CreateLogGroup
        ("logs", "ThrottlingException", 400, R),
        ("logs", "ServiceUnavailableException", 503, R),
        ("logs", "OperationAbortedException", 400, R),
        ("logs", "ResourceNotFoundException", 400, FR),  # after the create the remedy allows: recoverable
        ("logs", "ExpiredTokenException", 400, FR),  # after one refresh
        ("logs", "AccessDeniedException", 400, FR),
        ("logs", "UnrecognizedClientException", 400, FR),
        ("logs", "LimitExceededException", 400, FR),
        ("logs", "InvalidParameterException", 400, F),
        ("logs", "Throttling", 400, FR),  # STS's word, not CloudWatch's: matching is exact per service
        ("logs", "DataAlreadyAcceptedException", 400, FR),
        # S3: GetObject from the central bucket, PutObject into the tenant's
        ("s3", "SlowDown", 503, R),
        ("s3", "ServiceUnavailable", 503, R),
        ("s3", "InternalError", 500, R),
        ("s3", "RequestTimeout", 400, R),
        ("s3", "503", 503, R),
        ("s3", "NoSuchKey", 404, F),
        ("s3", "NotFound", 404, F),
        ("s3", "NoSuchBucket", 404, FR),
        ("s3", "AccessDenied", 403, FR),
        ("s3", "AllAccessDisabled", 403, FR),
        ("s3", "ExpiredToken", 400, FR),
        ("s3", "KMS.AccessDeniedException", 400, FR),
        ("s3", "InvalidRequest", 400, FR),  # bucket-side settings (Object Lock, KMS): the customer's to fix
        # STS: AssumeRole
        ("sts", "Throttling", 400, R),
        ("sts", "IDPCommunicationError", 400, R),
        ("sts", "AccessDenied", 403, FR),
        ("sts", "RegionDisabledException", 403, FR),
        ("sts", "ExpiredToken", 400, FR),
        ("sts", "InvalidClientTokenId", 403, FR),
        ("sts", "ValidationError", 400, F),
        ("sts", "MalformedPolicyDocument", 400, F),
        ("sts", "ThrottlingException", 400, R),
        # DynamoDB: the ledger and the tenant table
        ("dynamodb", "ProvisionedThroughputExceededException", 400, R),
        ("dynamodb", "ThrottlingException", 400, R),
        ("dynamodb", "RequestLimitExceeded", 400, R),
        ("dynamodb", "InternalServerError", 500, R),
        ("dynamodb", "TransactionConflictException", 400, R),
        ("dynamodb", "ResourceNotFoundException", 400, FR),
        ("dynamodb", "AccessDeniedException", 400, FR),
        ("dynamodb", "ValidationException", 400, F),
        ("dynamodb", "ConditionalCheckFailedException", 400, F),
        # SQS: the consumer's queue, both protocols' names
        ("sqs", "RequestThrottled", 400, R),
        ("sqs", "ThrottlingException", 400, R),
        ("sqs", "OverLimit", 403, R),
        ("sqs", "KmsThrottled", 400, R),
        ("sqs", "AccessDenied", 403, FR),
        ("sqs", "KmsAccessDenied", 400, FR),
        ("sqs", "QueueDoesNotExist", 400, F),
        ("sqs", "AWS.SimpleQueueService.NonExistentQueue", 400, F),
        ("sqs", "InvalidAddress", 404, F),
        ("sqs", "ReceiptHandleIsInvalid", 400, F),
    ],
)
def test_code_by_code(service: Any, code: str, status: int, expected: Action) -> None:
    assert classify(service, code, status) is expected


@pytest.mark.parametrize("service", sorted(TABLE))
@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_5xx_and_429_are_retried_whatever_the_code(service: Any, status: int) -> None:
    assert classify(service, "", status) is R  # a load balancer's error page has no AWS code
    assert classify(service, "SomethingNew", status) is R
    assert classify(service, "InvalidParameterException", status) is R  # the status wins: it says transient


@pytest.mark.parametrize("service", sorted(TABLE))
@pytest.mark.parametrize("status", [0, 400, 403, 404])
def test_an_unknown_code_keeps_the_work(service: Any, status: int) -> None:
    """A refusal nobody filed yet must not drop data: recoverable, not retried, not acknowledged."""
    assert classify(service, "BrandNewException", status) is FR


def test_the_table_covers_every_service_the_pipeline_calls() -> None:
    assert set(TABLE) == {"logs", "s3", "sts", "dynamodb", "sqs"}
    for rules in TABLE.values():
        assert any(r.action is R for r in rules.values())
        for code, r in rules.items():
            assert code and code == code.strip()
            assert r.remedy is None or r.action is FR  # a remedy is tried before a verdict that keeps the work


@pytest.mark.parametrize(
    ("service", "code", "expected"),
    [
        ("logs", "ResourceNotFoundException", Remedy.CREATE_DESTINATION),
        ("logs", "ExpiredTokenException", Remedy.REFRESH_CREDENTIALS),
        ("logs", "ExpiredToken", Remedy.REFRESH_CREDENTIALS),
        ("logs", "RequestExpired", Remedy.REFRESH_CREDENTIALS),
        ("s3", "ExpiredToken", Remedy.REFRESH_CREDENTIALS),
        ("s3", "NoSuchBucket", None),  # the customer creates a bucket, not us
        ("sts", "ExpiredToken", None),  # the process's own session: botocore refreshes it
        ("dynamodb", "ResourceNotFoundException", None),  # a missing table is deployment, never created here
        ("logs", "ThrottlingException", None),
    ],
)
def test_remedies(service: Any, code: str, expected: Remedy | None) -> None:
    assert remedy(service, code) is expected


def client_error(code: str, status: int, operation: str = "Op") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code} message"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("SlowDown", 503), R),
        (client_error("NoSuchKey", 404), F),
        (EndpointConnectionError(endpoint_url="https://s3"), R),
        (ConnectionClosedError(endpoint_url="https://s3"), R),
        (ReadTimeoutError(endpoint_url="https://s3"), R),
        (NoCredentialsError(), FR),  # the process's setup, not the data
        (ValueError("not botocore at all"), FR),
    ],
)
def test_classify_error_reads_code_status_and_exception_type(exc: BaseException, expected: Action) -> None:
    assert classify_error("s3", exc) is expected


def test_describe_names_the_code_else_the_status_else_the_type() -> None:
    assert describe(client_error("SlowDown", 503)) == "SlowDown"
    assert describe(client_error("", 502)) == "HTTP 502"
    assert describe(EndpointConnectionError(endpoint_url="https://x")) == "EndpointConnectionError"


def test_the_startup_check_explains_with_the_same_code_families() -> None:
    from pipeline import environment

    assert environment.ACCESS_DENIED is classification.ACCESS_DENIED
    assert environment.MISSING is classification.MISSING


# ---------------------------------------------------------------------------------------------------------
# The mechanism alone
# ---------------------------------------------------------------------------------------------------------


class Sleeps(list[float]):
    def __call__(self, s: float) -> None:
        self.append(s)


@pytest.mark.parametrize("attempts", [1, 2, 5, 8])
def test_attempts_are_bounded(attempts: int) -> None:
    sleeps = Sleeps()
    retrying = RetryPolicy(attempts=attempts, base_s=0.1, cap_s=1.0).begin(sleeps)
    answers = [retrying.wait() for _ in range(attempts)]
    assert answers == [True] * (attempts - 1) + [False]  # `attempts` calls in all: attempts - 1 waits between
    assert len(sleeps) == attempts - 1 and retrying.failures == attempts


def test_each_delay_is_full_jitter_under_the_capped_exponential() -> None:
    random.seed(11)
    policy = RetryPolicy(attempts=40, base_s=0.05, cap_s=2.0)
    for _ in range(50):
        sleeps = Sleeps()
        retrying = policy.begin(sleeps)
        while retrying.wait():
            pass
        assert len(sleeps) == 39
        for n, d in enumerate(sleeps):
            assert 0 <= d <= min(policy.cap_s, policy.base_s * 2**n)
    late = [policy.delay(20) for _ in range(500)]
    assert max(late) <= 2.0 and max(late) > 1.6 and min(late) < 0.4  # capped, and the whole range is used


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_the_deadline_bounds_the_loop_in_time_and_no_wait_runs_past_it() -> None:
    clock = FakeClock()
    policy = RetryPolicy(attempts=10_000, base_s=1.0, cap_s=30.0, deadline_s=60.0)
    retrying = policy.begin(clock.sleep, clock)
    waits = 0
    while retrying.wait():
        waits += 1
        clock.t += 0.5  # the attempt itself takes time too
    assert 100.0 + 60.0 <= clock.t <= 100.0 + 60.0 + 0.5  # gave up at the deadline, not before, not long after
    assert waits < 10_000  # the deadline, not the attempts, ended it


def test_a_deadline_already_passed_stops_at_once() -> None:
    clock = FakeClock()
    retrying = RetryPolicy(attempts=5, deadline_s=1.0).begin(clock.sleep, clock)
    clock.t += 2.0
    assert retrying.wait() is False


def test_backoff_raises_a_recoverable_error_naming_what_and_how_often() -> None:
    retrying = RetryPolicy(attempts=3, base_s=0.0).begin(Sleeps())
    retrying.backoff("PutObject s3://b/k", "SlowDown")
    retrying.backoff("PutObject s3://b/k", "SlowDown")
    with pytest.raises(DeliveryError) as info:
        retrying.backoff("PutObject s3://b/k", "SlowDown")
    assert info.value.recoverable is True
    assert info.value.reason == "PutObject s3://b/k still failing after 3 attempts: SlowDown"


def test_a_policy_without_attempts_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one attempt"):
        RetryPolicy(attempts=0)


# ---------------------------------------------------------------------------------------------------------
# The ledger's batch rounds: bounded, backed off
# ---------------------------------------------------------------------------------------------------------


class AlwaysThrottled:
    """A DynamoDB that answers one key per batch call and leaves the rest unprocessed, forever."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        [(table, request)] = RequestItems.items()
        keys = request["Keys"]
        self.calls.append(len(keys))
        return {"Responses": {table: []}, "UnprocessedKeys": {table: {**request, "Keys": keys[1:]}}}

    def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        [(table, requests)] = RequestItems.items()
        self.calls.append(len(requests))
        return {"UnprocessedItems": {table: requests[1:]}}


def test_unprocessed_keys_give_up_after_the_policy_with_backoff_and_say_what_is_left() -> None:
    ddb = AlwaysThrottled()
    sleeps = Sleeps()
    ledger = Ledger("ledger-t", client=ddb, sleep=sleeps)
    with pytest.raises(LedgerError) as info:
        ledger.delivered_many("acme", [(f"c/acme/app/pod/{i:03d}.json.gz", "e") for i in range(40)])
    assert UNPROCESSED_RETRY.attempts == UNPROCESSED_ATTEMPTS + 1
    assert ddb.calls == list(range(40, 40 - UNPROCESSED_RETRY.attempts, -1))  # each round asks only for the rest
    assert len(sleeps) == UNPROCESSED_ATTEMPTS  # a wait between rounds, none after the last
    for n, d in enumerate(sleeps):
        assert 0 <= d <= min(UNPROCESSED_RETRY.cap_s, UNPROCESSED_RETRY.base_s * 2**n)
    left = 40 - UNPROCESSED_RETRY.attempts
    assert info.value.recoverable is True
    assert "ledger-t" in info.value.reason and f"{left} keys still unprocessed" in info.value.reason
    assert f"after {UNPROCESSED_RETRY.attempts} batch rounds" in info.value.reason


def test_unprocessed_items_of_a_batch_write_are_bounded_the_same_way() -> None:
    ddb = AlwaysThrottled()
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02)
    ledger = Ledger("ledger-t", client=ddb, sleep=sleeps, retry=policy)
    entries = [LedgerEntry("acme", f"c/acme/app/pod/{i}.json.gz", "e", delivery_id="s3") for i in range(10)]
    with pytest.raises(LedgerError, match=r"ledger-t: 7 keys still unprocessed after 3 batch rounds"):
        ledger.replace_items(entries)
    assert ddb.calls == [10, 9, 8] and len(sleeps) == 2


# ---------------------------------------------------------------------------------------------------------
# Where the table is read: sinks, broker, tenant directory
# ---------------------------------------------------------------------------------------------------------

ROLE = "arn:aws:iam::210987654321:role/CustomerLogDistribution-acme"
CW_DEST = Delivery("acme", "cloudwatch", DeliveryType.CLOUDWATCH, ROLE, "us-east-1", log_group="/logs/acme")
S3_DEST = Delivery(
    "acme", "archive", DeliveryType.S3, ROLE, "us-east-1", bucket="acme-logs", bucket_prefix="ROSA/cluster-logs/"
)


class ScriptedLogs:
    """PutLogEvents answers from a script; the body hook the sink registers is accepted and ignored."""

    def __init__(self, script: list[BaseException | dict[str, Any]]) -> None:
        self.script = list(script)
        self.calls: list[str] = []
        self.meta = SimpleNamespace(events=SimpleNamespace(register=lambda *a, **k: None))

    def _answer(self, name: str) -> dict[str, Any]:
        self.calls.append(name)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def put_log_events(self, **_: Any) -> dict[str, Any]:
        return self._answer("PutLogEvents")

    def create_log_stream(self, **_: Any) -> dict[str, Any]:
        return self._answer("CreateLogStream")

    def create_log_group(self, **_: Any) -> dict[str, Any]:
        return self._answer("CreateLogGroup")

    def put_object(self, **_: Any) -> dict[str, Any]:
        return self._answer("PutObject")


class StubBroker:
    def __init__(self, client: ScriptedLogs) -> None:
        self._client = client
        self.invalidated = 0

    def client(self, *_: Any, **__: Any) -> ScriptedLogs:
        return self._client

    def invalidate(self, *_: Any) -> None:
        self.invalidated += 1


@pytest.mark.parametrize(
    ("code", "recoverable"),
    [
        ("InvalidParameterException", False),  # the request itself is wrong: acknowledged, reported
        ("AccessDeniedException", True),  # the customer fixes the role, the message comes back
        ("LimitExceededException", True),
        ("SomethingNewException", True),
    ],
)
def test_cloudwatch_refusals_fail_at_once_as_the_table_says(code: str, recoverable: bool) -> None:
    logs = ScriptedLogs([client_error(code, 400, "PutLogEvents")])
    sleeps = Sleeps()
    sink = CloudWatchSink(credentials=StubBroker(logs), sleep=sleeps)
    with pytest.raises(DeliveryError) as info:
        sink.send(CW_DEST, "s", [(1_700_000_000_000, "m")])
    assert info.value.recoverable is recoverable and code in info.value.reason
    assert logs.calls == ["PutLogEvents"] and sleeps == []


def test_cloudwatch_create_is_retried_through_a_5xx_and_a_dropped_connection() -> None:
    logs = ScriptedLogs(
        [
            client_error("ResourceNotFoundException", 400, "PutLogEvents"),
            client_error("", 500, "CreateLogStream"),  # once fatal to the delivery; a 5xx is transient
            client_error("ResourceNotFoundException", 400, "PutLogEvents"),
            ConnectionClosedError(endpoint_url="https://logs"),
            client_error("ResourceNotFoundException", 400, "PutLogEvents"),
            {},
            {},
        ]
    )
    sleeps = Sleeps()
    sink = CloudWatchSink(credentials=StubBroker(logs), sleep=sleeps)
    result = sink.send(CW_DEST, "s", [(1_700_000_000_000, "m")])
    assert result.events_delivered == 1 and result.retries == 2 and len(sleeps) == 2
    assert logs.calls == ["PutLogEvents", "CreateLogStream"] * 3 + ["PutLogEvents"]


def test_cloudwatch_create_refused_for_good_is_non_recoverable() -> None:
    logs = ScriptedLogs(
        [
            client_error("ResourceNotFoundException", 400, "PutLogEvents"),
            client_error("InvalidParameterException", 400, "CreateLogStream"),
        ]
    )
    sink = CloudWatchSink(credentials=StubBroker(logs), sleep=Sleeps())
    with pytest.raises(DeliveryError, match="InvalidParameterException") as info:
        sink.send(CW_DEST, "s", [(1_700_000_000_000, "m")])
    assert info.value.recoverable is False


@pytest.mark.parametrize(
    ("code", "status", "recoverable"),
    [("AccessDenied", 403, True), ("NoSuchBucket", 404, True), ("InvalidRequest", 400, True)],
)
def test_s3_refusals_keep_todays_recoverable_outcome(code: str, status: int, recoverable: bool) -> None:
    s3 = ScriptedLogs([client_error(code, status, "PutObject")])
    sink = S3Sink(credentials=StubBroker(s3), sleep=Sleeps())
    key = "c/acme/app/pod/20240101-000000-x.json.gz"
    with pytest.raises(DeliveryError) as info:
        sink.put_object(S3_DEST, SourceObject("central", key, "e", b"{}", parse_key(key)))
    assert info.value.recoverable is recoverable and s3.calls == ["PutObject"]


@pytest.mark.parametrize(
    ("code", "status", "recoverable"),
    [("AccessDenied", 403, True), ("RegionDisabledException", 403, True), ("ValidationError", 400, False)],
)
def test_assume_role_failures_are_classified(code: str, status: int, recoverable: bool) -> None:
    sts = boto3.client("sts", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    broker = CredentialBroker("arn:aws:iam::123456789012:role/central", base_sts=sts)
    with Stubber(sts) as stub:
        stub.add_client_error("assume_role", code, "no", http_status_code=status)
        with pytest.raises(DeliveryError) as info:
            broker.central()
    assert info.value.recoverable is recoverable and code in info.value.reason


class ScriptedTable:
    def __init__(self, error: ClientError) -> None:
        self.error = error

    def describe_table(self, **_: Any) -> dict[str, Any]:
        return {"Table": {"KeySchema": [{"AttributeName": "tenant_id", "KeyType": "HASH"}]}}

    def query(self, **_: Any) -> dict[str, Any]:
        raise self.error

    def get_item(self, **_: Any) -> dict[str, Any]:
        raise self.error

    def get_paginator(self, name: str) -> Any:
        assert name == "query"
        return SimpleNamespace(paginate=lambda **kwargs: iter([self.query(**kwargs)]))


def test_a_tenant_query_the_table_can_never_answer_is_an_unknown_tenant() -> None:
    directory = TenantDirectory("tenants", client=ScriptedTable(client_error("ValidationException", 400, "Query")))
    with pytest.raises(TenantConfigError, match="unknown tenant 'acme'"):
        directory.get("acme")


def test_a_throttled_tenant_query_is_raised_for_the_caller_to_keep_the_work() -> None:
    error = client_error("ProvisionedThroughputExceededException", 400, "Query")
    with pytest.raises(ClientError):
        TenantDirectory("tenants", client=ScriptedTable(error)).get("acme")


def test_the_store_reads_a_key_the_table_can_never_hold_as_the_directory_does() -> None:
    """GetItem and Query ask one rule (tenants.never_held): no such tenant, not the table's trouble."""
    store = TenantStore("tenants", ddb=ScriptedTable(client_error("ValidationException", 400, "GetItem")))
    with pytest.raises(NotFound, match="unknown tenant 'acme'"):
        store.get("acme", "d-1")
    assert store.profile("acme") is None
    throttled = ScriptedTable(client_error("ProvisionedThroughputExceededException", 400, "GetItem"))
    with pytest.raises(ClientError):
        TenantStore("tenants", ddb=throttled).get("acme", "d-1")


# ---------------------------------------------------------------------------------------------------------
# A missing vector binary: a configuration error, found at startup
# ---------------------------------------------------------------------------------------------------------


def test_a_missing_vector_binary_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found on PATH"):
        resolve_binary(None, {"PATH": str(tmp_path)})
    with pytest.raises(ConfigError, match="does not exist or is not executable"):
        resolve_binary(None, {"VECTOR_BIN": str(tmp_path / "nope")})


def test_the_startup_check_finds_a_missing_vector_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("VECTOR_BIN", raising=False)
    check_sinks("cloudwatch")  # nothing to run: nothing to miss
    check_sinks("null")
    with pytest.raises(ConfigError, match="vector binary 'vector' not found on PATH"):
        check_sinks("vector")
    with pytest.raises(EnvironmentProblem, match="not found on PATH"):
        check_sink("vector")
    exe = tmp_path / "vector"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert os.access(exe, os.X_OK)
    check_sink("vector")


# ---------------------------------------------------------------------------------------------------------
# The consumer's receive loop: a FAIL stops it, anything else is bounded by the policy
# ---------------------------------------------------------------------------------------------------------


class ScriptedQueue:
    """ReceiveMessage answers from a script (an error to raise, or None for an empty receive); past its end,
    it repeats the last step, or asks the consumer to stop when that was a success."""

    def __init__(self, script: list[BaseException | None]) -> None:
        self.script = list(script)
        self.receives = 0
        self.stop: Any = None

    def receive_message(self, **_: Any) -> dict[str, Any]:
        step = self.script[min(self.receives, len(self.script) - 1)]
        self.receives += 1
        if isinstance(step, BaseException):
            raise step
        if self.receives >= len(self.script):
            self.stop()
        return {"Messages": []}


def consumer(queue: ScriptedQueue, policy: RetryPolicy) -> SqsConsumer:
    options = SqsOptions(
        queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/q",
        workers=1,
        wait_time_s=0,
        visibility_timeout_s=30,
        drain_timeout_s=1.0,
    )
    c = SqsConsumer(SimpleNamespace(metrics=Metrics()), queue, options, receive_retry=policy)
    queue.stop = c.request_stop
    return c


def test_a_queue_that_no_longer_exists_stops_the_consumer_with_a_config_error() -> None:
    queue = ScriptedQueue([client_error("AWS.SimpleQueueService.NonExistentQueue", 400, "ReceiveMessage")])
    c = consumer(queue, RetryPolicy(attempts=50, base_s=0.01, cap_s=0.01))
    with pytest.raises(ConfigError, match=r"does not exist .*SQS_QUEUE_URL"):
        c.run()
    assert queue.receives == 1 and c.state == "stopped"  # no retry: waiting cannot bring the queue back


def test_a_receive_that_keeps_failing_stops_after_the_policy_with_exit_1() -> None:
    queue = ScriptedQueue([client_error("RequestThrottled", 400, "ReceiveMessage")])
    c = consumer(queue, RetryPolicy(attempts=4, base_s=0.01, cap_s=0.01))
    assert c.run() == 1
    assert queue.receives == 4 and c.state == "stopped"
    assert c.metrics.sqs_errors.labels("ReceiveMessage")._value.get() == 4


def test_a_receive_that_succeeds_starts_the_policy_over() -> None:
    throttled = client_error("", 503, "ReceiveMessage")
    dropped = EndpointConnectionError(endpoint_url="https://sqs")
    # Six failures, never four in a row: the success between them resets the count.
    queue = ScriptedQueue([throttled, throttled, throttled, None, dropped, dropped, dropped, None])
    c = consumer(queue, RetryPolicy(attempts=4, base_s=0.0, cap_s=0.0))
    assert c.run() == 0
    assert queue.receives == 8
