"""Unwrapping SQS bodies into object references (CONTRACTS.md §6): every shape, no AWS."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.consumer.events import InvalidMessageError, parse_body, unwrap_sqs_message
from pipeline.consumer.processor import MessageOutcome
from pipeline.delivery.results import ObjectResult, Status

BUCKET = "central-logs-123456789012-us-east-1"
KEY = "prod-1/acme/payment-service/payment-7d9f/20240101-000000-0b9e.json.gz"


def s3_record(key: str = KEY, name: str = "ObjectCreated:Put", **obj: Any) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2024-01-01T00:00:01.500Z",
        "eventName": name,
        "s3": {"bucket": {"name": BUCKET}, "object": {"key": key, "size": 123, "eTag": "abc123", **obj}},
    }


def s3_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def sns(message: dict[str, Any] | str) -> str:
    inner = message if isinstance(message, str) else orjson.dumps(message).decode()
    return orjson.dumps({"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:…", "Message": inner}).decode()


@pytest.mark.parametrize("wrap", [sns, lambda e: orjson.dumps(e).decode()], ids=["sns-envelope", "raw-s3-event"])
def test_object_created_in_either_shape(wrap: Any) -> None:
    parsed = parse_body(wrap(s3_event(s3_record())))
    [ref] = parsed.refs
    assert (ref.bucket, ref.key, ref.etag, ref.size) == (BUCKET, KEY, "abc123", 123)
    assert ref.last_modified == datetime(2024, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)
    assert parsed.skipped == parsed.rejected == []


def test_keys_are_url_decoded_with_unquote_plus() -> None:
    encoded = "prod-1%2Facme%2Fpayment-service%2Fpod-1%2F20240101-000000-a+b%2Bc%3D.json.gz"
    [ref] = parse_body(sns(s3_event(s3_record(key=encoded)))).refs
    assert ref.key == "prod-1/acme/payment-service/pod-1/20240101-000000-a b+c=.json.gz"


@pytest.mark.parametrize("wrap", [sns, lambda e: orjson.dumps(e).decode()], ids=["sns-envelope", "raw-s3-event"])
def test_s3_test_event_is_skipped(wrap: Any) -> None:
    parsed = parse_body(wrap({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET}))
    assert parsed.refs == [] and parsed.skipped == ["s3:TestEvent"]


def test_only_object_created_records_are_kept() -> None:
    parsed = parse_body(
        sns(
            s3_event(
                s3_record(name="ObjectRemoved:Delete"),
                s3_record(key="a%2Fb", name="ObjectCreated:CompleteMultipartUpload"),
                s3_record(name="ObjectRestore:Completed"),
                {**s3_record(), "eventSource": "aws:sqs"},
            )
        )
    )
    assert [r.key for r in parsed.refs] == ["a/b"]
    assert len(parsed.skipped) == 3
    assert "ObjectRemoved:Delete" in parsed.skipped[0]


def test_a_broken_record_is_rejected_without_losing_the_others() -> None:
    broken = s3_record()
    del broken["s3"]["object"]["key"]
    parsed = parse_body(sns(s3_event(broken, s3_record(), "not a record")))  # type: ignore[arg-type]
    assert [r.key for r in parsed.refs] == [KEY]
    assert len(parsed.rejected) == 2
    assert "record 0" in parsed.rejected[0] and "record 2" in parsed.rejected[1]


def test_sns_subscription_confirmation_is_skipped() -> None:
    parsed = parse_body(orjson.dumps({"Type": "SubscriptionConfirmation", "Message": "You have chosen…"}))
    assert parsed.refs == [] and parsed.skipped == ["SNS SubscriptionConfirmation"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "empty"),
        ("<html>502 Bad Gateway</html>", "message body is not JSON"),
        ("[1, 2]", "not an object"),
        (sns("{not json"), "SNS Message is not JSON"),
        (orjson.dumps({"Type": "Notification", "Message": {"Records": []}}).decode(), "without a string Message"),
        (orjson.dumps({"hello": "world"}).decode(), "no Records list"),
        (sns({"Records": "nope"}), "no Records list"),
    ],
)
def test_bodies_that_are_not_s3_events_are_non_recoverable(body: str, reason: str) -> None:
    with pytest.raises(InvalidMessageError) as err:
        parse_body(body)
    assert reason in err.value.reason
    assert err.value.recoverable is False


def test_not_json_error_carries_a_short_sample() -> None:
    with pytest.raises(InvalidMessageError) as err:
        parse_body("x" * 10_000)
    assert "xxxx" in err.value.reason and len(err.value.reason) < 400


def test_unwrap_whole_sqs_messages() -> None:
    assert unwrap_sqs_message({"MessageId": "a", "Body": "b"}) == ("a", "b")
    assert unwrap_sqs_message({"messageId": "a", "body": "b", "eventSource": "aws:sqs"}) == ("a", "b")
    assert unwrap_sqs_message(s3_event(s3_record())) is None
    assert unwrap_sqs_message([1]) is None


def result(status: Status, recoverable: bool = False) -> ObjectResult:
    return ObjectResult(key=KEY, status=status, recoverable=recoverable, tenant="acme")


@pytest.mark.parametrize(
    ("results", "rejected", "outcome", "acknowledged"),
    [
        ([result(Status.DELIVERED)], [], "delivered", True),
        ([result(Status.DAMAGED), result(Status.SKIPPED)], [], "delivered", True),
        ([result(Status.SKIPPED)], [], "skipped", True),
        ([], [], "ignored", True),
        ([], ["message body is not JSON"], "rejected", True),
        ([result(Status.DELIVERED), result(Status.FAILED)], [], "rejected", True),
        # One recoverable failure keeps the whole message, even next to a non-recoverable one.
        ([result(Status.FAILED), result(Status.FAILED, recoverable=True)], [], "retried", False),
    ],
)
def test_message_outcome(results: list[ObjectResult], rejected: list[str], outcome: str, acknowledged: bool) -> None:
    o = MessageOutcome("m", results=results, rejected=rejected)
    assert (o.outcome, o.acknowledged) == (outcome, acknowledged)


def test_an_unexpected_error_is_retried() -> None:
    o = MessageOutcome("m", results=[result(Status.DELIVERED)], error="RuntimeError: boom")
    assert (o.outcome, o.acknowledged, o.failed) == ("retried", False, True)
