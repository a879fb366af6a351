"""Deploy every template into the embedded moto server with CloudFormation create_stack, in the order
deploy.sh uses, passing earlier stacks' outputs on, and check the resources exist and are configured.

moto's CloudFormation skips resource types it does not implement (it logs "No Moto CloudFormation
support"): AWS::SNS::TopicPolicy, AWS::S3::BucketPolicy, AWS::SQS::QueuePolicy and
AWS::SNS::Subscription. Its S3 bucket keeps only encryption and tags (not the public access block,
lifecycle or notifications), IAM roles drop ManagedPolicyArns, DynamoDB drops the CloudFormation form of
SSESpecification and Lambda drops PackageType. Those are checked statically in test_infra_cfn_static.py;
test_only_known_resource_types_are_skipped below fails if anything else goes missing.
"""

from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess
import urllib.parse
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from infra_helpers import ACCOUNT, CFN_DIR, REGION, TEMPLATES, Resolver, load_template, template_params

MOTO_SKIPS = {"AWS::SNS::TopicPolicy", "AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy", "AWS::SNS::Subscription",
              # moto's CloudFormation does not create these (the tenant API's secret and HTTP API), or
              # gives them no physical id (the permission API Gateway invokes the function with).
              "AWS::SecretsManager::Secret", "AWS::ApiGatewayV2::Api", "AWS::ApiGatewayV2::Integration",
              "AWS::ApiGatewayV2::Route", "AWS::ApiGatewayV2::Stage", "AWS::Lambda::Permission",
              # moto creates no alarms (checked statically in test_infra_cfn_static.py)
              "AWS::CloudWatch::Alarm"}  # fmt: skip
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/log-processor:1.0"
API_IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/log-tenant-api:1.0"
OIDC = "oidc.example.com/id/ABC"
# Tenants deploy the customer template in their own accounts (moto keeps accounts apart by credentials).
BUCKET_TENANT = "111111111111"  # creates its bucket, SSE-KMS with its own key
EXISTING_BUCKET_TENANT = "222222222222"  # brings an existing bucket, no key
ARCHIVE_BUCKET = "acme-archive-111111111111"
# Each tenant's role requires the ExternalId the provider generated for it (CONTRACTS.md §3).
ACME_EXTERNAL_ID = "acme-generated-by-the-provider-0123456789"
OWN_EXTERNAL_ID = "globex-generated-by-the-provider-7f3a9c01"
NEXT_EXTERNAL_ID = "acme-next-id-during-a-rotation-abcdef0123"
EXT = ("--external-id", ACME_EXTERNAL_ID)  # what every customer deploy.sh command needs
EXISTING_BUCKET = "globex-logs-222222222222"

pytestmark = pytest.mark.integration


class Deployed:
    def __init__(self, endpoint_url: str) -> None:
        self.kw = {
            "endpoint_url": endpoint_url,
            "region_name": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        self.cfn = self.client("cloudformation")
        self.outputs: dict[str, dict[str, str]] = {}
        self.stacks: dict[str, tuple[str, dict[str, str], str]] = {}  # stack key -> (template, params, account)

    def client(self, service: str, account: str = ACCOUNT) -> Any:
        if account == ACCOUNT:
            return boto3.client(service, **self.kw)
        creds = self.client("sts").assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/Admin", RoleSessionName="infra-test"
        )["Credentials"]
        return boto3.client(
            service,
            endpoint_url=self.kw["endpoint_url"],
            region_name=REGION,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    def deploy(self, name: str, *, key: str | None = None, account: str = ACCOUNT, **params: str) -> dict[str, str]:
        """Create stack it-<key> (default: the template's name) from template `name`, in `account`."""
        key = key or name
        cfn = self.client("cloudformation", account)
        cfn.create_stack(
            StackName=f"it-{key}",
            TemplateBody=TEMPLATES[name].read_text(),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            Capabilities=["CAPABILITY_NAMED_IAM"],
        )
        stack = cfn.describe_stacks(StackName=f"it-{key}")["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        self.outputs[key] = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        self.stacks[key] = (name, params, account)
        return self.outputs[key]


@pytest.fixture(scope="module")
def deployed(moto_server: Any) -> Iterator[Deployed]:
    moto_server.reset()
    d = Deployed(moto_server.endpoint_url)
    g = d.deploy("global")
    central = g["CentralLogDistributionRoleArn"]
    core = d.deploy("core", CentralLogDistributionRoleArn=central)
    sqs = d.deploy("sqs", TopicArn=core["TopicArn"])
    d.deploy(
        "lambda",
        EcrImageUri=IMAGE,
        ProcessorRoleArn=core["ProcessorRoleArn"],
        ProcessorRoleName=core["ProcessorRoleName"],
        QueueArn=sqs["QueueArn"],
        BucketName=core["BucketName"],
        TenantConfigTableName=core["TenantConfigTableName"],
        DeliveryLedgerTableName=core["DeliveryLedgerTableName"],
        DeliveryStatusTableName=core["DeliveryStatusTableName"],
        LedgerRetentionDays=core["LedgerRetentionDays"],
        CentralLogDistributionRoleArn=central,
    )
    d.deploy(
        "tenant-api",
        EcrImageUri=API_IMAGE,
        TenantConfigTableName=core["TenantTableV2Name"],
        ApiNonceTableName=core["ApiNonceTableName"],
        LogsKeyArn=core["LogsKeyArn"],
        CentralLogDistributionRoleArn=central,
    )
    d.deploy("customer", CentralLogDistributionRoleArn=central, LogGroupName="/logs/acme", ExternalId=ACME_EXTERNAL_ID)
    d.deploy(
        "cluster",
        ClusterName="prod-1",
        OidcProvider=OIDC,
        BucketName=core["BucketName"],
        LogsKeyArn=core["LogsKeyArn"],
        DeliveryPolicyArn=core["DeliveryPolicyArn"],
        QueueConsumerPolicyArn=sqs["QueueConsumerPolicyArn"],
        TenantConfigTableName=core["TenantTableV2Name"],
        ApiNonceTableName=core["ApiNonceTableName"],
        CentralLogDistributionRoleArn=central,
    )
    # A cluster stack deployed as before the tenant API (no central role): it still deploys, without that role.
    d.deploy(
        "cluster",
        key="cluster-collect-only",
        ClusterName="prod-2",
        OidcProvider=OIDC,
        BucketName=core["BucketName"],
        LogsKeyArn=core["LogsKeyArn"],
        DeliveryPolicyArn=core["DeliveryPolicyArn"],
    )
    d.deploy("replay", ClusterName="prod-1", OidcProvider=OIDC, DeliveryPolicyArn=core["DeliveryPolicyArn"])
    # An older deployment half way through its migration: v1 table beside v2, processors still on v1.
    # (Another project name, so its names do not collide with the stack above.)
    d.deploy(
        "core",
        key="core-migrating",
        ProjectName="legacy-logging",
        CentralLogDistributionRoleArn=central,
        TenantTableMode="v1-and-v2-read-v1",
    )
    # Tenants with an S3 destination, each in its own account.
    key_arn = d.client("kms", BUCKET_TENANT).create_key(Description="acme archive")["KeyMetadata"]["Arn"]
    d.deploy(
        "customer",
        key="customer-bucket",
        account=BUCKET_TENANT,
        CentralLogDistributionRoleArn=central,
        LogGroupName="/logs/acme",
        BucketName=ARCHIVE_BUCKET,
        BucketPrefix="audit/rosa/",
        KmsKeyArn=key_arn,
        ExternalId=ACME_EXTERNAL_ID,
        ExternalIdNext=NEXT_EXTERNAL_ID,  # half way through a rotation: both are trusted
    )
    d.client("s3", EXISTING_BUCKET_TENANT).create_bucket(Bucket=EXISTING_BUCKET)
    d.deploy(
        "customer",
        key="customer-existing-bucket",
        account=EXISTING_BUCKET_TENANT,
        CentralLogDistributionRoleArn=central,
        BucketName=EXISTING_BUCKET,
        CreateBucket="false",
        ExternalId=OWN_EXTERNAL_ID,
    )
    yield d
    moto_server.reset()


STACKS = [*sorted(TEMPLATES), "core-migrating", "customer-bucket", "customer-existing-bucket", "cluster-collect-only"]


@pytest.mark.parametrize("key", STACKS)
def test_only_known_resource_types_are_skipped(deployed: Deployed, key: str) -> None:
    """Every resource the stack's parameters select was created, and nothing the Conditions leave out."""
    name, params, account = deployed.stacks[key]
    template = load_template(TEMPLATES[name])
    wanted = Resolver(template, template_params(template, params)).active_resources()
    summaries = deployed.client("cloudformation", account).list_stack_resources(StackName=f"it-{key}")
    # (moto lists what it skips, and what a Condition leaves out, as an entry without a logical id)
    created = {r["LogicalResourceId"]: r for r in summaries["StackResourceSummaries"] if r["LogicalResourceId"]}
    assert set(created) <= set(wanted), f"{key}: created though its Condition is false"
    for logical, res in wanted.items():
        if res["Type"] in MOTO_SKIPS:
            continue
        assert logical in created, f"{key}: {logical} ({res['Type']}) was not created"
        assert created[logical]["ResourceStatus"] == "CREATE_COMPLETE"
        assert created[logical]["PhysicalResourceId"]


def test_global_role(deployed: Deployed) -> None:
    iam = deployed.client("iam")
    arn = deployed.outputs["global"]["CentralLogDistributionRoleArn"]
    role = iam.get_role(RoleName=arn.rsplit("/", 1)[1])["Role"]
    assert role["Arn"] == arn
    assert role["MaxSessionDuration"] == 3600
    (policy_name,) = iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
    doc = as_doc(iam.get_role_policy(RoleName=role["RoleName"], PolicyName=policy_name)["PolicyDocument"])
    (st,) = doc["Statement"]
    assert st["Resource"] == [
        "arn:aws:iam::*:role/CustomerLogDistribution-*",
        "arn:aws:iam::*:role/*/CustomerLogDistribution-*",
    ]
    assert st["Condition"] == {"Null": {"sts:ExternalId": "false"}}


def test_core_bucket_topic_key_and_tables(deployed: Deployed) -> None:
    out = deployed.outputs["core"]
    assert out["BucketName"] == f"multi-tenant-logging-development-{ACCOUNT}-{REGION}"
    s3 = deployed.client("s3")
    s3.head_bucket(Bucket=out["BucketName"])
    (rule,) = s3.get_bucket_encryption(Bucket=out["BucketName"])["ServerSideEncryptionConfiguration"]["Rules"]
    expected = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": out["LogsKeyArn"]}
    assert rule["ApplyServerSideEncryptionByDefault"] == expected
    kms = deployed.client("kms")
    # (moto's server answers DescribeKey on a CloudFormation-made key with a 500: check via the alias.)
    key_id = out["LogsKeyArn"].rsplit("/", 1)[1]
    assert key_id in {k["KeyId"] for k in kms.list_keys()["Keys"]}
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases["alias/multi-tenant-logging-development-logs"] == key_id
    attrs = deployed.client("sns").get_topic_attributes(TopicArn=out["TopicArn"])["Attributes"]
    assert attrs["KmsMasterKeyId"]
    ddb = deployed.client("dynamodb")
    # A new stack: the v2 tenant table only, and the processors read it.
    assert (
        out["TenantConfigTableName"] == out["TenantTableV2Name"] == "multi-tenant-logging-development-tenant-deliveries"
    )
    assert "TenantTableV1Name" not in out
    tenant = ddb.describe_table(TableName=out["TenantConfigTableName"])["Table"]
    assert tenant["KeySchema"] == V2_KEYS
    assert "multi-tenant-logging-development-tenant-configs" not in ddb.list_tables()["TableNames"]
    ledger = ddb.describe_table(TableName=out["DeliveryLedgerTableName"])["Table"]
    assert ledger["KeySchema"] == [
        {"AttributeName": "tenant_id", "KeyType": "HASH"},
        {"AttributeName": "object_key", "KeyType": "RANGE"},
    ]
    assert ledger["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # The tenant API's nonces (CONTRACTS.md §9). (moto's CloudFormation does not apply a table's
    # TimeToLiveSpecification: the template's is checked in test_infra_cfn_static.py.)
    nonces = out["ApiNonceTableName"]
    assert nonces == "multi-tenant-logging-development-tenant-api-nonces"
    assert ddb.describe_table(TableName=nonces)["Table"]["KeySchema"] == [{"AttributeName": "nonce", "KeyType": "HASH"}]


V1_KEYS = [{"AttributeName": "tenant_id", "KeyType": "HASH"}]
V2_KEYS = [{"AttributeName": "tenant_id", "KeyType": "HASH"}, {"AttributeName": "delivery_id", "KeyType": "RANGE"}]


def delivery_policy(deployed: Deployed, stack: str) -> dict[str, Any]:
    iam = deployed.client("iam")
    policy = iam.get_policy(PolicyArn=deployed.outputs[stack]["DeliveryPolicyArn"])["Policy"]
    version = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
    return as_doc(version["PolicyVersion"]["Document"])


def table_arn(deployed: Deployed, name: str) -> str:
    return deployed.client("dynamodb").describe_table(TableName=name)["Table"]["TableArn"]


def test_core_processors_may_describe_and_read_the_tenant_table(deployed: Deployed) -> None:
    out = deployed.outputs["core"]
    (read,) = [st for st in delivery_policy(deployed, "core")["Statement"] if st.get("Sid") == "ReadTenantConfig"]
    assert "dynamodb:DescribeTable" in read["Action"]  # the readers tell v1 from v2 by the key schema
    assert set(read["Action"]) == {"dynamodb:DescribeTable", "dynamodb:Query", "dynamodb:Scan"}
    assert as_list(read["Resource"]) == [table_arn(deployed, out["TenantTableV2Name"])]


def test_core_migrating_keeps_v1_for_the_processors_beside_v2(deployed: Deployed) -> None:
    out = deployed.outputs["core-migrating"]
    ddb = deployed.client("dynamodb")
    assert out["TenantConfigTableName"] == out["TenantTableV1Name"] == "legacy-logging-development-tenant-configs"
    assert out["TenantTableV2Name"] == "legacy-logging-development-tenant-deliveries"
    assert ddb.describe_table(TableName=out["TenantTableV1Name"])["Table"]["KeySchema"] == V1_KEYS
    assert ddb.describe_table(TableName=out["TenantTableV2Name"])["Table"]["KeySchema"] == V2_KEYS
    (read,) = [
        st for st in delivery_policy(deployed, "core-migrating")["Statement"] if st.get("Sid") == "ReadTenantConfig"
    ]
    assert "dynamodb:DescribeTable" in read["Action"]
    assert sorted(as_list(read["Resource"])) == sorted(
        table_arn(deployed, out[k]) for k in ("TenantTableV1Name", "TenantTableV2Name")
    )


def test_core_roles_and_delivery_policy(deployed: Deployed) -> None:
    out = deployed.outputs["core"]
    iam = deployed.client("iam")
    assert "S3WriterRoleArn" not in out, "no shared role may write the whole bucket"
    processor = iam.get_role(RoleName=out["ProcessorRoleName"])["Role"]
    trust = as_doc(processor["AssumeRolePolicyDocument"])["Statement"]
    assert trust[0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    policy = iam.get_policy(PolicyArn=out["DeliveryPolicyArn"])["Policy"]
    doc = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])["PolicyVersion"]
    document = as_doc(doc["Document"])
    hop = [st for st in document["Statement"] if st["Action"] == "sts:AssumeRole"]
    assert hop == [{"Sid": "FirstHop", "Effect": "Allow", "Action": "sts:AssumeRole",
                    "Resource": deployed.outputs["global"]["CentralLogDistributionRoleArn"]}]  # fmt: skip


def test_sqs_queue_and_dlq(deployed: Deployed) -> None:
    out = deployed.outputs["sqs"]
    sqs = deployed.client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=out["QueueUrl"], AttributeNames=["All"])["Attributes"]
    assert attrs["VisibilityTimeout"] == "900"
    assert attrs["ReceiveMessageWaitTimeSeconds"] == "20"
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == out["DeadLetterQueueArn"]
    assert int(redrive["maxReceiveCount"]) == 5
    dlq = sqs.get_queue_attributes(QueueUrl=out["DeadLetterQueueUrl"], AttributeNames=["MessageRetentionPeriod"])
    assert dlq["Attributes"]["MessageRetentionPeriod"] == "1209600"


def attrs_visibility(deployed: Deployed) -> str:
    attrs = deployed.client("sqs").get_queue_attributes(
        QueueUrl=deployed.outputs["sqs"]["QueueUrl"], AttributeNames=["VisibilityTimeout"]
    )
    return str(attrs["Attributes"]["VisibilityTimeout"])


def test_lambda_function_and_event_source(deployed: Deployed) -> None:
    out, core = deployed.outputs["lambda"], deployed.outputs["core"]
    lam = deployed.client("lambda")
    cfg = lam.get_function(FunctionName=out["FunctionName"])["Configuration"]
    assert cfg["Role"] == core["ProcessorRoleArn"]
    assert cfg["Timeout"] * 6 <= int(attrs_visibility(deployed))
    assert cfg["Environment"]["Variables"] == {
        "LEDGER_RETENTION_DAYS": int(core["LedgerRetentionDays"]),
        "LAMBDA_TIME_RESERVE_SECONDS": 30,
        "METRICS_NAMESPACE": "LogDelivery",
        "EXECUTION_MODE": "lambda",
        "S3_BUCKET_NAME": core["BucketName"],
        "TENANT_CONFIG_TABLE": core["TenantConfigTableName"],
        "DELIVERY_LEDGER_TABLE": core["DeliveryLedgerTableName"],
        "DELIVERY_STATUS_TABLE": core["DeliveryStatusTableName"],
        "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN": deployed.outputs["global"]["CentralLogDistributionRoleArn"],
    }
    (esm,) = lam.list_event_source_mappings(FunctionName=out["FunctionName"])["EventSourceMappings"]
    assert esm["EventSourceArn"] == deployed.outputs["sqs"]["QueueArn"]
    assert esm["BatchSize"] == 10
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # (the tenant API stack's function has a group of its own under /aws/lambda/ too)
    groups = deployed.client("logs").describe_log_groups(logGroupNamePrefix=f"/aws/lambda/{out['FunctionName']}")[
        "logGroups"
    ]
    assert [g["logGroupName"] for g in groups] == [f"/aws/lambda/{out['FunctionName']}"]
    iam = deployed.client("iam")
    assert iam.list_role_policies(RoleName=core["ProcessorRoleName"])["PolicyNames"], "no SQS policy on the role"


def test_customer_role_and_log_group(deployed: Deployed) -> None:
    out = deployed.outputs["customer"]
    assert out["CustomerLogDistributionRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/CustomerLogDistribution-{REGION}"
    assert out["ExternalId"] == ACME_EXTERNAL_ID
    role = deployed.client("iam").get_role(RoleName=f"CustomerLogDistribution-{REGION}")["Role"]
    (st,) = as_doc(role["AssumeRolePolicyDocument"])["Statement"]
    assert st["Principal"] == {"AWS": deployed.outputs["global"]["CentralLogDistributionRoleArn"]}
    assert st["Condition"] == {"StringEquals": {"sts:ExternalId": ACME_EXTERNAL_ID}}
    groups = deployed.client("logs").describe_log_groups(logGroupNamePrefix="/logs/acme")["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in groups] == [("/logs/acme", 30)]
    # No bucket given: no S3 delivery, and no S3 or KMS permission.
    assert not {"BucketName", "BucketPrefix", "KmsKeyArn"} & set(out)
    assert set(role_policies(deployed, ACCOUNT)) == {"deliver-to-log-group", METRICS_POLICY}


# Every customer role may put its delivery's status metrics (publish_metrics), in the LogDelivery namespace only.
METRICS_POLICY = "publish-delivery-status-metrics"


def role_policies(deployed: Deployed, account: str) -> dict[str, list[dict[str, Any]]]:
    """The customer role's inline policies in `account`: name -> statements."""
    iam = deployed.client("iam", account)
    role = f"CustomerLogDistribution-{REGION}"
    return {
        name: as_list(as_doc(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])["Statement"])
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]
    }


def test_customer_with_a_created_bucket_and_a_key(deployed: Deployed) -> None:
    out = deployed.outputs["customer-bucket"]
    assert (
        out["CustomerLogDistributionRoleArn"] == f"arn:aws:iam::{BUCKET_TENANT}:role/CustomerLogDistribution-{REGION}"
    )
    assert out["ExternalId"] == ACME_EXTERNAL_ID
    role = deployed.client("iam", BUCKET_TENANT).get_role(RoleName=f"CustomerLogDistribution-{REGION}")["Role"]
    (trust,) = as_doc(role["AssumeRolePolicyDocument"])["Statement"]
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": [ACME_EXTERNAL_ID, NEXT_EXTERNAL_ID]}}
    assert (out["BucketName"], out["BucketPrefix"]) == (ARCHIVE_BUCKET, "audit/rosa/")
    key_arn = out["KmsKeyArn"]
    s3 = deployed.client("s3", BUCKET_TENANT)
    s3.head_bucket(Bucket=ARCHIVE_BUCKET)
    assert ARCHIVE_BUCKET not in {b["Name"] for b in deployed.client("s3").list_buckets()["Buckets"]}
    (rule,) = s3.get_bucket_encryption(Bucket=ARCHIVE_BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
    policies = role_policies(deployed, BUCKET_TENANT)
    assert set(policies) == {"deliver-to-log-group", "deliver-to-bucket", "encrypt-with-bucket-key", METRICS_POLICY}
    (put,) = policies["deliver-to-bucket"]
    assert (put["Effect"], put["Action"], put["Resource"]) == (
        "Allow",
        "s3:PutObject",
        f"arn:aws:s3:::{ARCHIVE_BUCKET}/audit/rosa/*",
    )
    (kms,) = policies["encrypt-with-bucket-key"]
    assert (kms["Effect"], kms["Action"], kms["Resource"]) == ("Allow", "kms:GenerateDataKey", key_arn)
    assert kms["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}


def test_customer_with_an_existing_bucket_and_no_key(deployed: Deployed) -> None:
    out = deployed.outputs["customer-existing-bucket"]
    assert (out["BucketName"], out["BucketPrefix"]) == (EXISTING_BUCKET, "ROSA/cluster-logs/")
    assert "KmsKeyArn" not in out
    resources = deployed.client("cloudformation", EXISTING_BUCKET_TENANT).list_stack_resources(
        StackName="it-customer-existing-bucket"
    )["StackResourceSummaries"]
    assert not [r for r in resources if r["ResourceType"].startswith("AWS::S3::")], "the bucket is the tenant's own"
    policies = role_policies(deployed, EXISTING_BUCKET_TENANT)
    assert set(policies) == {"deliver-to-log-group", "deliver-to-bucket", METRICS_POLICY}
    (put,) = policies["deliver-to-bucket"]
    assert (put["Action"], put["Resource"]) == ("s3:PutObject", f"arn:aws:s3:::{EXISTING_BUCKET}/ROSA/cluster-logs/*")
    # Its own ExternalId, in the trust and in the outputs the tenant sends back.
    assert out["ExternalId"] == OWN_EXTERNAL_ID
    iam = deployed.client("iam", EXISTING_BUCKET_TENANT)
    role = iam.get_role(RoleName=f"CustomerLogDistribution-{REGION}")["Role"]
    (st,) = as_doc(role["AssumeRolePolicyDocument"])["Statement"]
    assert st["Condition"] == {"StringEquals": {"sts:ExternalId": OWN_EXTERNAL_ID}}


def test_collector_role_writes_only_under_its_cluster_id(deployed: Deployed) -> None:
    iam = deployed.client("iam")
    name = "multi-tenant-logging-prod-1-vector"
    (policy,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
    statements = as_list(as_doc(iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"])["Statement"])
    by_action = {st["Action"]: st["Resource"] for st in statements}
    assert by_action == {
        "s3:PutObject": f"arn:aws:s3:::{deployed.outputs['core']['BucketName']}/prod-1/*",
        "kms:GenerateDataKey": deployed.outputs["core"]["LogsKeyArn"],
    }


@pytest.mark.parametrize(
    ("role", "subject"),
    [
        ("multi-tenant-logging-prod-1-vector", "system:serviceaccount:logging:vector-logs"),
        ("multi-tenant-logging-prod-1-processor", "system:serviceaccount:log-delivery:log-consumer"),
        ("multi-tenant-logging-prod-1-tenant-api", "system:serviceaccount:log-delivery:tenant-api"),
        ("multi-tenant-logging-prod-1-replay", "system:serviceaccount:log-replay:log-replay"),
    ],
)
def test_irsa_roles(deployed: Deployed, role: str, subject: str) -> None:
    doc = as_doc(deployed.client("iam").get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"])
    (st,) = doc["Statement"]
    assert st["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{OIDC}"}
    assert st["Condition"]["StringEquals"][f"{OIDC}:sub"] == subject


def test_cluster_tenant_api_role_reads_and_writes_the_v2_table_and_takes_the_first_hop(deployed: Deployed) -> None:
    iam = deployed.client("iam")
    core, cluster = deployed.outputs["core"], deployed.outputs["cluster"]
    name = "multi-tenant-logging-prod-1-tenant-api"
    assert cluster["TenantApiRoleArn"] == iam.get_role(RoleName=name)["Role"]["Arn"]
    (policy,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
    doc = as_doc(iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"])
    by_sid = {st["Sid"]: st for st in as_list(doc["Statement"])}
    assert set(by_sid) == {"TenantTable", "Nonces", "TableKey", "PreflightFirstHop"}, "no secret, no log group"
    assert by_sid["TenantTable"]["Resource"] == table_arn(deployed, core["TenantTableV2Name"])
    assert by_sid["Nonces"] == {"Sid": "Nonces", "Effect": "Allow", "Action": "dynamodb:PutItem",
                                "Resource": table_arn(deployed, core["ApiNonceTableName"])}  # fmt: skip
    assert by_sid["TableKey"]["Resource"] == core["LogsKeyArn"]
    assert by_sid["PreflightFirstHop"]["Resource"] == deployed.outputs["global"]["CentralLogDistributionRoleArn"]
    # Without the central role the stack keeps its two roles only.
    assert "TenantApiRoleArn" not in deployed.outputs["cluster-collect-only"]
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert {"multi-tenant-logging-prod-2-vector", "multi-tenant-logging-prod-2-processor"} <= roles
    assert "multi-tenant-logging-prod-2-tenant-api" not in roles


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def as_doc(doc: Any) -> dict[str, Any]:
    """IAM answers policy documents as JSON, sometimes URL-encoded, or already decoded by boto3. moto
    keeps an inline policy that CloudFormation created as the Python repr of the dict."""
    if isinstance(doc, dict):
        return doc
    text = urllib.parse.unquote(doc)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return ast.literal_eval(text)


# --- deploy.sh -------------------------------------------------------------------------------------


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CFN_DIR / "deploy.sh"), "--dry-run", *args], capture_output=True, text=True, check=False
    )


def deploy_commands(*args: str) -> list[tuple[str, str, dict[str, str]]]:
    """(stack, template file, parameter overrides) of each deploy a dry run prints, in order."""
    proc = dry_run(*args)
    assert proc.returncode == 0, proc.stderr
    out = []
    for line in proc.stdout.splitlines():
        argv = shlex.split(line)
        assert argv[:3] == ["aws", "cloudformation", "deploy"]
        stack = argv[argv.index("--stack-name") + 1]
        template = argv[argv.index("--template-file") + 1]
        params = {}
        if "--parameter-overrides" in argv:
            for kv in argv[argv.index("--parameter-overrides") + 1 :]:
                k, _, v = kv.partition("=")
                params[k] = v
        out.append((stack, template, params))
    return out


def test_deploy_sh_regional_deploys_core_then_sqs_then_lambda_with_valid_parameters() -> None:
    central = f"arn:aws:iam::{ACCOUNT}:role/CentralLogDistributionRole"
    cmds = deploy_commands(
        "-t", "regional", "-r", "eu-west-1", "--central-role-arn", central,
        "--include-sqs", "--include-lambda", "--ecr-image-uri", IMAGE,
    )  # fmt: skip
    assert [c[1] for c in cmds] == [str(TEMPLATES[n]) for n in ("core", "sqs", "lambda")]
    assert cmds[1][2]["TopicArn"] == f"<{cmds[0][0]}.TopicArn>", "the SQS stack reads the core stack's topic"
    assert cmds[2][2]["QueueArn"] == f"<{cmds[1][0]}.QueueArn>"
    assert cmds[2][2]["EcrImageUri"] == IMAGE


@pytest.mark.parametrize(
    "args",
    [
        ("-t", "global"),
        ("-t", "regional", "--central-role-arn", "arn:aws:iam::123456789012:role/c", "--include-sqs",
         "--include-lambda", "--ecr-image-uri", IMAGE),
        ("-t", "customer", "--central-role-arn", "arn:aws:iam::123456789012:role/c", "--log-group-name", "/l",
         *EXT),
        ("-t", "customer", "--central-role-arn", "arn:aws:iam::123456789012:role/c", *EXT,
         "--external-id-next", "acme-next-id-during-a-rotation-abcdef0123"),
        ("-t", "customer", "--central-role-arn", "arn:aws:iam::123456789012:role/c", *EXT, "--bucket-name", "acme-logs",
         "--existing-bucket", "--bucket-prefix", "audit/", "--kms-key-arn", "arn:aws:kms:us-east-1:123456789012:key/k"),
        ("-t", "regional", "--central-role-arn", "arn:aws:iam::123456789012:role/c", "--tenant-table-mode",
         "v1-and-v2-read-v2"),
        ("-t", "cluster", "--cluster-name", "c1", "--oidc-provider", "https://oidc.x/id/1", "--include-sqs"),
        ("-t", "cluster", "--cluster-name", "c1", "--oidc-provider", "oidc.x/id/1", "--central-role-arn",
         "arn:aws:iam::123456789012:role/c"),
        ("-t", "replay", "--cluster-name", "c1", "--oidc-provider", "oidc.x/id/1"),
        ("-t", "tenant-api", "--central-role-arn", "arn:aws:iam::123456789012:role/c", "--api-image-uri", API_IMAGE),
    ],
)  # fmt: skip
def test_deploy_sh_passes_exactly_the_template_parameters(args: tuple[str, ...]) -> None:
    """Every override names a template parameter, and every parameter without a default is given."""
    for _stack, template_file, params in deploy_commands(*args):
        declared = load_template(CFN_DIR / template_file)["Parameters"]
        assert set(params) <= set(declared), f"{template_file}: unknown {set(params) - set(declared)}"
        required = {k for k, v in declared.items() if "Default" not in v}
        assert required <= set(params), f"{template_file}: missing {required - set(params)}"
        assert not params.get("OidcProvider", "").startswith("https://")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-t", "regional"), "--central-role-arn"),
        (("-t", "regional", "--central-role-arn", "a", "--include-lambda", "--ecr-image-uri", "x"), "--include-sqs"),
        (("-t", "regional", "--central-role-arn", "a", "--include-sqs", "--include-lambda"), "--ecr-image-uri"),
        (("-t", "cluster", "--cluster-name", "c"), "--oidc-provider"),
        (("-t", "tenant-api", "--api-image-uri", API_IMAGE), "--central-role-arn"),
        (("-t", "tenant-api", "--central-role-arn", "a"), "--api-image-uri"),
        # the processor image alone is refused: it has no FastAPI or Mangum
        (("-t", "tenant-api", "--central-role-arn", "a", "--ecr-image-uri", IMAGE), "--api-image-uri"),
        (("-t", "nope",), "unknown type"),
        (("-t", "customer", "--central-role-arn", "a", *EXT, "--kms-key-arn", "k"), "need --bucket-name"),
        (("-t", "customer", "--central-role-arn", "a", *EXT, "--existing-bucket"), "need --bucket-name"),
        (("-t", "customer", "--central-role-arn", "a"), "customer needs --external-id"),
        (("-t", "regional", "--central-role-arn", "a", "--tenant-table-mode", "v3"), "--tenant-table-mode must be"),
        (("--bogus",), "unknown argument"),
    ],
)  # fmt: skip
def test_deploy_sh_refuses_incomplete_flags(args: tuple[str, ...], message: str) -> None:
    proc = dry_run(*args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "aws cloudformation deploy" not in proc.stdout


def test_deploy_sh_tenant_api_reads_the_v2_table_and_the_key_from_the_core_stack() -> None:
    central = f"arn:aws:iam::{ACCOUNT}:role/CentralLogDistributionRole"
    ((stack, template, params),) = deploy_commands(
        "-t", "tenant-api", "-e", "production", "--central-role-arn", central, "--api-image-uri", API_IMAGE
    )
    assert (stack, template) == ("multi-tenant-logging-production-tenant-api", str(TEMPLATES["tenant-api"]))
    assert params == {
        "ProjectName": "multi-tenant-logging",
        "Environment": "production",
        "EcrImageUri": API_IMAGE,
        # the API writes v2 items only: the v2 table even while the processors still read v1
        "TenantConfigTableName": "<multi-tenant-logging-production-core.TenantTableV2Name>",
        "ApiNonceTableName": "<multi-tenant-logging-production-core.ApiNonceTableName>",
        "LogsKeyArn": "<multi-tenant-logging-production-core.LogsKeyArn>",
        "CentralLogDistributionRoleArn": central,
        "DeliveryStatusTableName": "<multi-tenant-logging-production-core.DeliveryStatusTableName>",
    }


def test_deploy_sh_cluster_adds_the_tenant_api_role_only_with_the_central_role() -> None:
    base = ("-t", "cluster", "--cluster-name", "c1", "--oidc-provider", OIDC)
    ((_, _, params),) = deploy_commands(*base)
    assert not {"TenantConfigTableName", "ApiNonceTableName", "CentralLogDistributionRoleArn"} & set(params)
    central = f"arn:aws:iam::{ACCOUNT}:role/CentralLogDistributionRole"
    ((_, _, params),) = deploy_commands(*base, "--central-role-arn", central)
    assert params["CentralLogDistributionRoleArn"] == central
    assert params["TenantConfigTableName"] == "<multi-tenant-logging-development-core.TenantTableV2Name>"
    assert params["ApiNonceTableName"] == "<multi-tenant-logging-development-core.ApiNonceTableName>"
    # The status and redelivery routes' tables, and the ledger a request's estimate reads.
    for key in ("DeliveryStatusTableName", "ReplayRequestTableName", "DeliveryLedgerTableName"):
        assert params[key] == f"<multi-tenant-logging-development-core.{key}>"


def test_deploy_sh_replay_role_follows_the_request_table() -> None:
    ((_, _, params),) = deploy_commands("-t", "replay", "--cluster-name", "c1", "--oidc-provider", OIDC)
    assert params["ReplayRequestTableName"] == "<multi-tenant-logging-development-core.ReplayRequestTableName>"


def test_deploy_sh_customer_bucket_flags_become_the_s3_parameters() -> None:
    central = f"arn:aws:iam::{ACCOUNT}:role/c"
    ((_, _, params),) = deploy_commands("-t", "customer", "--central-role-arn", central, "--external-id", "e" * 32)
    assert not {"BucketName", "CreateBucket", "BucketPrefix", "KmsKeyArn"} & set(params)
    ((_, _, params),) = deploy_commands(
        "-t",
        "customer",
        "--central-role-arn",
        central,
        "--external-id",
        "e" * 32,
        "--bucket-name",
        "acme-logs",
        "--bucket-prefix",
        "a/",
    )
    assert {k: params.get(k) for k in ("BucketName", "CreateBucket", "BucketPrefix")} == {
        "BucketName": "acme-logs",
        "CreateBucket": None,  # the template's default: create it
        "BucketPrefix": "a/",
    }
    ((_, _, params),) = deploy_commands(
        "-t",
        "customer",
        "--central-role-arn",
        central,
        "--external-id",
        "e" * 32,
        "--bucket-name",
        "acme-logs",
        "--existing-bucket",
    )
    assert params["CreateBucket"] == "false"
    ((_, _, params),) = deploy_commands("-t", "customer", "--central-role-arn", central, "--external-id", "a" * 40)
    assert params["ExternalId"] == "a" * 40 and "ExternalIdNext" not in params


FAKE_AWS = """#!/usr/bin/env bash
# Answers describe-stacks as $FAKE_CORE says (absent | pre-v2 | v2), prints every other command.
if [[ "$2" == describe-stacks ]]; then
  case "$FAKE_CORE" in
    absent) echo "An error occurred (ValidationError): Stack does not exist" >&2; exit 254 ;;
    pre-v2) echo 0 ;;
    v2) echo 1 ;;
  esac
  exit 0
fi
printf '%q ' aws "$@"; echo
"""


@pytest.mark.parametrize(
    ("core", "flags", "mode"),
    [
        ("absent", (), None),  # a new stack: the template's default, v2
        ("v2", (), None),  # aws cloudformation deploy keeps the stack's current mode
        ("pre-v2", (), "v1-and-v2-read-v1"),  # never moved to an empty table by a plain redeploy
        ("pre-v2", ("--tenant-table-mode", "v1-and-v2-read-v2"), "v1-and-v2-read-v2"),
    ],
)
def test_deploy_sh_keeps_a_pre_v2_stack_on_its_v1_tenant_table(
    tmp_path: Any, core: str, flags: tuple[str, ...], mode: str | None
) -> None:
    aws = tmp_path / "aws"
    aws.write_text(FAKE_AWS)
    aws.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "FAKE_CORE": core}
    proc = subprocess.run(
        ["bash", str(CFN_DIR / "deploy.sh"), "-t", "regional", "--central-role-arn", "arn:aws:iam::1:role/c", *flags],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    argv = shlex.split(line)
    assert argv[:3] == ["aws", "cloudformation", "deploy"]
    overrides = dict(kv.partition("=")[::2] for kv in argv[argv.index("--parameter-overrides") + 1 :])
    assert overrides.get("TenantTableMode") == mode
    assert ("predates the v2 tenant table" in proc.stderr) is (core == "pre-v2" and not flags)


def test_cluster_tenant_api_role_reads_status_and_keeps_replay_requests_when_given_their_tables(
    deployed: Deployed,
) -> None:
    core, central = deployed.outputs["core"], deployed.outputs["global"]["CentralLogDistributionRoleArn"]
    deployed.deploy(
        "cluster",
        key="cluster-self-service",
        ClusterName="prod-3",
        OidcProvider=OIDC,
        BucketName=core["BucketName"],
        LogsKeyArn=core["LogsKeyArn"],
        DeliveryPolicyArn=core["DeliveryPolicyArn"],
        TenantConfigTableName=core["TenantTableV2Name"],
        ApiNonceTableName=core["ApiNonceTableName"],
        CentralLogDistributionRoleArn=central,
        DeliveryStatusTableName=core["DeliveryStatusTableName"],
        ReplayRequestTableName=core["ReplayRequestTableName"],
        DeliveryLedgerTableName=core["DeliveryLedgerTableName"],
    )
    iam, name = deployed.client("iam"), "multi-tenant-logging-prod-3-tenant-api"
    docs = {p: as_doc(iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"])
            for p in iam.list_role_policies(RoleName=name)["PolicyNames"]}  # fmt: skip
    by_sid = {st["Sid"]: st for doc in docs.values() for st in as_list(doc["Statement"])}
    # Status: read only. Requests: no Scan, no table-wide write. The estimate: list and read, never write.
    assert by_sid["ReadDeliveryStatus"]["Action"] == "dynamodb:Query"
    assert by_sid["ReadDeliveryStatus"]["Resource"] == table_arn(deployed, core["DeliveryStatusTableName"])
    assert set(by_sid["ReplayRequests"]["Action"]) == {
        "dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"
    }  # fmt: skip
    assert by_sid["ReplayRequests"]["Resource"] == table_arn(deployed, core["ReplayRequestTableName"])
    assert by_sid["ReplayEstimateListing"]["Action"] == "s3:ListBucket"
    assert by_sid["ReplayEstimateListing"]["Resource"] == f"arn:aws:s3:::{core['BucketName']}"
    assert set(by_sid["ReplayEstimateLedger"]["Action"]) == {"dynamodb:GetItem", "dynamodb:BatchGetItem"}
    assert by_sid["ReplayEstimateLedger"]["Resource"] == table_arn(deployed, core["DeliveryLedgerTableName"])


def test_replay_role_follows_replay_requests_only_when_given_their_table(deployed: Deployed) -> None:
    core = deployed.outputs["core"]
    iam = deployed.client("iam")
    assert (
        "follow-replay-requests"
        not in iam.list_role_policies(RoleName="multi-tenant-logging-prod-1-replay")["PolicyNames"]
    )
    deployed.deploy(
        "replay",
        key="replay-requests",
        ClusterName="prod-3",
        OidcProvider=OIDC,
        DeliveryPolicyArn=core["DeliveryPolicyArn"],
        ReplayRequestTableName=core["ReplayRequestTableName"],
    )
    doc = as_doc(
        iam.get_role_policy(RoleName="multi-tenant-logging-prod-3-replay", PolicyName="follow-replay-requests")[
            "PolicyDocument"
        ]
    )
    (st,) = as_list(doc["Statement"])
    # The driver follows a request (progress, end, the active-run item); only the API creates one.
    assert set(st["Action"]) == {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
    assert st["Resource"] == table_arn(deployed, core["ReplayRequestTableName"])
