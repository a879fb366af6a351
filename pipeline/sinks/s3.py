"""The S3 sink: the source object's bytes, unchanged, into the tenant's own bucket (CONTRACTS.md §8).

This module is the one place the destination layout is written down:

    {bucket_prefix}{tenant_id}/{application}/{pod_name}/{filename}

The cluster id is left out (it names the provider's cluster, not the tenant's). The same source object
always maps to the same key, so a resend overwrites it: S3 delivery is idempotent by construction. The
object is never decoded: what the tenant gets is byte for byte what the collector wrote, with metadata
that traces it back to the source.

Every PutObject is signed with the tenant role's credentials (CONTRACTS.md §4), never the central
identity, and names the tenant's account as the expected bucket owner, so a bucket of the same name in
another account is never written. What is retried (SlowDown, 503 and other 5xx) is `pipeline.classify`'s
table for "s3", waited out with the shared backoff policy; a refusal (access denied, no such bucket, a KMS
key the role may not use) fails the delivery at once with a reason that says what the customer has to fix.
"""

from __future__ import annotations

from typing import Any, ClassVar

from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.classify import NETWORK_ERRORS, Action, Remedy, classify, describe, remedy
from pipeline.errors import DeliveryError
from pipeline.keys import ObjectKey
from pipeline.sinks import traits_of
from pipeline.sinks.base import SinkResult, SinkTraits, SourceObject, TenantWriter
from pipeline.tenants import Delivery

CONTENT_TYPE = "application/x-ndjson"
GZIP_MAGIC = b"\x1f\x8b"


def destination_key(prefix: str, parsed: ObjectKey) -> str:
    """Where a source object lands in the tenant's bucket."""
    filename = parsed.filename.rsplit("/", 1)[-1]
    return f"{prefix}{parsed.tenant}/{parsed.application}/{parsed.pod}/{filename}"


def object_metadata(source: SourceObject) -> dict[str, str]:
    """User metadata (x-amz-meta-*) that traces a delivered object back to the central bucket."""
    return {"source-bucket": source.bucket, "source-key": source.key, "source-etag": source.etag}


def refusal_reason(code: str, message: str, dest: Delivery, key: str) -> str:
    """What the customer has to fix, in words, for a PutObject the tenant's account refused."""
    where = f"s3://{dest.bucket}/{key}"
    if code.startswith("KMS.") or "kms" in message.lower():
        return (
            f"{code} writing {where}: the role {dest.role_arn} may not use the KMS key "
            f"{dest.kms_key_arn or '(the bucket default)'}; it needs kms:GenerateDataKey on it"
        )
    if code == "NoSuchBucket":
        return f"NoSuchBucket: bucket {dest.bucket!r} does not exist in account {dest.account_id} ({dest.region})"
    if code in ("AccessDenied", "AllAccessDisabled", "AccessDeniedException"):
        return (
            f"AccessDenied writing {where}: the role {dest.role_arn} needs s3:PutObject on "
            f"arn:aws:s3:::{dest.bucket}/{dest.bucket_prefix}*, and the bucket (owned by {dest.account_id}) "
            "must not deny it"
        )
    return f"{code or 'error'} writing {where}: {message}"


class S3Sink(TenantWriter):
    name: ClassVar[str] = "s3"
    traits: ClassVar[SinkTraits] = traits_of(name)

    def _client(self, dest: Delivery) -> Any:
        return self._creds.client(
            "s3", dest.tenant_id, dest.role_arn, dest.region, dest.hop_external_id, config=aws.S3_PUT_CONFIG
        )

    def put_object(self, dest: Delivery, source: SourceObject) -> SinkResult:
        key = destination_key(dest.bucket_prefix, source.parsed)
        args: dict[str, Any] = {
            "Bucket": dest.bucket,
            "Key": key,
            "Body": source.body,
            "ContentType": CONTENT_TYPE,
            "Metadata": object_metadata(source),
            "ExpectedBucketOwner": dest.account_id,
        }
        if source.body.startswith(GZIP_MAGIC):  # plain bodies are valid sources too (CONTRACTS.md §2)
            args["ContentEncoding"] = "gzip"
        if dest.kms_key_arn:
            args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=dest.kms_key_arn)
        what = f"PutObject s3://{dest.bucket}/{key} for tenant {dest.tenant_id}"
        result = SinkResult()
        refreshed = False
        retrying = self._retry.begin(self._sleep)
        while True:
            try:
                self._client(dest).put_object(**args)
                break
            except ClientError as exc:
                code, status = aws.error_code(exc), aws.http_status(exc)
                if remedy("s3", code) is Remedy.REFRESH_CREDENTIALS and not refreshed:
                    self._creds.invalidate(dest.role_arn, dest.hop_external_id)
                    refreshed = True
                    continue
                action = classify("s3", code, status)
                if action is Action.RETRY:
                    retrying.backoff(what, describe(exc))
                    result.retries += 1
                    continue
                message = str(exc.response.get("Error", {}).get("Message", ""))
                raise DeliveryError(
                    refusal_reason(code, message, dest, key)[:500],
                    recoverable=action is not Action.FAIL,
                    code=describe(exc),
                ) from exc
            except NETWORK_ERRORS as exc:
                retrying.backoff(what, type(exc).__name__)
                result.retries += 1
        result.requests += 1
        result.bytes_delivered += len(source.body)
        return result
