"""Provision the embedded local AWS with everything the system needs, plus sample tenants.

Each sample tenant lives in its own AWS account id; moto keeps a separate CloudWatch per account, so
cross-account delivery (and its isolation) is real here, not simulated.

Each sample tenant has a profile (CONTRACTS.md §3: its account, and an ExternalId of its own) unless it is
made `legacy`. The provisioned ExternalId is derived from the tenant id, so a test can name it without
reading the table; `make demo` and the onboarding tests create profiles through the tools instead, which
generate theirs. moto's STS does not check ExternalId: the tests read it on the wire (devstack/faults.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from boto3.dynamodb.types import TypeSerializer

from pipeline.settings import Settings
from pipeline.tenants import (
    DEFAULT_BUCKET_PREFIX,
    PROFILE_ID,
    V1_DELIVERY_ID,
    Delivery,
    TableSchema,
    bind,
    parse_delivery,
    parse_profile,
)

CENTRAL_ACCOUNT_ID = "123456789012"  # moto's default account plays the central (processor's) account
DEFAULT_REGION = "us-east-1"
CENTRAL_ROLE_NAME = "CentralLogDistributionRole"
CUSTOMER_ROLE_PREFIX = "CustomerLogDistribution-"
BUCKET_NAME_MAX = 63
# moto accepts any credentials; these are obviously not real ones.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass(frozen=True)
class SampleBucket:
    """An S3 delivery of a sample tenant: a bucket in the tenant's own account."""

    delivery_id: str = "s3-archive"
    desired_logs: tuple[str, ...] | None = None
    prefix: str = DEFAULT_BUCKET_PREFIX


@dataclass(frozen=True)
class SampleTenant:
    tenant_id: str
    account_id: str
    region: str = DEFAULT_REGION
    enabled: bool = True
    desired_logs: tuple[str, ...] | None = None  # of the CloudWatch delivery
    cloudwatch: bool = True  # a CloudWatch delivery `cloudwatch` into log_group
    s3: SampleBucket | None = None
    clusters: tuple[str, ...] | None = None  # of every delivery: the clusters whose logs it accepts
    external_id: str | None = None  # legacy only: of every delivery (an item from before profiles)
    role_path: str = ""  # an IAM path for its role, "logging/" for role/logging/CustomerLogDistribution-<t>
    legacy: bool = False  # no profile: delivered with its deliveries' external_id, else the central account id

    @property
    def profile_external_id(self) -> str:
        """The ExternalId of its profile: 256 bits derived from the tenant id, in STS's alphabet (43 characters,
        as `generate_external_id` makes them), so that tests know it without reading it back."""
        digest = hashlib.sha256(f"devstack-external-id/{self.tenant_id}".encode()).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    @property
    def hop_external_id(self) -> str:
        """What its second hop sends, and what its role trusts (CONTRACTS.md §4)."""
        if not self.legacy:
            return self.profile_external_id
        return self.external_id or CENTRAL_ACCOUNT_ID

    def profile_item(self) -> dict[str, Any]:
        """The `_tenant` item of its profile: its own account, its ExternalId."""
        return {
            "tenant_id": self.tenant_id,
            "delivery_id": PROFILE_ID,
            "accounts": [self.account_id],
            "external_id": self.profile_external_id,
        }

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{self.role_path}{CUSTOMER_ROLE_PREFIX}{self.tenant_id}"

    @property
    def log_group(self) -> str:
        return f"/logs/{self.tenant_id}"

    @property
    def bucket(self) -> str:
        """`{tenant}-logs-{account}`; a tenant id too long for S3's 63 characters is cut and given a digest."""
        name = f"{self.tenant_id}-logs-{self.account_id}"
        if len(name) <= BUCKET_NAME_MAX:
            return name
        digest = hashlib.sha256(self.tenant_id.encode()).hexdigest()[:12]
        return f"{self.tenant_id[:24].rstrip('-')}-{digest}-{self.account_id}"

    def config_item(self) -> dict[str, Any]:
        """The v1 item of its CloudWatch delivery (a v1 table holds nothing else)."""
        item: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "log_distribution_role_arn": self.role_arn,
            "log_group_name": self.log_group,
            "target_region": self.region,
            "enabled": self.enabled,
        }
        if self.desired_logs is not None:
            item["desired_logs"] = list(self.desired_logs)
        item.update(self._shared_fields())
        return item

    def _shared_fields(self) -> dict[str, Any]:
        shared: dict[str, Any] = {}
        if self.clusters is not None:
            shared["clusters"] = list(self.clusters)
        if self.external_id is not None:
            shared["external_id"] = self.external_id
        return shared

    def delivery(self, delivery_id: str = V1_DELIVERY_ID) -> Delivery:
        """One of its deliveries, validated and bound to its profile as the delivery path reads it."""
        item = next(i for i in self.delivery_items() if i["delivery_id"] == delivery_id)
        return bind(parse_delivery(item), None if self.legacy else parse_profile(self.profile_item()))

    def delivery_items(self) -> list[dict[str, Any]]:
        """The v2 items of every delivery it has."""
        items = []
        if self.cloudwatch:
            items.append({**self.config_item(), "delivery_id": V1_DELIVERY_ID, "type": "cloudwatch"})
        if self.s3 is not None:
            item: dict[str, Any] = {
                "tenant_id": self.tenant_id,
                "delivery_id": self.s3.delivery_id,
                "type": "s3",
                "log_distribution_role_arn": self.role_arn,
                "target_region": self.region,
                "enabled": self.enabled,
                "bucket_name": self.bucket,
                "bucket_prefix": self.s3.prefix,
            }
            if self.s3.desired_logs is not None:
                item["desired_logs"] = list(self.s3.desired_logs)
            item.update(self._shared_fields())
            items.append(item)
        return items


SAMPLE_TENANTS: tuple[SampleTenant, ...] = (
    SampleTenant("acme", "111111111111"),
    # Mixed case on purpose: desired_logs matches application names case-insensitively.
    SampleTenant("globex", "222222222222", region="eu-west-1", desired_logs=("Payment-Service", "frontend")),
    SampleTenant("initech", "333333333333", enabled=False),
    # Both destinations, each with its own filter: a hot set in CloudWatch, every application in S3.
    SampleTenant("umbrella", "444444444444", desired_logs=("payment-service",), s3=SampleBucket()),
    # S3 only: never decoded.
    SampleTenant("hooli", "555555555555", region="eu-west-1", cloudwatch=False, s3=SampleBucket("archive")),
)


@dataclass(frozen=True)
class ResourceNames:
    bucket: str = f"central-logs-{CENTRAL_ACCOUNT_ID}-{DEFAULT_REGION}"
    tenant_table: str = "tenant-configs"
    ledger_table: str = "delivery-ledger"
    nonce_table: str = "tenant-api-nonces"
    status_table: str = "delivery-status"
    replay_table: str = "replay-requests"
    topic: str = "central-logs-object-created"
    queue: str = "log-delivery"
    dlq: str = "log-delivery-dlq"


@dataclass
class LocalEnvironment:
    endpoint_url: str
    region: str
    names: ResourceNames
    tenants: tuple[SampleTenant, ...]
    topic_arn: str = ""
    queue_url: str = ""
    dlq_url: str = ""
    central_role_arn: str = f"arn:aws:iam::{CENTRAL_ACCOUNT_ID}:role/{CENTRAL_ROLE_NAME}"
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The environment that points every client and entrypoint at this stack."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            **LOCAL_CREDENTIALS,
            "S3_BUCKET_NAME": self.names.bucket,
            "TENANT_CONFIG_TABLE": self.names.tenant_table,
            "DELIVERY_LEDGER_TABLE": self.names.ledger_table,
            "API_NONCE_TABLE": self.names.nonce_table,
            "DELIVERY_STATUS_TABLE": self.names.status_table,
            "REPLAY_REQUEST_TABLE": self.names.replay_table,
            "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN": self.central_role_arn,
            "SQS_QUEUE_URL": self.queue_url,
            **self.extra_env,
        }

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def tenant(self, tenant_id: str) -> SampleTenant:
        return next(t for t in self.tenants if t.tenant_id == tenant_id)

    def client(self, service: str, region: str | None = None, account_id: str | None = None) -> Any:
        """A client in the central account, or in a tenant's account (through moto's assume-role)."""
        return self.client_with(self.credentials(account_id), service, region)

    def credentials(self, account_id: str | None = None) -> dict[str, str]:
        """Client credentials in the central account, or a tenant's (one assume-role call)."""
        creds: dict[str, str] = {
            "aws_access_key_id": LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }
        if account_id and account_id != CENTRAL_ACCOUNT_ID:
            sts = boto3.client("sts", endpoint_url=self.endpoint_url, region_name=self.region, **creds)
            c = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/LocalAdmin", RoleSessionName="local-admin")[
                "Credentials"
            ]
            creds = {
                "aws_access_key_id": c["AccessKeyId"],
                "aws_secret_access_key": c["SecretAccessKey"],
                "aws_session_token": c["SessionToken"],
            }
        return creds

    def client_with(self, creds: dict[str, str], service: str, region: str | None = None) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=region or self.region, **creds)

    def tenant_logs(self, tenant_id: str) -> Any:
        t = self.tenant(tenant_id)
        return self.client("logs", region=t.region, account_id=t.account_id)

    def tenant_s3(self, tenant_id: str) -> Any:
        """An S3 client in the tenant's own account: its bucket is readable only from there."""
        t = self.tenant(tenant_id)
        return self.client("s3", region=t.region, account_id=t.account_id)


def _trust_policy(principal_arn: str, external_id: str | None = None) -> str:
    stmt: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": principal_arn},
        "Action": "sts:AssumeRole",
    }
    if external_id:
        stmt["Condition"] = {"StringEquals": {"sts:ExternalId": external_id}}
    return json.dumps({"Version": "2012-10-17", "Statement": [stmt]})


def provision(
    endpoint_url: str,
    tenants: Sequence[SampleTenant] = SAMPLE_TENANTS,
    names: ResourceNames | None = None,
    region: str = DEFAULT_REGION,
    tenant_schema: TableSchema = TableSchema.V2,
) -> LocalEnvironment:
    """Create the central resources and the sample tenants. Idempotent enough for a fresh server.

    The tenant table is v2 (what new deployments create) unless `tenant_schema` asks for an older one.
    """
    local = LocalEnvironment(endpoint_url, region, names or ResourceNames(), tuple(tenants))
    n = local.names

    iam = local.client("iam")
    iam.create_role(
        RoleName=CENTRAL_ROLE_NAME,
        AssumeRolePolicyDocument=_trust_policy(f"arn:aws:iam::{CENTRAL_ACCOUNT_ID}:root"),
    )

    s3 = local.client("s3")
    s3.create_bucket(Bucket=n.bucket)

    ddb = local.client("dynamodb")
    create_tenant_table(ddb, n.tenant_table, tenant_schema)
    ddb.create_table(
        TableName=n.ledger_table,
        KeySchema=[
            {"AttributeName": "tenant_id", "KeyType": "HASH"},
            {"AttributeName": "object_key", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "tenant_id", "AttributeType": "S"},
            {"AttributeName": "object_key", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    create_nonce_table(ddb, n.nonce_table)
    create_status_table(ddb, n.status_table)
    create_replay_table(ddb, n.replay_table)

    sqs = local.client("sqs")
    local.dlq_url = sqs.create_queue(QueueName=n.dlq)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=local.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    local.queue_url = sqs.create_queue(
        QueueName=n.queue,
        Attributes={
            "VisibilityTimeout": "900",
            "ReceiveMessageWaitTimeSeconds": "20",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=local.queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]

    sns = local.client("sns")
    local.topic_arn = sns.create_topic(Name=n.topic)["TopicArn"]
    sns.subscribe(TopicArn=local.topic_arn, Protocol="sqs", Endpoint=queue_arn)
    s3.put_bucket_notification_configuration(
        Bucket=n.bucket,
        NotificationConfiguration={
            "TopicConfigurations": [
                {
                    "TopicArn": local.topic_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".gz"}]}},
                }
            ]
        },
    )

    add_tenants(local, tenants)
    return local


def create_tenant_table(ddb: Any, name: str, schema: TableSchema = TableSchema.V2) -> None:
    """A tenant table of either shape (CONTRACTS.md §3)."""
    keys = [("tenant_id", "HASH")] + ([("delivery_id", "RANGE")] if schema is TableSchema.V2 else [])
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": a, "KeyType": k} for a, k in keys],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a, _ in keys],
        BillingMode="PAY_PER_REQUEST",
    )


def create_expiring_table(ddb: Any, name: str, *keys: str) -> None:
    """A table of string keys (the first the hash key, a second the range key) whose items expire by TTL on
    `expires_at`."""
    roles = ("HASH", "RANGE")
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": a, "KeyType": k} for a, k in zip(keys, roles, strict=False)],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in keys],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})


def create_nonce_table(ddb: Any, name: str) -> None:
    """The tenant API's nonce table (pipeline/api/nonces.py): hash key `nonce`."""
    create_expiring_table(ddb, name, "nonce")


def create_status_table(ddb: Any, name: str) -> None:
    """Each delivery's status (pipeline/status.py): hash `tenant_id`, range `delivery_id`."""
    create_expiring_table(ddb, name, "tenant_id", "delivery_id")


def create_replay_table(ddb: Any, name: str) -> None:
    """Redelivery requests (pipeline/replay/requests.py): hash `tenant_id`, range `replay_id`."""
    create_expiring_table(ddb, name, "tenant_id", "replay_id")


def add_tenants(local: LocalEnvironment, tenants: Iterable[SampleTenant]) -> None:
    """Register tenants in the config table and create their role, log group and bucket in their own account."""
    table = local.client("dynamodb")
    keys = table.describe_table(TableName=local.names.tenant_table)["Table"]["KeySchema"]
    v2 = len(keys) == 2
    ser = TypeSerializer()
    for t in tenants:
        # A v1 table holds one CloudWatch delivery per tenant: an S3-only tenant has nothing to put there, and
        # no profile (profiles are table v2 only: a v1 tenant is always legacy).
        profile = [t.profile_item()] if v2 and not t.legacy else []
        for item in profile + t.delivery_items() if v2 else [t.config_item()] if t.cloudwatch else []:
            table.put_item(TableName=local.names.tenant_table, Item={k: ser.serialize(v) for k, v in item.items()})
        create_tenant_resources(local, t)


def create_tenant_resources(local: LocalEnvironment, t: SampleTenant, external_id: str | None = None) -> None:
    """A tenant's side only: its role (trusting the central role with its ExternalId: `external_id` when a tool
    generated it, else the sample tenant's), group and bucket, in its own account, and nothing in the tenant
    table (for onboarding it through the CLI or the API)."""
    # One assume-role for the tenant's three clients: the tests provision a fresh world ~150 times a run, and
    # an STS client and call per client were a third of each provision.
    creds = local.credentials(t.account_id)
    iam = local.client_with(creds, "iam")
    iam.create_role(
        RoleName=t.role_arn.rsplit("/", 1)[1],
        Path=f"/{t.role_path}",
        AssumeRolePolicyDocument=_trust_policy(local.central_role_arn, external_id=external_id or t.hop_external_id),
    )
    if t.cloudwatch:
        local.client_with(creds, "logs", t.region).create_log_group(logGroupName=t.log_group)
    if t.s3 is not None:
        # Made with credentials in the tenant's account, so the bucket belongs to it, not to the central one.
        s3 = local.client_with(creds, "s3", t.region)
        config = {} if t.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": t.region}}
        s3.create_bucket(Bucket=t.bucket, **config)
