"""The S3 sink: the source object's bytes, unchanged, into the tenant's own bucket (CONTRACTS.md §8).

This module is the one place the destination layout is written down:

    {bucket_prefix}{tenant_id}/{application}/{pod_name}/{filename}                          format: original
    {bucket_prefix}{tenant_id}/dt={YYYY-MM-DD}/application={application}/{pod_name}_{stem}.parquet  parquet

The cluster id is left out (it names the provider's cluster, not the tenant's). The same source object
always maps to the same key, so a resend overwrites it: S3 delivery is idempotent by construction. For
Parquet the date is the source key's write time (UTC), never an event's, for the same reason; the
partitions are Hive's, so Athena, Glue and pyarrow read them as columns. An `original` delivery without
content filters never decodes the object: what the tenant gets is byte for byte what the collector wrote.
With `include`/`exclude`, or as Parquet, the object is decoded and rendered by `pipeline.columnar`. Either
way the object carries metadata that traces it back to the source.

Every PutObject is signed with the tenant role's credentials (CONTRACTS.md §4), never the central
identity, and names the tenant's account as the expected bucket owner, so a bucket of the same name in
another account is never written. What is retried (SlowDown, 503 and other 5xx) is `pipeline.classify`'s
table for "s3", waited out with the shared backoff policy; a refusal (access denied, no such bucket, a KMS
key the role may not use) fails the delivery at once with a reason that says what the customer has to fix.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, ClassVar

from pipeline import aws
from pipeline.classify import Service
from pipeline.columnar import render
from pipeline.keys import FILENAME_EXTENSION, ObjectKey
from pipeline.records import DecodeStats
from pipeline.sinks import traits_of
from pipeline.sinks.base import SinkResult, SinkTraits, SourceObject, TenantWriter
from pipeline.tenants import Delivery

CONTENT_TYPE = "application/x-ndjson"
UNDATED = "1970-01-01"  # a Parquet object whose key has no write time and whose LastModified is unknown
GZIP_MAGIC = b"\x1f\x8b"


def destination_key(prefix: str, parsed: ObjectKey) -> str:
    """Where a source object lands in the tenant's bucket (format original)."""
    filename = parsed.filename.rsplit("/", 1)[-1]
    return f"{prefix}{parsed.tenant}/{parsed.application}/{parsed.pod}/{filename}"


def parquet_key(prefix: str, parsed: ObjectKey, last_modified: datetime | None = None) -> str:
    """Where a source object's Parquet lands: Hive partitions by the key's write date and application, one file
    per source object directly in its partition (the pod name and the source filename, less the collector's
    extension). Only when the filename carries no write time does the object's LastModified date it."""
    written = parsed.write_time or last_modified
    day = written.astimezone(UTC).strftime("%Y-%m-%d") if written else UNDATED
    filename = parsed.filename.rsplit("/", 1)[-1].removesuffix("." + FILENAME_EXTENSION)
    return f"{prefix}{parsed.tenant}/dt={day}/application={parsed.application}/{parsed.pod}_{filename}.parquet"


def delivered_key(dest: Delivery, source: SourceObject) -> str:
    """The key a source object takes in the delivery's bucket, by its format."""
    if dest.format == "parquet":
        return parquet_key(dest.bucket_prefix, source.parsed, source.last_modified)
    return destination_key(dest.bucket_prefix, source.parsed)


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
    service: ClassVar[Service] = "s3"

    def _client(self, dest: Delivery) -> Any:
        return self._creds.client(
            "s3", dest.tenant_id, dest.role_arn, dest.region, dest.hop_external_id, config=aws.S3_PUT_CONFIG
        )

    def put_object(self, dest: Delivery, source: SourceObject) -> SinkResult:
        key = delivered_key(dest, source)
        result = SinkResult()
        body, content_type = source.body, CONTENT_TYPE
        encoding = "gzip" if source.body.startswith(GZIP_MAGIC) else None  # plain bodies are valid sources too
        if dest.decodes:
            written = source.last_modified.timestamp() if source.last_modified else time.time()
            stats = DecodeStats(key=source.key)
            out = render(dest.format, dest.content_filter, source.body, source.parsed, int(written * 1000), stats)
            body, content_type, encoding = out.body, out.content_type, out.content_encoding
            result.events_delivered = out.rows
            result.events_filtered = result.events_filtered_content = out.filtered
            if not out.rows:
                return result  # the filter kept nothing: no object to store
        args: dict[str, Any] = {
            "Bucket": dest.bucket,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
            "Metadata": object_metadata(source),
            "ExpectedBucketOwner": dest.account_id,
        }
        if encoding:
            args["ContentEncoding"] = encoding
        if dest.kms_key_arn:
            args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=dest.kms_key_arn)
        self._call(
            dest,
            f"PutObject s3://{dest.bucket}/{key} for tenant {dest.tenant_id}",
            lambda: self._client(dest).put_object(**args),
            result,
            lambda code, message: refusal_reason(code, message, dest, key),
        )
        result.requests += 1
        result.bytes_delivered += len(body)
        return result
