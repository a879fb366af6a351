"""Unwrapping what arrives on the queue into object references (CONTRACTS.md §6).

An SQS body is either an SNS envelope (`{"Type": "Notification", "Message": "<S3 event JSON>"}`) or, with
SNS raw delivery or S3 → SQS directly, the S3 event itself. `s3:TestEvent` (sent when the bucket
notification is configured) and anything other than `ObjectCreated:*` are skipped. Keys in S3 events are
URL-encoded (`+` for a space, `%2F`...), so they are decoded with `unquote_plus` before anyone parses them.

Pure functions over plain values: no AWS calls, so every shape is unit-tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import orjson

from pipeline.delivery.routing import ObjectRef
from pipeline.errors import NonRecoverableError

S3_TEST_EVENT = "s3:TestEvent"
OBJECT_CREATED_PREFIX = "ObjectCreated:"
SNS_NOTIFICATION = "Notification"
# SNS sends these to an SQS subscription once, before any notification; there is nothing to deliver.
SNS_CONTROL_TYPES = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})
_SAMPLE_CHARS = 120


class InvalidMessageError(NonRecoverableError):
    """A body that is not an S3 event in any shape we accept. Retrying cannot change a body."""


@dataclass
class ParsedMessage:
    """What one SQS body asks for."""

    refs: list[ObjectRef] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # by design: test events, other event names
    rejected: list[str] = field(default_factory=list)  # records that are broken: reported, never retried


def _sample(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text[:_SAMPLE_CHARS] + ("…" if len(text) > _SAMPLE_CHARS else "")


def _loads(text: str | bytes, what: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessageError(f"{what} is not JSON ({exc}): {_sample(text)!r}") from exc


def parse_body(body: str | bytes) -> ParsedMessage:
    """The object references in one SQS message body, or InvalidMessageError saying why there are none."""
    if not body:
        raise InvalidMessageError("message body is empty")
    doc = _loads(body, "message body")
    if not isinstance(doc, dict):
        raise InvalidMessageError(f"message body is JSON but not an object: {_sample(body)!r}")
    kind = doc.get("Type")
    if kind in SNS_CONTROL_TYPES:
        return ParsedMessage(skipped=[f"SNS {kind}"])
    if kind == SNS_NOTIFICATION:
        inner = doc.get("Message")
        if not isinstance(inner, str):
            raise InvalidMessageError("SNS notification without a string Message")
        doc = _loads(inner, "SNS Message")
        if not isinstance(doc, dict):
            raise InvalidMessageError(f"SNS Message is JSON but not an object: {_sample(inner)!r}")
    return parse_s3_event(doc)


def parse_s3_event(event: dict[str, Any]) -> ParsedMessage:
    """The ObjectCreated records of an S3 event notification, as ObjectRefs."""
    if event.get("Event") == S3_TEST_EVENT:
        return ParsedMessage(skipped=[S3_TEST_EVENT])
    records = event.get("Records")
    if not isinstance(records, list):
        raise InvalidMessageError(f"not an S3 event notification (no Records list): keys {sorted(event)[:10]}")
    parsed = ParsedMessage()
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            parsed.rejected.append(f"record {i} is not an object")
            continue
        source, name = record.get("eventSource"), str(record.get("eventName", ""))
        if source != "aws:s3" or not name.startswith(OBJECT_CREATED_PREFIX):
            parsed.skipped.append(f"record {i}: {source} {name or '(no eventName)'}")
            continue
        try:
            parsed.refs.append(_object_ref(record))
        except (KeyError, TypeError, ValueError) as exc:
            parsed.rejected.append(f"record {i} ({name}) has no usable bucket/key: {type(exc).__name__}: {exc}")
    return parsed


def _object_ref(record: dict[str, Any]) -> ObjectRef:
    s3 = record["s3"]
    bucket = s3["bucket"]["name"]
    raw_key = s3["object"]["key"]
    if not isinstance(bucket, str) or not bucket or not isinstance(raw_key, str) or not raw_key:
        raise ValueError("empty or non-string bucket name or key")
    obj = s3["object"]
    etag = obj.get("eTag") or obj.get("etag")
    size = obj.get("size")
    return ObjectRef(
        bucket=bucket,
        key=unquote_plus(raw_key),
        etag=str(etag) if etag else None,
        size=int(size) if isinstance(size, int | float) else None,
        # Only a fallback: delivery takes LastModified from GetObject, which is authoritative.
        last_modified=_event_time(record.get("eventTime")),
    )


def _event_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def unwrap_sqs_message(doc: Any) -> tuple[str, str] | None:
    """(message id, body) when `doc` is a whole SQS message (CLI `Body` or Lambda `body` spelling).

    Lets an operator paste what `aws sqs receive-message` or a Lambda test event shows into manual mode.
    """
    if isinstance(doc, dict):
        for body_key, id_key in (("Body", "MessageId"), ("body", "messageId")):
            body = doc.get(body_key)
            if isinstance(body, str):
                return str(doc.get(id_key, "")), body
    return None
