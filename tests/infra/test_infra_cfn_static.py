"""CloudFormation templates: cfn-lint, and the IAM policy rules the design depends on (issue #5)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from pathlib import Path

import pytest
from cfnlint.api import lint_file
from infra_helpers import (
    ACCOUNT,
    CFN_DIR,
    REGION,
    TEMPLATES,
    Resolver,
    as_list,
    iter_policies,
    load_template,
    policy_document,
    template_params,
)

CENTRAL_ARN = f"arn:aws:iam::{ACCOUNT}:role/CentralLogDistributionRole"
REQUIRED_PARAMS = {
    "core": {"CentralLogDistributionRoleArn": CENTRAL_ARN},
    "sqs": {"TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:t"},
    "lambda": {
        "EcrImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/log-processor:1",
        "ProcessorRoleArn": f"arn:aws:iam::{ACCOUNT}:role/p",
        "ProcessorRoleName": "p",
        "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:q",
        "BucketName": "b",
        "TenantConfigTableName": "t",
        "DeliveryLedgerTableName": "l",
        "CentralLogDistributionRoleArn": CENTRAL_ARN,
    },
    "customer": {
        "CentralLogDistributionRoleArn": "arn:aws:iam::999988887777:role/CentralLogDistributionRole",
        "ExternalId": "Zq0-generated-by-the-provider_4f9a8b7c6d5e",
    },
    "cluster": {
        "ClusterName": "prod-1",
        "OidcProvider": "oidc.example.com/id/ABC",
        "BucketName": f"multi-tenant-logging-development-{ACCOUNT}-{REGION}",
        "LogsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "DeliveryPolicyArn": f"arn:aws:iam::{ACCOUNT}:policy/d",
    },
    "replay": {
        "ClusterName": "prod-1",
        "OidcProvider": "oidc.example.com/id/ABC",
        "DeliveryPolicyArn": f"arn:aws:iam::{ACCOUNT}:policy/d",
    },
}


def resolved(name: str, **overrides: str) -> tuple[dict, Resolver]:
    template = load_template(TEMPLATES[name])
    return template, Resolver(template, template_params(template, {**REQUIRED_PARAMS.get(name, {}), **overrides}))


def statements(doc: dict) -> list[dict]:
    return as_list(doc["Statement"])


def test_every_template_is_covered() -> None:
    on_disk = set(CFN_DIR.rglob("*.yaml"))
    assert on_disk == set(TEMPLATES.values())


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_cfn_lint_reports_no_errors(name: str) -> None:
    matches = lint_file(Path(TEMPLATES[name]))
    errors = [m for m in matches if m.rule.id.startswith("E")]
    assert not errors, "\n".join(str(m) for m in errors)


def test_cfn_lint_catches_a_broken_template(tmp_path: Path) -> None:
    """The lint test above can fail: a template with a bad property is reported."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        TEMPLATES["sqs"].read_text().replace("VisibilityTimeout: 900", "VisibilityTimeout: 900\n      Bogus: 1")
    )
    assert any(m.rule.id.startswith("E") for m in lint_file(bad))


# Templates whose Conditions switch policies on: every policy is checked with them switched on as well.
WITH_OPTIONS = {"customer": {"BucketName": "acme-logs", "KmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/k-1"}}


@pytest.mark.parametrize(
    ("name", "options"),
    [(n, {}) for n in sorted(TEMPLATES)] + [(n, o) for n, o in sorted(WITH_OPTIONS.items())],
)
def test_no_policy_allows_wildcard_actions(name: str, options: dict[str, str]) -> None:
    template = load_template(TEMPLATES[name])
    params = template_params(template, {**REQUIRED_PARAMS.get(name, {}), **options})
    seen = 0
    for resource, kind, doc in iter_policies(template, params):
        for st in statements(doc):
            seen += 1
            if st["Effect"] != "Allow":
                continue  # a Deny on s3:* (TLS only) is the opposite of a grant
            assert "NotAction" not in st, f"{resource}: NotAction in an Allow"
            for action in as_list(st["Action"]):
                assert action != "*" and not action.endswith(":*"), f"{resource} ({kind}) allows {action}"
    assert seen, f"{name} has no policies at all?"


def test_central_role_assumes_exactly_customer_roles_with_or_without_a_path_and_always_with_an_external_id() -> None:
    template, resolve = resolved("global")
    role = template["Resources"]["CentralLogDistributionRole"]["Properties"]
    grants = [st for p in role["Policies"] for st in statements(resolve(p["PolicyDocument"]))]
    assert grants, "the central role has no permissions"
    for st in grants:
        assert st["Effect"] == "Allow"
        assert as_list(st["Action"]) == ["sts:AssumeRole"]
        # Exactly these two patterns: role/logging/CustomerLogDistribution-x (an IAM path) works, and no
        # other role name in any account does.
        assert as_list(st["Resource"]) == [
            "arn:aws:iam::*:role/CustomerLogDistribution-*",
            "arn:aws:iam::*:role/*/CustomerLogDistribution-*",
        ]
        # The value is each customer role's trust's to check (a delivery may have its own); none at all is refused.
        assert st["Condition"] == {"Null": {"sts:ExternalId": "false"}}
    assert not role.get("ManagedPolicyArns"), "managed policies would grant more than the customer hop"
    policy_types = ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    other = [r for r, res in template["Resources"].items() if res["Type"] in policy_types]
    assert not other, f"extra policies in the global stack: {other}"
    # Only the project's processor, replay and tenant API roles may take the first hop.
    trust = statements(resolve(role["AssumeRolePolicyDocument"]))
    assert trust[0]["Condition"]["ArnLike"]["aws:PrincipalArn"] == [
        f"arn:aws:iam::{ACCOUNT}:role/multi-tenant-logging-*-processor",
        f"arn:aws:iam::{ACCOUNT}:role/multi-tenant-logging-*-replay",
        f"arn:aws:iam::{ACCOUNT}:role/multi-tenant-logging-*-tenant-api",
    ]


TENANT_API_PARAMS = {
    "EcrImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/log-tenant-api:1",
    "TenantConfigTableName": "multi-tenant-logging-development-tenant-deliveries",
    "ApiNonceTableName": "multi-tenant-logging-development-tenant-api-nonces",
    "LogsKeyArn": REQUIRED_PARAMS["cluster"]["LogsKeyArn"],
    "CentralLogDistributionRoleArn": CENTRAL_ARN,
}


@pytest.mark.parametrize(
    ("name", "role", "params"),
    [
        ("core", "ProcessorRole", {}),
        ("cluster", "ProcessorRole", {}),
        ("replay", "ReplayRole", {}),
        ("tenant-api", "TenantApiRole", TENANT_API_PARAMS),
        (
            "cluster",
            "TenantApiRole",
            {"CentralLogDistributionRoleArn": CENTRAL_ARN, "TenantConfigTableName": "t", "ApiNonceTableName": "n"},
        ),
    ],
)
def test_every_role_that_takes_the_first_hop_is_allowed_by_the_central_trust(
    name: str, role: str, params: dict[str, str]
) -> None:
    """A role the central role's trust does not name fails every preflight and delivery with AccessDenied."""
    global_template, global_resolve = resolved("global")
    central = global_template["Resources"]["CentralLogDistributionRole"]["Properties"]
    (trust,) = statements(global_resolve(central["AssumeRolePolicyDocument"]))
    patterns = trust["Condition"]["ArnLike"]["aws:PrincipalArn"]
    # The longest names the parameters allow, so no role outgrows its pattern.
    longest = {"ProjectName": "multi-tenant-logging", "Environment": "development", "ClusterName": "c" * 21}
    template = load_template(TEMPLATES[name])
    overrides = {**REQUIRED_PARAMS.get(name, {}), **params}
    overrides.update({k: v for k, v in longest.items() if k in template["Parameters"]})
    resolve = Resolver(template, template_params(template, overrides))
    assert resolve.exists(role)
    arn = f"arn:aws:iam::{ACCOUNT}:role/{resolve(template['Resources'][role]['Properties']['RoleName'])}"
    assert any(fnmatch.fnmatchcase(arn, p) for p in patterns), f"{arn} matches none of {patterns}"
    # and the collector, which must never take it, does not match
    vector = resolved("cluster")[1](load_template(TEMPLATES["cluster"])["Resources"]["VectorRole"]["Properties"])
    assert not any(fnmatch.fnmatchcase(f"arn:aws:iam::{ACCOUNT}:role/{vector['RoleName']}", p) for p in patterns)


OWN_ID = "Zq0-generated-by-the-provider_4f9a8b7c6d5e"
NEXT_ID = "Nx1-the-next-one-during-a-rotation_0a1b2c3d"


@pytest.mark.parametrize(("next_id", "expected"), [(None, OWN_ID), (NEXT_ID, [OWN_ID, NEXT_ID])])
def test_customer_trust_requires_the_tenants_generated_external_id_and_during_a_rotation_the_next_too(
    next_id: str | None, expected: str | list[str]
) -> None:
    template, resolve = resolved("customer", **({"ExternalIdNext": next_id} if next_id else {}))
    role = template["Resources"]["CustomerLogDistributionRole"]["Properties"]
    assert resolve(role["RoleName"]).startswith("CustomerLogDistribution-"), "central role could not assume it"
    trust = statements(resolve(role["AssumeRolePolicyDocument"]))
    assert len(trust) == 1
    (st,) = trust
    assert st["Principal"] == {"AWS": REQUIRED_PARAMS["customer"]["CentralLogDistributionRoleArn"]}
    assert st["Action"] == "sts:AssumeRole"
    # Never the central account id (a value every customer's role would share: the confused deputy).
    assert st["Condition"] == {"StringEquals": {"sts:ExternalId": expected}}
    assert resolve.active_outputs()["ExternalId"] == OWN_ID


def test_customer_external_id_is_required_with_no_default() -> None:
    params = load_template(TEMPLATES["customer"])["Parameters"]
    assert "Default" not in params["ExternalId"], "a default would be an id every customer shares"
    assert params["ExternalIdNext"]["Default"] == ""


@pytest.mark.parametrize(
    ("value", "ok"),
    [(OWN_ID, True), ("a+b=c,d.e@f:g/h-i_j" * 2, True), ("x" * 128, True), ("", False), ("999988887777", False),
     ("x" * 31, False), ("x" * 129, False), ("has space" * 4, False), ("é" * 40, False)],
)  # fmt: skip
def test_customer_external_id_parameter_takes_what_the_provider_generates(value: str, ok: bool) -> None:
    params = load_template(TEMPLATES["customer"])["Parameters"]
    assert (re.fullmatch(params["ExternalId"]["AllowedPattern"], value) is not None) is ok
    assert (re.fullmatch(params["ExternalIdNext"]["AllowedPattern"], value) is not None) is (ok or value == "")


def test_the_generated_external_id_is_what_the_template_takes() -> None:
    from pipeline.tenants import PROFILE_EXTERNAL_ID_RE, generate_external_id

    params = load_template(TEMPLATES["customer"])["Parameters"]
    assert params["ExternalId"]["AllowedPattern"] == PROFILE_EXTERNAL_ID_RE.pattern
    for _ in range(50):
        assert re.fullmatch(params["ExternalId"]["AllowedPattern"], generate_external_id())


def test_customer_permissions_are_least_privilege_on_its_log_group() -> None:
    template, resolve = resolved("customer")
    role = template["Resources"]["CustomerLogDistributionRole"]["Properties"]
    group = template["Parameters"]["LogGroupName"]["Default"]
    group_arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}"
    for st in statements(resolve(role["Policies"][0]["PolicyDocument"])):
        actions = as_list(st["Action"])
        assert all(a.startswith("logs:") for a in actions)
        assert as_list(st["Resource"]) in ([group_arn], [f"{group_arn}:log-stream:*"]), "nothing on Resource *"
    granted = {a for st in statements(resolve(role["Policies"][0]["PolicyDocument"])) for a in as_list(st["Action"])}
    # What the sinks call (pipeline/sinks/cloudwatch/sink.py; DescribeLogStreams: Vector's sink), nothing more:
    # no DescribeLogGroups; PutRetentionPolicy (retention_days on a group the sink creates) on the group only.
    assert granted == {
        "logs:PutLogEvents",
        "logs:CreateLogStream",
        "logs:CreateLogGroup",
        "logs:DescribeLogStreams",
        "logs:PutRetentionPolicy",
    }
    retention = [st for st in statements(resolve(role["Policies"][0]["PolicyDocument"]))
                 if "logs:PutRetentionPolicy" in as_list(st["Action"])]  # fmt: skip
    assert [as_list(st["Resource"]) for st in retention] == [[group_arn]]


@pytest.mark.parametrize(
    ("params", "made"),
    [
        ({}, False),
        ({"GlueDatabaseName": "tenant_logs", "TenantId": "acme"}, False),  # no bucket: nothing to query
        ({"BucketName": "acme-logs"}, False),
        ({"BucketName": "acme-logs", "GlueDatabaseName": "tenant_logs"}, False),  # no tenant id: no location
        ({"BucketName": "acme-logs", "GlueDatabaseName": "tenant_logs", "TenantId": "acme"}, True),
    ],
)
def test_the_glue_table_over_parquet_deliveries_is_optional_and_projects_the_partitions(
    params: dict[str, str], made: bool
) -> None:
    _, resolve = resolved("customer", **params)
    active = resolve.active_resources()
    assert ("DeliveredLogsTable" in active) is made and ("DeliveredLogsDatabase" in active) is made
    if not made:
        return
    table = resolve(active["DeliveredLogsTable"]["Properties"])["TableInput"]
    location = "s3://acme-logs/ROSA/cluster-logs/acme/"  # CONTRACTS.md §8: {prefix}{tenant}/dt=…/application=…/
    assert table["StorageDescriptor"]["Location"] == location
    props = table["Parameters"]
    assert props["projection.enabled"] == "true"
    # ${!x} is Fn::Sub's escape for a literal ${x} (the test's resolver leaves it as written).
    template = props["storage.location.template"].replace("${!", "${")
    assert template == location + "dt=${dt}/application=${application}/"
    assert (props["projection.dt.type"], props["projection.dt.format"]) == ("date", "yyyy-MM-dd")
    assert [k["Name"] for k in table["PartitionKeys"]] == ["dt", "application"]
    columns = {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
    assert columns["timestamp"] == "timestamp" and columns["labels"] == "map<string,string>"
    assert "application" not in columns  # a partition key; Athena refuses a column of the same name
    # The role gets no Glue permission: delivery only writes objects.
    assert not [st for st in customer_grants(**params) if any(a.startswith("glue:") for a in as_list(st["Action"]))]


def test_customer_metrics_grant_is_put_metric_data_in_the_log_delivery_namespace_only() -> None:
    # publish_metrics (pipeline/status.py): the status figures in the tenant's account, nothing else of CloudWatch.
    grants = [st for st in customer_grants() if any(a.startswith("cloudwatch:") for a in as_list(st["Action"]))]
    assert len(grants) == 1
    (st,) = grants
    assert as_list(st["Action"]) == ["cloudwatch:PutMetricData"]
    assert st["Condition"] == {"StringEquals": {"cloudwatch:namespace": "LogDelivery"}}
    from pipeline.status import NAMESPACE

    assert NAMESPACE == "LogDelivery"


KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def customer_grants(**params: str) -> list[dict]:
    """Every Allow statement the customer role gets with these parameters: its inline policies and the
    policy resources attached to it that the template's Conditions create."""
    _, resolve = resolved("customer", **params)
    active = resolve.active_resources()
    role = active["CustomerLogDistributionRole"]["Properties"]
    docs = [resolve(p["PolicyDocument"]) for p in role.get("Policies", [])]
    for res in active.values():
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            props = resolve(res["Properties"])
            if "<CustomerLogDistributionRole>" in props.get("Roles", []):
                docs.append(props["PolicyDocument"])
    grants = [st for doc in docs for st in statements(doc)]
    assert all(st["Effect"] == "Allow" for st in grants)
    return grants


def s3_and_kms(grants: list[dict]) -> list[dict]:
    return [st for st in grants if any(a.split(":")[0] in ("s3", "kms") for a in as_list(st["Action"]))]


def test_customer_without_a_bucket_gets_no_s3_or_kms_permission() -> None:
    template, resolve = resolved("customer")
    assert template["Parameters"]["BucketName"]["Default"] == ""
    # A key without a bucket grants nothing either: it only ever serves the bucket.
    for params in ({}, {"KmsKeyArn": KEY_ARN}):
        assert s3_and_kms(customer_grants(**params)) == []
        _, resolve = resolved("customer", **params)
        assert not {n for n, r in resolve.active_resources().items() if r["Type"].startswith("AWS::S3::")}
        assert set(resolve.active_outputs()) == {"CustomerLogDistributionRoleArn", "LogGroupName", "ExternalId"}


@pytest.mark.parametrize("create", ["true", "false"])
@pytest.mark.parametrize("prefix", [None, "audit/rosa/"])
def test_customer_bucket_grant_is_exactly_put_object_under_the_prefix(create: str, prefix: str | None) -> None:
    params = {"BucketName": "acme-logs", "CreateBucket": create, **({"BucketPrefix": prefix} if prefix else {})}
    expected_prefix = prefix or "ROSA/cluster-logs/"  # CONTRACTS.md §3 default
    grants = customer_grants(**params)
    (st,) = s3_and_kms(grants)
    assert as_list(st["Action"]) == ["s3:PutObject"]
    assert as_list(st["Resource"]) == [f"arn:aws:s3:::acme-logs/{expected_prefix}*"]
    assert "Condition" not in st
    # The CloudWatch delivery is still there, unchanged.
    assert {"logs:PutLogEvents", "logs:CreateLogStream"} <= {a for g in grants for a in as_list(g["Action"])}
    _, resolve = resolved("customer", **params)
    outputs = resolve.active_outputs()
    assert outputs["BucketName"] == ("<DeliveredLogBucket>" if create == "true" else "acme-logs")
    assert outputs["BucketPrefix"] == expected_prefix
    assert "KmsKeyArn" not in outputs


def test_customer_kms_grant_only_with_a_key_and_only_generate_data_key() -> None:
    grants = s3_and_kms(customer_grants(BucketName="acme-logs", KmsKeyArn=KEY_ARN))
    kms = [st for st in grants if any(a.startswith("kms:") for a in as_list(st["Action"]))]
    assert len(grants) == 2 and len(kms) == 1
    assert as_list(kms[0]["Action"]) == ["kms:GenerateDataKey"]  # what SSE-KMS PutObject needs
    assert as_list(kms[0]["Resource"]) == [KEY_ARN]
    # Only through S3 in the stack's region: the role cannot use the key directly.
    assert kms[0]["Condition"] == {"StringEquals": {"kms:ViaService": f"s3.{REGION}.amazonaws.com"}}
    (s3,) = [st for st in grants if st not in kms]
    assert as_list(s3["Action"]) == ["s3:PutObject"]


@pytest.mark.parametrize(("key", "algorithm"), [(None, "AES256"), (KEY_ARN, "aws:kms")])
def test_created_customer_bucket_is_private_encrypted_and_tls_only(key: str | None, algorithm: str) -> None:
    _, resolve = resolved("customer", BucketName="acme-logs", **({"KmsKeyArn": key} if key else {}))
    active = resolve.active_resources()
    bucket = active["DeliveredLogBucket"]
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("Retain", "Retain")
    props = resolve(bucket["Properties"])
    assert props["BucketName"] == "acme-logs"
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    (sse,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    default = {"SSEAlgorithm": algorithm, **({"KMSMasterKeyID": key} if key else {})}
    assert sse["ServerSideEncryptionByDefault"] == default
    policy = resolve(active["DeliveredLogBucketPolicy"]["Properties"])
    assert policy["Bucket"] == "<DeliveredLogBucket>"
    (deny,) = statements(policy["PolicyDocument"])
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Resource"] == ["<DeliveredLogBucket.Arn>", "<DeliveredLogBucket.Arn>/*"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_existing_customer_bucket_is_left_as_it_is() -> None:
    _, resolve = resolved("customer", BucketName="acme-logs", CreateBucket="false", KmsKeyArn=KEY_ARN)
    assert not {n for n, r in resolve.active_resources().items() if r["Type"].startswith("AWS::S3::")}


@pytest.mark.parametrize(
    ("param", "value", "ok"),
    [
        ("BucketPrefix", "ROSA/cluster-logs/", True),
        ("BucketPrefix", "logs/", True),
        ("BucketPrefix", "a/b.c/d_e-f/", True),
        ("BucketPrefix", "logs", False),  # the trailing "/" is required (CONTRACTS.md §3)
        ("BucketPrefix", "", False),
        ("BucketPrefix", "/", False),
        ("BucketPrefix", "/logs/", False),
        ("BucketPrefix", "a//b/", False),
        ("BucketPrefix", "logs*/", False),  # a wildcard would widen the role's resource ARN
        ("BucketPrefix", "lo?s/", False),
        ("BucketName", "", True),
        ("BucketName", "acme-logs.archive", True),
        ("BucketName", "Acme", False),
        ("BucketName", "a", False),
        ("KmsKeyArn", "", True),
        ("KmsKeyArn", KEY_ARN, True),
        ("KmsKeyArn", "arn:aws:kms:us-east-1:111122223333:alias/logs", False),
        ("KmsKeyArn", "1234abcd-12ab-34cd-56ef-1234567890ab", False),
    ],
)
def test_customer_s3_parameters_are_constrained(param: str, value: str, ok: bool) -> None:
    spec = load_template(TEMPLATES["customer"])["Parameters"][param]
    assert (re.fullmatch(spec["AllowedPattern"], value) is not None) is ok


def test_bucket_blocks_public_access_encrypts_with_kms_and_expires_objects() -> None:
    template, resolve = resolved("core")
    bucket = resolve(template["Resources"]["CentralLogBucket"]["Properties"])
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (sse,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert sse["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "<LogsKey.Arn>"}
    rules = bucket["LifecycleConfiguration"]["Rules"]
    assert any(r["Status"] == "Enabled" and r.get("ExpirationInDays") for r in rules)
    (notify,) = bucket["NotificationConfiguration"]["TopicConfigurations"]
    assert notify["Event"] == "s3:ObjectCreated:*"
    assert notify["Filter"]["S3Key"]["Rules"] == [{"Name": "suffix", "Value": ".gz"}]
    assert notify["Topic"] == "<ObjectCreatedTopic>"


def test_topic_policy_is_scoped_to_the_bucket_without_a_dependency_cycle() -> None:
    template, resolve = resolved("core")
    res = template["Resources"]
    bucket_name = resolve(res["CentralLogBucket"]["Properties"]["BucketName"])
    assert "<" not in bucket_name, "the bucket name must be deterministic (no generated name)"
    (st,) = statements(resolve(res["ObjectCreatedTopicPolicy"]["Properties"]["PolicyDocument"]))
    assert st["Principal"] == {"Service": "s3.amazonaws.com"}
    assert st["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}
    assert st["Condition"]["ArnLike"] == {"aws:SourceArn": f"arn:aws:s3:::{bucket_name}"}
    # The policy names the bucket by string: a Ref/GetAtt to it plus the bucket's DependsOn would cycle.
    assert "CentralLogBucket" not in str(res["ObjectCreatedTopicPolicy"])
    assert res["CentralLogBucket"]["DependsOn"] == "ObjectCreatedTopicPolicy"


TENANT_TABLE_MODES = ("v2", "v1-and-v2-read-v1", "v1-and-v2-read-v2")


def test_tables_have_contract_keys_pitr_and_kms() -> None:
    template, resolve = resolved("core", TenantTableMode="v1-and-v2-read-v1")
    expected = {
        # CONTRACTS.md §3: v2 for every stack; v1 only while an older stack migrates.
        "TenantDeliveriesTable": [("tenant_id", "HASH"), ("delivery_id", "RANGE")],
        "TenantConfigTable": [("tenant_id", "HASH")],
        # §7: the ledger's key schema never changes.
        "DeliveryLedgerTable": [("tenant_id", "HASH"), ("object_key", "RANGE")],
    }
    for name, keys in expected.items():
        res = template["Resources"][name]
        props = resolve(res["Properties"])
        assert [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]] == keys
        assert {(a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]} == {
            (k, "S") for k, _ in keys
        }
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": "<LogsKey>"}
        # A replacement or a removal from the stack keeps the table and its items.
        assert (res["DeletionPolicy"], res["UpdateReplacePolicy"]) == ("Retain", "Retain"), name


def test_the_tenant_api_nonce_table_expires_its_items_and_only_the_api_roles_put_into_it() -> None:
    """CONTRACTS.md §9: nonces remembered past the timestamp window (pipeline/api/nonces.py), by a
    conditional PutItem of the tenant API's roles and of nothing else."""
    template, resolve = resolved("core")
    props = resolve(template["Resources"]["ApiNonceTable"]["Properties"])
    assert props["TableName"] == "multi-tenant-logging-development-tenant-api-nonces"
    assert [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]] == [("nonce", "HASH")]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": "<LogsKey>"}
    assert resolve.active_outputs()["ApiNonceTableName"] == "<ApiNonceTable>"
    # No processor policy of the core stack names it.
    for name, res in template["Resources"].items():
        if res["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Role"):
            assert "ApiNonceTable" not in json.dumps(res), name
    nonces = "multi-tenant-logging-development-tenant-api-nonces"
    for stack, params in [
        ("tenant-api", {**TENANT_API_PARAMS, "ApiNonceTableName": nonces}),
        ("cluster", {"CentralLogDistributionRoleArn": CENTRAL_ARN, "TenantConfigTableName": "t",
                     "ApiNonceTableName": nonces}),
    ]:  # fmt: skip
        t, r = resolved(stack, **params)
        (policy,) = r(t["Resources"]["TenantApiRole"]["Properties"])["Policies"]
        grants = [g for g in statements(policy["PolicyDocument"]) if nonces in json.dumps(g)]
        assert grants == [{"Sid": "Nonces", "Effect": "Allow", "Action": "dynamodb:PutItem",
                           "Resource": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{nonces}"}], stack  # fmt: skip


def test_the_replay_request_table_has_the_stores_keys_and_expires_old_requests() -> None:
    """CONTRACTS.md §7 REPLAY_REQUEST_TABLE: hash tenant_id, range replay_id (pipeline/replay/requests.py)."""
    template, resolve = resolved("core")
    props = resolve(template["Resources"]["ReplayRequestTable"]["Properties"])
    assert props["TableName"] == "multi-tenant-logging-development-replay-requests"
    keys = [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]]
    assert keys == [("tenant_id", "HASH"), ("replay_id", "RANGE")]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": "<LogsKey>"}
    assert resolve.active_outputs()["ReplayRequestTableName"] == "<ReplayRequestTable>"


def test_v1_tenant_table_keeps_what_existing_stacks_have() -> None:
    """Stacks created before v2 hold logical TenantConfigTable, named <project>-<env>-tenant-configs, keyed by
    tenant_id. Changing any of these would make CloudFormation replace (or refuse to replace) it."""
    template, resolve = resolved("core", TenantTableMode="v1-and-v2-read-v1")
    v1 = resolve(template["Resources"]["TenantConfigTable"]["Properties"])
    assert v1["TableName"] == "multi-tenant-logging-development-tenant-configs"
    v2 = resolve(template["Resources"]["TenantDeliveriesTable"]["Properties"])
    assert v2["TableName"] == "multi-tenant-logging-development-tenant-deliveries"
    assert template["Parameters"]["TenantTableMode"]["Default"] == "v2", "new stacks get only the v2 table"
    assert set(template["Parameters"]["TenantTableMode"]["AllowedValues"]) == set(TENANT_TABLE_MODES)


@pytest.mark.parametrize(
    ("mode", "tables", "processors_read"),
    [
        ("v2", {"TenantDeliveriesTable"}, "TenantDeliveriesTable"),
        ("v1-and-v2-read-v1", {"TenantConfigTable", "TenantDeliveriesTable"}, "TenantConfigTable"),
        ("v1-and-v2-read-v2", {"TenantConfigTable", "TenantDeliveriesTable"}, "TenantDeliveriesTable"),
    ],
)
def test_tenant_table_mode_selects_the_tables_and_the_one_the_processors_read(
    mode: str, tables: set[str], processors_read: str
) -> None:
    template, resolve = resolved("core", TenantTableMode=mode)
    active = resolve.active_resources()
    assert {n for n, r in active.items() if r["Type"] == "AWS::DynamoDB::Table"} == tables | {
        "DeliveryLedgerTable",
        "DeliveryStatusTable",
        "ApiNonceTable",
        "ReplayRequestTable",
    }
    outputs = resolve.active_outputs()
    assert outputs["TenantConfigTableName"] == f"<{processors_read}>"  # TENANT_CONFIG_TABLE (lambda, k8s)
    assert outputs["TenantTableV2Name"] == "<TenantDeliveriesTable>"
    assert outputs.get("TenantTableV1Name") == ("<TenantConfigTable>" if "TenantConfigTable" in tables else None)
    # The processors may read every tenant table the stack holds, and describe it (v1 or v2 by key schema).
    doc = resolve(template["Resources"]["DeliveryPolicy"]["Properties"]["PolicyDocument"])
    (read,) = [st for st in statements(doc) if st["Sid"] == "ReadTenantConfig"]
    # What pipeline/tenants.py calls (DescribeTable, Query, and Scan for --all-tenants), nothing more.
    assert set(as_list(read["Action"])) == {"dynamodb:DescribeTable", "dynamodb:Query", "dynamodb:Scan"}
    assert sorted(as_list(read["Resource"])) == sorted(f"<{t}.Arn>" for t in tables)


@pytest.mark.parametrize(
    ("name", "params"),
    [("core", {"TenantTableMode": m}) for m in TENANT_TABLE_MODES]
    + [
        ("customer", {}),
        ("customer", {"BucketName": "acme-logs"}),
        ("customer", {"BucketName": "acme-logs", "CreateBucket": "false"}),
        ("customer", {"BucketName": "acme-logs", "KmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/k-1"}),
        ("customer", {"KmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/k-1"}),
    ],
)
def test_nothing_created_refers_to_a_resource_that_is_not(name: str, params: dict[str, str]) -> None:
    """cfn-lint only warns (W1001) about a Ref to a resource its Condition may leave out; the deploy fails."""
    template, resolve = resolved(name, **params)
    active = resolve.active_resources()
    text = str([resolve(r) for r in active.values()]) + str(resolve.active_outputs())
    for logical in set(template["Resources"]) - set(active):
        assert f"<{logical}>" not in text and f"<{logical}." not in text, f"{name} {params}: {logical} is absent"


def test_ledger_is_read_and_written_by_key_only() -> None:
    template, resolve = resolved("core")
    doc = resolve(template["Resources"]["DeliveryPolicy"]["Properties"]["PolicyDocument"])
    (ledger,) = [st for st in statements(doc) if st["Resource"] == "<DeliveryLedgerTable.Arn>"]
    # Exactly what pipeline/ledger.py calls: UpdateItem writes each delivery's record into the object's item
    # without losing the others', BatchWriteItem writes the whole items of S3-only objects of a replay unit.
    assert set(ledger["Action"]) == {
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Query",
        "dynamodb:UpdateItem",
        "dynamodb:BatchWriteItem",
    }


def test_no_shared_writer_role_can_write_the_whole_bucket() -> None:
    """The collectors write with their own cluster's role (cluster stack): nothing in the core stack may
    put objects into the central bucket."""
    template = load_template(TEMPLATES["core"])
    for resource, _kind, doc in iter_policies(template, template_params(template, REQUIRED_PARAMS["core"])):
        for st in statements(doc):
            if st["Effect"] == "Allow":
                assert not {"s3:PutObject", "s3:AbortMultipartUpload"} & set(as_list(st["Action"])), resource


@pytest.mark.parametrize("cluster", ["prod-1", "c" * 21])
def test_a_collector_role_writes_only_under_its_own_cluster_prefix(cluster: str) -> None:
    template, resolve = resolved("cluster", ClusterName=cluster)
    role = template["Resources"]["VectorRole"]["Properties"]
    assert "ManagedPolicyArns" not in role
    grants = [st for p in role["Policies"] for st in statements(resolve(p["PolicyDocument"]))]
    bucket = REQUIRED_PARAMS["cluster"]["BucketName"]
    by_action = {a: st for st in grants for a in as_list(st["Action"])}
    assert all(st["Effect"] == "Allow" and "Condition" not in st for st in grants)
    assert set(by_action) == {"s3:PutObject", "kms:GenerateDataKey"}
    # CONTRACTS.md §1: the key's first segment is the cluster id, so "<bucket>/<cluster>/*" is its keys only.
    assert as_list(by_action["s3:PutObject"]["Resource"]) == [f"arn:aws:s3:::{bucket}/{cluster}/*"]
    assert as_list(by_action["kms:GenerateDataKey"]["Resource"]) == [REQUIRED_PARAMS["cluster"]["LogsKeyArn"]]
    # The other role of the stack, the consumer's, writes nothing into the bucket either.
    processor = resolve(template["Resources"]["ProcessorRole"]["Properties"])
    assert "Policies" not in processor


def test_sqs_queue_contract_and_topic_scoped_queue_policy() -> None:
    template, resolve = resolved("sqs")
    res = template["Resources"]
    queue = resolve(res["DeliveryQueue"]["Properties"])
    assert queue["VisibilityTimeout"] == 900
    assert queue["ReceiveMessageWaitTimeSeconds"] == 20
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": "<DeadLetterQueue.Arn>", "maxReceiveCount": 5}
    (st,) = statements(resolve(res["DeliveryQueuePolicy"]["Properties"]["PolicyDocument"]))
    assert st["Condition"] == {"ArnEquals": {"aws:SourceArn": REQUIRED_PARAMS["sqs"]["TopicArn"]}}
    sub = resolve(res["TopicSubscription"]["Properties"])
    assert sub["Protocol"] == "sqs" and sub["Endpoint"] == "<DeliveryQueue.Arn>"


def test_lambda_function_shape_and_environment() -> None:
    template, resolve = resolved("lambda")
    fn = resolve(template["Resources"]["LogDistributorFunction"]["Properties"])
    assert fn["PackageType"] == "Image"
    assert fn["ImageConfig"]["Command"] == ["pipeline.commands.consumer.lambda_handler"]  # in the installed package
    assert set(fn["Environment"]["Variables"]) == {
        "EXECUTION_MODE",
        "S3_BUCKET_NAME",
        "TENANT_CONFIG_TABLE",
        "DELIVERY_LEDGER_TABLE",
        "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN",
        "LEDGER_RETENTION_DAYS",
        "DELIVERY_STATUS_TABLE",
        "LAMBDA_TIME_RESERVE_SECONDS",
        "METRICS_NAMESPACE",
    }
    assert fn["Environment"]["Variables"]["EXECUTION_MODE"] == "lambda"
    esm = resolve(template["Resources"]["QueueEventSource"]["Properties"])
    assert esm["BatchSize"] == 10
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_lambda_role_may_delay_the_records_it_holds_back() -> None:
    """The handler sets a held record's visibility with ChangeMessageVisibility on its receipt handle
    (pipeline/consumer/lambda_handler.py): the execution policy must grant it on the queue."""
    template, resolve = resolved("lambda")
    policy = resolve(template["Resources"]["LambdaExecutionPolicy"]["Properties"]["PolicyDocument"])
    (consume,) = [st for st in statements(policy) if st.get("Sid") == "ConsumeDeliveryQueue"]
    assert "sqs:ChangeMessageVisibility" in consume["Action"]
    assert consume["Resource"] == REQUIRED_PARAMS["lambda"]["QueueArn"]


def test_lambda_settings_follow_aws_advice_for_sqs_event_sources() -> None:
    """Visibility at least 6x the function timeout, maxReceiveCount at least 5, and the event source's
    MaximumConcurrency rather than reserved concurrency (which throttles and burns receives)."""
    lam, resolve = resolved("lambda")
    sqs, resolve_sqs = resolved("sqs")
    visibility = resolve_sqs(sqs["Resources"]["DeliveryQueue"]["Properties"])["VisibilityTimeout"]
    timeout = lam["Parameters"]["TimeoutSeconds"]
    assert visibility >= 6 * int(timeout["MaxValue"]) and visibility >= 6 * int(timeout["Default"])
    redrive = resolve_sqs(sqs["Resources"]["DeliveryQueue"]["Properties"])["RedrivePolicy"]
    assert redrive["maxReceiveCount"] >= 5
    fn = resolve(lam["Resources"]["LogDistributorFunction"]["Properties"])
    assert "ReservedConcurrentExecutions" not in fn
    esm = resolve(lam["Resources"]["QueueEventSource"]["Properties"])
    assert 2 <= int(esm["ScalingConfig"]["MaximumConcurrency"]) <= 1000
    reserve = int(lam["Parameters"]["TimeReserveSeconds"]["Default"])
    assert reserve < int(timeout["MinValue"]), "the reserve must leave time to start records"


def test_alarms_cover_the_queue_the_dlq_and_the_lambda_path() -> None:
    alarms = {}
    for name in ("sqs", "lambda"):
        template, resolve = resolved(name, **({"CanaryTenant": "log-canary"} if name == "lambda" else {}))
        for logical, res in template["Resources"].items():
            if res["Type"] == "AWS::CloudWatch::Alarm":
                alarms[logical] = resolve(res["Properties"])
    metrics = {(a["Namespace"], a["MetricName"]) for a in alarms.values()}
    assert ("AWS/SQS", "ApproximateNumberOfMessagesVisible") in metrics  # DLQ not empty
    assert ("AWS/SQS", "ApproximateAgeOfOldestMessage") in metrics
    assert {("AWS/Lambda", "Errors"), ("AWS/Lambda", "Throttles")} <= metrics
    canary = alarms["CanaryLateAlarm"]
    assert canary["TreatMissingData"] == "breaching"
    # The EMF metric names the handler prints are the Prometheus names (pipeline/consumer/emf.py).
    from pipeline.consumer.metrics import Metrics

    exported = {f.name + "_total" for f in Metrics().registry.collect() if f.type == "counter"}
    for a in alarms.values():
        if a["Namespace"] == "<MetricsNamespace>" or not a["Namespace"].startswith("AWS/"):
            assert a["MetricName"] in exported, a["MetricName"]


@pytest.mark.parametrize(
    ("name", "role", "namespace", "account"),
    [
        ("cluster", "VectorRole", "logging", "vector-logs"),
        ("cluster", "ProcessorRole", "log-delivery", "log-consumer"),
        ("cluster", "TenantApiRole", "log-delivery", "tenant-api"),
        ("replay", "ReplayRole", "log-replay", "log-replay"),
    ],
)
def test_irsa_roles_trust_one_service_account_through_the_oidc_provider(
    name: str, role: str, namespace: str, account: str
) -> None:
    template, resolve = resolved(name)
    trust = policy_document(resolve(template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]))
    (st,) = statements(trust)
    oidc = REQUIRED_PARAMS[name]["OidcProvider"]
    assert st["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{oidc}"}
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert st["Condition"] == {
        "StringEquals": {
            f"{oidc}:sub": f"system:serviceaccount:{namespace}:{account}",
            f"{oidc}:aud": "sts.amazonaws.com",
        }
    }


def test_cluster_tenant_api_role_is_the_lambda_role_without_its_secret_and_log_grants() -> None:
    table = TENANT_API_PARAMS["TenantConfigTableName"]
    nonces = TENANT_API_PARAMS["ApiNonceTableName"]
    template, resolve = resolved(
        "cluster", CentralLogDistributionRoleArn=CENTRAL_ARN, TenantConfigTableName=table, ApiNonceTableName=nonces
    )
    assert resolve.exists("TenantApiRole") and resolve.exists("TenantApiRoleArn")
    irsa = resolve(template["Resources"]["TenantApiRole"]["Properties"])
    assert irsa["RoleName"] == "multi-tenant-logging-prod-1-tenant-api"
    assert "ManagedPolicyArns" not in irsa
    lambda_template = load_template(TEMPLATES["tenant-api"])
    lambda_resolve = Resolver(lambda_template, template_params(lambda_template, TENANT_API_PARAMS))
    lambda_role = lambda_resolve(lambda_template["Resources"]["TenantApiRole"]["Properties"])
    ((lambda_policy,), (policy,)) = lambda_role["Policies"], irsa["Policies"]
    lambda_grants = {st["Sid"]: st for st in statements(lambda_policy["PolicyDocument"])}
    grants = {st["Sid"]: st for st in statements(policy["PolicyDocument"])}
    # The Deployment reads its key from a Kubernetes Secret and logs to stdout.
    assert set(lambda_grants) - {"ApiKey", "OwnLogs"} == {
        "TenantTable",
        "Nonces",
        "TableAndSecretKey",
        "PreflightFirstHop",
    }
    assert grants.pop("TableKey") == {**lambda_grants.pop("TableAndSecretKey"), "Sid": "TableKey"}
    assert grants == {k: v for k, v in lambda_grants.items() if k not in ("ApiKey", "OwnLogs")}
    assert grants["TenantTable"]["Resource"] == f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}"
    assert grants["PreflightFirstHop"]["Resource"] == CENTRAL_ARN
    # Without the central role (every cluster stack from before the tenant API): no role, no output.
    _, resolve = resolved("cluster")
    assert not resolve.exists("TenantApiRole") and "TenantApiRoleArn" not in resolve.active_outputs()
    assert {"VectorRole", "ProcessorRole"} == set(resolve.active_resources())


def test_cluster_tenant_api_parameters_accept_what_deploy_sh_passes_and_empty() -> None:
    params = load_template(TEMPLATES["cluster"])["Parameters"]
    for name, good, bad in (
        ("CentralLogDistributionRoleArn", [CENTRAL_ARN, "arn:aws:iam::123456789012:role/path/r", ""],
         ["CentralLogDistributionRole", "arn:aws:iam::1234:role/r"]),
        ("TenantConfigTableName", ["multi-tenant-logging-development-tenant-deliveries", ""], ["a b", "t/x"]),
        ("ApiNonceTableName", ["multi-tenant-logging-development-tenant-api-nonces", ""], ["a b", "t/x"]),
    ):  # fmt: skip
        assert params[name]["Default"] == ""
        for value in good:
            assert re.fullmatch(params[name]["AllowedPattern"], value), (name, value)
        for value in bad:
            assert not re.fullmatch(params[name]["AllowedPattern"], value), (name, value)


def test_replay_role_gets_the_delivery_policy_and_nothing_else() -> None:
    template, resolve = resolved("replay")
    props = resolve(template["Resources"]["ReplayRole"]["Properties"])
    assert props["ManagedPolicyArns"] == [REQUIRED_PARAMS["replay"]["DeliveryPolicyArn"]]
    assert "Policies" not in props
    # With the bucket given, one more thing: its reports under reports/, outside every cluster's prefix.
    key = "arn:aws:kms:us-east-1:123456789012:key/k"
    template, resolve = resolved("replay", BucketName="central", LogsKeyArn=key)
    assert resolve.exists("ReportWriterPolicy") and not resolved("replay")[1].exists("ReportWriterPolicy")
    policy = resolve(template["Resources"]["ReportWriterPolicy"]["Properties"])
    assert policy["Roles"] == ["<ReplayRole>"]
    assert statements(policy["PolicyDocument"]) == [
        {
            "Sid": "WriteReports",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": "arn:aws:s3:::central/reports/*",
        },
        {"Sid": "EncryptReports", "Effect": "Allow", "Action": "kms:GenerateDataKey", "Resource": key},
    ]
    core, core_resolve = resolved("core")
    doc = core_resolve(core["Resources"]["DeliveryPolicy"]["Properties"]["PolicyDocument"])
    actions = {a for st in statements(doc) for a in as_list(st["Action"])}
    # What a replay does: list and read objects, read tenants, read/write the ledger, take the first hop.
    assert {"s3:ListBucket", "s3:GetObject", "kms:Decrypt", "dynamodb:GetItem", "dynamodb:BatchWriteItem"} <= actions
    assert {"dynamodb:DescribeTable", "dynamodb:Query", "dynamodb:UpdateItem"} <= actions
    assert {"sts:AssumeRole"} <= actions
    assert not {a for a in actions if a.startswith("sqs:") or a in ("s3:PutObject", "s3:DeleteObject")}
    (hop,) = [st for st in statements(doc) if st["Action"] == "sts:AssumeRole"]
    assert hop["Resource"] == CENTRAL_ARN


def test_role_names_fit_iam_and_the_central_trust_patterns() -> None:
    """Role names built from the longest allowed parameters stay within IAM's 64 characters."""
    longest = {"ProjectName": "p" * 20, "Environment": "development"}
    for name in ("core", "cluster", "replay"):
        template = load_template(TEMPLATES[name])
        overrides = {**REQUIRED_PARAMS[name], **{k: v for k, v in longest.items() if k in template["Parameters"]}}
        if "ClusterName" in template["Parameters"]:
            overrides["ClusterName"] = "c" * 21
        resolve = Resolver(template, template_params(template, overrides))
        resolve.values["AWS::Region"] = "ap-southeast-2"
        for res in template["Resources"].values():
            if res["Type"] == "AWS::IAM::Role":
                assert len(resolve(res["Properties"]["RoleName"])) <= 64
        if name == "core":
            bucket = resolve(template["Resources"]["CentralLogBucket"]["Properties"]["BucketName"])
            assert len(bucket) <= 63


def test_deploy_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(CFN_DIR / "deploy.sh")], check=True)
