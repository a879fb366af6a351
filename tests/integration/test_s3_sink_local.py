"""The S3 sink into a sample tenant's own bucket in the local AWS (moto), with the real double-hop
credentials. The sink's pure parts and its retries are tests/unit/test_s3_sink.py."""

from __future__ import annotations

from devstack.provision import LocalEnvironment
from pipeline.credentials import CredentialBroker
from pipeline.keys import parse_key
from pipeline.sinks.s3 import CONTENT_TYPE, S3Sink, destination_key, object_metadata
from pipeline.tenants import DEFAULT_BUCKET_PREFIX, Delivery, DeliveryType
from tests.support.s3_source import BODY, KEY, source


def test_put_object_into_the_tenants_bucket(local_aws: LocalEnvironment) -> None:
    t = local_aws.tenant("umbrella")
    dest = Delivery(
        tenant_id=t.tenant_id,
        delivery_id="s3-archive",
        type=DeliveryType.S3,
        role_arn=t.role_arn,
        region=t.region,
        bucket=t.bucket,
        bucket_prefix=DEFAULT_BUCKET_PREFIX,
    )
    broker = CredentialBroker(local_aws.central_role_arn)
    result = S3Sink(credentials=broker).put_object(dest, source())
    assert result.bytes_delivered == len(BODY)
    got = local_aws.tenant_s3("umbrella").get_object(
        Bucket=t.bucket, Key=destination_key(DEFAULT_BUCKET_PREFIX, parse_key(KEY))
    )
    assert got["Body"].read() == BODY  # byte for byte
    assert got["ContentType"] == CONTENT_TYPE and got["ContentEncoding"] == "gzip"
    assert got["Metadata"] == object_metadata(source())
    # A resend overwrites the same key: idempotent by construction.
    S3Sink(credentials=broker).put_object(dest, source())
    listed = local_aws.tenant_s3("umbrella").list_objects_v2(Bucket=t.bucket)
    assert [o["Key"] for o in listed["Contents"]] == [destination_key(DEFAULT_BUCKET_PREFIX, parse_key(KEY))]
