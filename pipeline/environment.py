"""Startup checks of the AWS environment, and one line for each way it can be wrong.

Every entrypoint reads its bucket, tables and queue before it does any work, with the calls its role
already has (ListBucket, DescribeTable on the tenant table, GetItem on the ledger, GetQueueAttributes), and
looks for the programs its sinks run (the `vector` binary), so a wrong environment stops it at once with
one line naming the resource and the fix, and exit code 3, instead of a traceback from deep inside a
worker or a failure on every object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from pipeline import aws
from pipeline.classify import ACCESS_DENIED, BAD_CREDENTIALS, MISSING
from pipeline.errors import ConfigError
from pipeline.settings import Settings

# The ledger check reads an item no object can have: a key segment never contains "#".
PROBE_KEY = "#startup-check#"


class EnvironmentProblem(ConfigError):
    """The environment is wrong in a way only an operator can fix; the message says what and how."""


@dataclass(frozen=True)
class Resource:
    """What a startup read touches: its kind and name, and the setting that names it."""

    kind: str  # bucket, table, queue
    name: str
    setting: str  # S3_BUCKET_NAME, ...
    needs: str  # the permission the read needs, for an AccessDenied


def explain(exc: BaseException, resource: Resource | None = None) -> str | None:
    """One line for an AWS error that a wrong environment causes, or None for anything else."""
    what = f"{resource.kind} {resource.name!r} ({resource.setting})" if resource else "AWS"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (
            f"no AWS credentials for {what}: set AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run "
            "with a role (IRSA on Kubernetes)"
        )
    if isinstance(exc, NoRegionError):
        return f"no AWS region for {what}: set AWS_REGION"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url", "") or str(exc)
        return (
            f"cannot reach the endpoint of {what}: {endpoint}: check AWS_ENDPOINT_URL / "
            "AWS_ENDPOINT_URL_<SERVICE>, AWS_REGION and the network path (proxy, VPC endpoint, DNS)"
        )
    if isinstance(exc, ClientError):
        code = aws.error_code(exc)
        op = getattr(exc, "operation_name", "") or "the call"
        if code in MISSING and resource:
            return (
                f"{resource.kind} {resource.name!r} does not exist ({op}: {code}): check {resource.setting} "
                "and AWS_REGION"
            )
        if code in ACCESS_DENIED or (aws.http_status(exc) == 403 and code not in BAD_CREDENTIALS):
            needs = f"; the role needs {resource.needs}" if resource else ""
            return f"access denied to {what} ({op}: {code}){needs}: check the role's policy (and its KMS key)"
        if code in BAD_CREDENTIALS:
            return (
                f"the AWS credentials were refused ({code}) reading {what}: they are wrong or expired; check "
                "AWS_PROFILE / AWS_ACCESS_KEY_ID, or refresh the session"
            )
    if isinstance(exc, BotoCoreError) and resource is not None:
        return f"cannot read {what}: {exc}: check AWS_ENDPOINT_URL, AWS_REGION and credentials"
    return None


def _check(resource: Resource, call: Callable[..., object], **kwargs: Any) -> None:
    try:
        call(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        line = explain(exc, resource)
        if line is None:
            raise
        raise EnvironmentProblem(line) from exc


def check_bucket(bucket: str) -> None:
    r = Resource("bucket", bucket, "S3_BUCKET_NAME", "s3:ListBucket")
    _check(r, aws.client("s3").list_objects_v2, Bucket=bucket, MaxKeys=1)


def check_tenant_table(table: str) -> None:
    r = Resource("table", table, "TENANT_CONFIG_TABLE", "dynamodb:DescribeTable")
    _check(r, aws.client("dynamodb").describe_table, TableName=table)


def check_ledger_table(table: str) -> None:
    r = Resource("table", table, "DELIVERY_LEDGER_TABLE", "dynamodb:GetItem")
    key = {"tenant_id": {"S": PROBE_KEY}, "object_key": {"S": PROBE_KEY}}
    _check(r, aws.client("dynamodb").get_item, TableName=table, Key=key)


def check_queue(queue_url: str) -> None:
    r = Resource("queue", queue_url, "SQS_QUEUE_URL", "sqs:GetQueueAttributes")
    _check(r, aws.client("sqs").get_queue_attributes, QueueUrl=queue_url, AttributeNames=["VisibilityTimeout"])


def check_sink(sink: str) -> None:
    """The programs the sinks `sink` puts to work need (the vector binary): a missing one is a wrong image,
    which no retry fixes, so it stops the entrypoint here rather than failing every object later."""
    from pipeline.sinks import check_sinks  # the sink registry is not needed by the other checks

    try:
        check_sinks(sink)
    except ConfigError as exc:
        raise EnvironmentProblem(str(exc)) from exc


def check(
    settings: Settings,
    *,
    bucket: bool = False,
    tenant_table: bool = False,
    ledger_table: bool = False,
    queue: bool = False,
    sink: str | None = None,
) -> None:
    """Read each resource asked for once, and check what `sink` needs to run; raise EnvironmentProblem
    naming the first that fails."""
    if sink is not None:
        check_sink(sink)  # local and cheap: before any call that could wait on the network
    if bucket:
        check_bucket(settings.bucket)
    if tenant_table:
        check_tenant_table(settings.tenant_table)
    if ledger_table and settings.ledger_table:
        check_ledger_table(settings.ledger_table)
    if queue:
        check_queue(settings.queue_url)
