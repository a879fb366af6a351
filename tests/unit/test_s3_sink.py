"""The S3 sink (CONTRACTS.md §8): the destination key, refusal reasons, and PutObject with its retries.

The retry tests give the sink a scripted broker and client, so every PutObject it makes is seen with its
arguments, and any attempt beyond what the script holds fails the test. One test at the end writes into a
sample tenant's bucket in the local AWS, with the real double-hop credentials.
"""

from __future__ import annotations

import string
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import aws
from pipeline.errors import DeliveryError
from pipeline.keys import ObjectKey, format_key, parse_key
from pipeline.retry import RetryPolicy
from pipeline.sinks import traits_of
from pipeline.sinks.s3 import CONTENT_TYPE, S3Sink, destination_key, object_metadata, refusal_reason
from pipeline.tenants import DEFAULT_BUCKET_PREFIX, Delivery, DeliveryType
from tests.support.s3_source import BODY, KEY, source

ACCOUNT = "444444444444"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/logging/CustomerLogDistribution-umbrella"
KMS = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DEST = Delivery(
    tenant_id="umbrella",
    delivery_id="s3-archive",
    type=DeliveryType.S3,
    role_arn=ROLE,
    region="us-east-1",
    bucket="umbrella-logs",
    bucket_prefix=DEFAULT_BUCKET_PREFIX,
)


# ---------------------------------------------------------------------------------------------------------
# destination_key
# ---------------------------------------------------------------------------------------------------------

LOWER = string.ascii_lowercase + string.digits


def segment(alphabet: str) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=1, max_size=12)


# Cluster ids in upper case, everything else in lower case: a cluster id can then only be in the key by
# being copied into it.
clusters = st.text(string.ascii_uppercase, min_size=3, max_size=12)
tenants = st.text(LOWER, min_size=1, max_size=1) | st.builds(lambda a, b: a + b, segment(LOWER + "-"), segment(LOWER))
tenants = tenants.filter(lambda t: t[0] != "-")
prefixes = st.one_of(
    st.just(""),
    st.just(DEFAULT_BUCKET_PREFIX.lower()),
    st.lists(segment(LOWER + "-_"), min_size=1, max_size=3).map(lambda p: "/".join(p) + "/"),
)
write_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC))
subdirs = st.lists(
    st.builds(lambda a, b: a + b, st.sampled_from(LOWER), st.text(LOWER + "-_.", max_size=8)), max_size=2
)


@st.composite
def object_keys(draw: st.DrawFn) -> ObjectKey:
    key = format_key(
        draw(clusters),
        draw(tenants),
        draw(segment(LOWER + "-")).strip("-") or "app",
        draw(segment(LOWER + "-")).strip("-") or "pod",
        draw(write_times),
        str(draw(st.uuids())),
    )
    parts = key.split("/")
    # The layout allows more segments after the pod (CONTRACTS.md §1: at least 5).
    more = draw(subdirs)
    return parse_key("/".join(parts[:4] + more + parts[4:]))


@settings(max_examples=300, deadline=None)
@given(parsed=object_keys(), prefix=prefixes)
def test_destination_key_layout(parsed: ObjectKey, prefix: str) -> None:
    key = destination_key(prefix, parsed)
    last = parsed.key.rsplit("/", 1)[1]
    assert parsed.cluster not in key  # the provider's cluster is not the tenant's business
    assert key.startswith(prefix)
    assert key == f"{prefix}{parsed.tenant}/{parsed.application}/{parsed.pod}/{last}"
    assert key.endswith("/" + last)  # the source's last segment, kept as it is
    assert "//" not in key and not key.startswith("/")
    # The same source object maps to the same key, whichever cluster's copy of the layout it came from.
    assert destination_key(prefix, parse_key(parsed.key)) == key
    assert destination_key(prefix, replace(parsed, cluster="other-cluster")) == key


def test_destination_key_example() -> None:
    assert (
        destination_key("ROSA/cluster-logs/", parse_key(KEY)) == "ROSA/cluster-logs/umbrella/payment-service/pay-7d9f/"
        "20240620-110000-00000000-0000-4000-8000-000000000000.json.gz"
    )
    assert destination_key("", parse_key(KEY)).startswith("umbrella/payment-service/")


# ---------------------------------------------------------------------------------------------------------
# refusal_reason
# ---------------------------------------------------------------------------------------------------------


def test_refusal_access_denied_says_which_permission_on_which_resource() -> None:
    reason = refusal_reason("AccessDenied", "Access Denied", DEST, "ROSA/cluster-logs/umbrella/x")
    assert reason.startswith("AccessDenied writing s3://umbrella-logs/ROSA/cluster-logs/umbrella/x")
    assert ROLE in reason
    assert "s3:PutObject on arn:aws:s3:::umbrella-logs/ROSA/cluster-logs/*" in reason
    assert ACCOUNT in reason  # the bucket must be the tenant's own


def test_refusal_no_such_bucket_names_bucket_account_and_region() -> None:
    reason = refusal_reason("NoSuchBucket", "The specified bucket does not exist", DEST, "k")
    assert reason == f"NoSuchBucket: bucket 'umbrella-logs' does not exist in account {ACCOUNT} (us-east-1)"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("KMS.AccessDeniedException", "denied"),
        ("KMS.DisabledException", "key disabled"),
        ("AccessDenied", "User is not authorized to perform: kms:GenerateDataKey on resource"),
    ],
)
def test_refusal_kms_names_the_key_and_the_permission(code: str, message: str) -> None:
    reason = refusal_reason(code, message, replace(DEST, kms_key_arn=KMS), "k")
    assert reason.startswith(f"{code} writing s3://umbrella-logs/k")
    assert KMS in reason and ROLE in reason
    assert "kms:GenerateDataKey" in reason
    # Without a key of its own, the bucket's default key is the one in question.
    assert "(the bucket default)" in refusal_reason(code, message, DEST, "k")


def test_refusal_other_codes_keep_the_service_message() -> None:
    assert (
        refusal_reason("InvalidRequest", "bad header", DEST, "k")
        == "InvalidRequest writing s3://umbrella-logs/k: bad header"
    )
    assert refusal_reason("", "no code", DEST, "k").startswith("error writing")


# ---------------------------------------------------------------------------------------------------------
# S3Sink.put_object with a scripted client
# ---------------------------------------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code} message"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


class ScriptedS3:
    """put_object answers from a script: an exception to raise, or a response."""

    def __init__(self, script: list[BaseException | dict[str, Any]]) -> None:
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        assert self.script, "a PutObject the test did not expect"
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


class StubBroker:
    """The broker calls the sink makes: a client per (tenant role, external id), and invalidate."""

    def __init__(self, s3: ScriptedS3) -> None:
        self.s3 = s3
        self.clients: list[tuple[Any, ...]] = []
        self.invalidated: list[tuple[str, str | None]] = []

    def client(
        self,
        service: str,
        tenant_id: str,
        role_arn: str,
        region: str,
        external_id: str | None = None,
        config: Any = None,
    ) -> ScriptedS3:
        self.clients.append((service, tenant_id, role_arn, region, external_id, config))
        return self.s3

    def invalidate(self, role_arn: str, external_id: str | None = None) -> None:
        self.invalidated.append((role_arn, external_id))


class Sleeps(list[float]):
    def __call__(self, s: float) -> None:
        self.append(s)


OK: dict[str, Any] = {"ETag": '"abc"'}


def sink_with(
    script: list[BaseException | dict[str, Any]], policy: RetryPolicy | None = None
) -> tuple[S3Sink, ScriptedS3, StubBroker, Sleeps]:
    s3 = ScriptedS3(script)
    broker = StubBroker(s3)
    sleeps = Sleeps()
    return S3Sink(credentials=broker, retry=policy, sleep=sleeps), s3, broker, sleeps  # type: ignore[arg-type]


def test_put_object_arguments() -> None:
    sink, s3, broker, sleeps = sink_with([OK])
    result = sink.put_object(DEST, source())
    [args] = s3.calls
    assert args == {
        "Bucket": "umbrella-logs",
        "Key": destination_key(DEST.bucket_prefix, parse_key(KEY)),
        "Body": BODY,  # the bytes as the collector wrote them
        "ContentType": CONTENT_TYPE,
        "ContentEncoding": "gzip",
        "Metadata": {"source-bucket": "central-logs", "source-key": KEY, "source-etag": "0123456789abcdef"},
        "ExpectedBucketOwner": ACCOUNT,  # the tenant's account, from the role ARN (with its IAM path)
    }
    assert CONTENT_TYPE == "application/x-ndjson"
    assert (result.requests, result.bytes_delivered, result.retries, result.events_delivered) == (1, len(BODY), 0, 0)
    assert sleeps == []
    # With the tenant role's credentials (the second hop), with botocore's own retries off.
    assert broker.clients == [("s3", "umbrella", ROLE, "us-east-1", None, aws.S3_PUT_CONFIG)]


def test_object_metadata() -> None:
    assert object_metadata(source()) == {
        "source-bucket": "central-logs",
        "source-key": KEY,
        "source-etag": "0123456789abcdef",
    }


def test_content_encoding_gzip_only_for_gzip_bodies() -> None:
    plain = b'{"message":"plain"}\n'  # a plain body is a valid source too (CONTRACTS.md §2)
    sink, s3, _, _ = sink_with([OK, OK])
    sink.put_object(DEST, source(plain))
    sink.put_object(DEST, source(BODY))
    assert "ContentEncoding" not in s3.calls[0] and s3.calls[0]["Body"] == plain
    assert s3.calls[0]["ContentType"] == CONTENT_TYPE
    assert s3.calls[1]["ContentEncoding"] == "gzip"


def test_sse_kms_with_the_deliverys_key_only() -> None:
    sink, s3, _, _ = sink_with([OK, OK])
    sink.put_object(replace(DEST, kms_key_arn=KMS), source())
    sink.put_object(DEST, source())
    assert (s3.calls[0]["ServerSideEncryption"], s3.calls[0]["SSEKMSKeyId"]) == ("aws:kms", KMS)
    # No key of its own: the bucket's default encryption applies, nothing is asked for.
    assert "ServerSideEncryption" not in s3.calls[1] and "SSEKMSKeyId" not in s3.calls[1]


def test_the_deliverys_external_id_reaches_the_broker() -> None:
    sink, _, broker, _ = sink_with([OK])
    sink.put_object(replace(DEST, external_id="tenant-umbrella-1"), source())
    assert broker.clients[0][4] == "tenant-umbrella-1"


def test_slowdown_and_5xx_are_retried_with_backoff() -> None:
    script: list[BaseException | dict[str, Any]] = [
        client_error("SlowDown", 503),
        client_error("ServiceUnavailable", 503),
        client_error("InternalError", 500),
        client_error("", 502),  # a bare 5xx without an error code
        client_error("RequestTimeout", 400),
        EndpointConnectionError(endpoint_url="https://s3.amazonaws.com"),
        OK,
    ]
    policy = RetryPolicy(attempts=8, base_s=0.1, cap_s=0.3)
    sink, s3, _, sleeps = sink_with(script, policy)
    result = sink.put_object(DEST, source())
    assert len(s3.calls) == 7 and result.retries == 6 and result.requests == 1
    assert len(sleeps) == 6
    for attempt, d in enumerate(sleeps):
        assert 0 <= d <= min(policy.cap_s, policy.base_s * 2**attempt)
    assert all(c == s3.calls[0] for c in s3.calls)  # the same request each time: PutObject overwrites


@pytest.mark.parametrize("attempts", [1, 3, 5])
def test_retries_are_bounded_by_the_policy_then_a_recoverable_delivery_error(attempts: int) -> None:
    sink, s3, _, sleeps = sink_with([client_error("SlowDown", 503)] * attempts, RetryPolicy(attempts=attempts))
    with pytest.raises(DeliveryError) as info:
        sink.put_object(DEST, source())
    assert len(s3.calls) == attempts  # exactly `attempts` puts, no more
    assert len(sleeps) == attempts - 1
    assert info.value.recoverable is True
    assert "SlowDown" in info.value.reason and f"{attempts} attempts" in info.value.reason
    assert "umbrella-logs" in info.value.reason


@pytest.mark.parametrize(
    ("code", "status", "fragment"),
    [
        ("AccessDenied", 403, "s3:PutObject"),
        ("NoSuchBucket", 404, "does not exist"),
        ("KMS.AccessDeniedException", 400, "kms:GenerateDataKey"),
        ("InvalidRequest", 400, "InvalidRequest"),
    ],
)
def test_refusals_are_not_retried(code: str, status: int, fragment: str) -> None:
    sink, s3, broker, sleeps = sink_with([client_error(code, status)])
    with pytest.raises(DeliveryError) as info:
        sink.put_object(DEST, source())
    assert len(s3.calls) == 1 and sleeps == []
    assert fragment in info.value.reason
    assert info.value.reason.startswith(code)
    assert broker.invalidated == []


def test_expired_credentials_are_refreshed_once() -> None:
    dest = replace(DEST, external_id="tenant-umbrella-1")
    sink, s3, broker, sleeps = sink_with([client_error("ExpiredToken", 400), OK])
    assert sink.put_object(dest, source()).requests == 1
    assert broker.invalidated == [(ROLE, "tenant-umbrella-1")]
    assert len(s3.calls) == 2 and sleeps == []
    # Twice in a row is not an expiry a refresh can fix.
    sink, s3, broker, _ = sink_with([client_error("ExpiredToken", 400), client_error("ExpiredToken", 400)])
    with pytest.raises(DeliveryError, match="ExpiredToken"):
        sink.put_object(dest, source())
    assert len(broker.invalidated) == 1 and len(s3.calls) == 2


def test_traits_and_flush() -> None:
    assert S3Sink.traits is traits_of("s3")
    sink, _, _, _ = sink_with([])
    sink.flush()  # nothing pending: PutObject had returned
    sink.close()


def test_refused_attempts_are_counted_and_ride_on_the_error() -> None:
    """The writers' one loop (`TenantWriter._call`) counts what the wire saw for S3 as for CloudWatch: every
    refused attempt in requests_refused, every wait in retries, carried by the error as `sent`."""
    sink, s3, _, sleeps = sink_with([client_error("SlowDown", 503), client_error("AccessDenied", 403)])
    with pytest.raises(DeliveryError) as info:
        sink.put_object(DEST, source())
    assert len(s3.calls) == 2 and len(sleeps) == 1
    assert info.value.sent is not None
    assert (info.value.sent.requests, info.value.sent.requests_refused, info.value.sent.retries) == (0, 2, 1)
    assert info.value.code == "AccessDenied" and info.value.reason.startswith("AccessDenied writing s3://")
