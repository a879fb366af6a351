"""CloudFormation templates: cfn-lint, and the IAM policy rules the design depends on (issue #5)."""

from __future__ import annotations

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
    "customer": {"CentralLogDistributionRoleArn": "arn:aws:iam::999988887777:role/CentralLogDistributionRole"},
    "cluster": {
        "ClusterName": "prod-1",
        "OidcProvider": "oidc.example.com/id/ABC",
        "S3WriterRoleArn": f"arn:aws:iam::{ACCOUNT}:role/w",
        "DeliveryPolicyArn": f"arn:aws:iam::{ACCOUNT}:policy/d",
    },
    "replay": {
        "ClusterName": "prod-1",
        "OidcProvider": "oidc.example.com/id/ABC",
        "DeliveryPolicyArn": f"arn:aws:iam::{ACCOUNT}:policy/d",
    },
}


def resolved(name: str) -> tuple[dict, Resolver]:
    template = load_template(TEMPLATES[name])
    return template, Resolver(template, template_params(template, REQUIRED_PARAMS.get(name)))


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


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_no_policy_allows_wildcard_actions(name: str) -> None:
    template = load_template(TEMPLATES[name])
    params = template_params(template, REQUIRED_PARAMS.get(name))
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


def test_central_role_assumes_only_customer_roles_with_its_own_account_as_external_id() -> None:
    template, resolve = resolved("global")
    role = template["Resources"]["CentralLogDistributionRole"]["Properties"]
    grants = [st for p in role["Policies"] for st in statements(resolve(p["PolicyDocument"]))]
    assert grants, "the central role has no permissions"
    for st in grants:
        assert st["Effect"] == "Allow"
        assert as_list(st["Action"]) == ["sts:AssumeRole"]
        assert as_list(st["Resource"]) == ["arn:aws:iam::*:role/CustomerLogDistribution-*"]
        assert st["Condition"] == {"StringEquals": {"sts:ExternalId": ACCOUNT}}
    assert not role.get("ManagedPolicyArns"), "managed policies would grant more than the customer hop"
    policy_types = ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    other = [r for r, res in template["Resources"].items() if res["Type"] in policy_types]
    assert not other, f"extra policies in the global stack: {other}"
    # Only the project's processor and replay roles may take the first hop.
    trust = statements(resolve(role["AssumeRolePolicyDocument"]))
    assert trust[0]["Condition"]["ArnLike"]["aws:PrincipalArn"] == [
        f"arn:aws:iam::{ACCOUNT}:role/multi-tenant-logging-*-processor",
        f"arn:aws:iam::{ACCOUNT}:role/multi-tenant-logging-*-replay",
    ]


def test_customer_trust_requires_the_external_id_of_the_central_account() -> None:
    template, resolve = resolved("customer")
    role = template["Resources"]["CustomerLogDistributionRole"]["Properties"]
    assert resolve(role["RoleName"]).startswith("CustomerLogDistribution-"), "central role could not assume it"
    trust = statements(resolve(role["AssumeRolePolicyDocument"]))
    assert len(trust) == 1
    (st,) = trust
    assert st["Principal"] == {"AWS": REQUIRED_PARAMS["customer"]["CentralLogDistributionRoleArn"]}
    assert st["Action"] == "sts:AssumeRole"
    # The ExternalId is the *central* account (from the central role's ARN), not the customer's own.
    assert st["Condition"] == {"StringEquals": {"sts:ExternalId": "999988887777"}}


def test_customer_permissions_are_least_privilege_on_its_log_group() -> None:
    template, resolve = resolved("customer")
    role = template["Resources"]["CustomerLogDistributionRole"]["Properties"]
    group = template["Parameters"]["LogGroupName"]["Default"]
    group_arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}"
    for st in statements(resolve(role["Policies"][0]["PolicyDocument"])):
        actions = as_list(st["Action"])
        assert all(a.startswith("logs:") for a in actions)
        if st["Resource"] == "*":
            assert actions == ["logs:DescribeLogGroups"], "only DescribeLogGroups may use Resource *"
        else:
            assert as_list(st["Resource"])[0] in (group_arn, f"{group_arn}:log-stream:*")
    granted = {a for st in statements(resolve(role["Policies"][0]["PolicyDocument"])) for a in as_list(st["Action"])}
    assert {"logs:PutLogEvents", "logs:CreateLogStream", "logs:CreateLogGroup"} <= granted


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


def test_tables_have_contract_keys_pitr_and_kms() -> None:
    template, resolve = resolved("core")
    expected = {
        "TenantConfigTable": [("tenant_id", "HASH")],
        "DeliveryLedgerTable": [("tenant_id", "HASH"), ("object_key", "RANGE")],
    }
    for name, keys in expected.items():
        props = resolve(template["Resources"][name]["Properties"])
        assert [(k["AttributeName"], k["KeyType"]) for k in props["KeySchema"]] == keys
        assert {a["AttributeType"] for a in props["AttributeDefinitions"]} == {"S"}
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": "<LogsKey>"}


def test_s3_writer_can_only_put_objects() -> None:
    template, resolve = resolved("core")
    role = template["Resources"]["S3WriterRole"]["Properties"]
    docs = [resolve(p["PolicyDocument"]) for p in role["Policies"]]
    actions = {a for doc in docs for st in statements(doc) for a in as_list(st["Action"])}
    assert {a for a in actions if a.startswith("s3:")} == {"s3:PutObject", "s3:AbortMultipartUpload"}
    (trust,) = statements(resolve(role["AssumeRolePolicyDocument"]))
    assert trust["Condition"]["ArnLike"]["aws:PrincipalArn"].endswith(":role/multi-tenant-logging-*-vector")


def test_sqs_queue_contract_and_topic_scoped_queue_policy() -> None:
    template, resolve = resolved("sqs")
    res = template["Resources"]
    queue = resolve(res["DeliveryQueue"]["Properties"])
    assert queue["VisibilityTimeout"] == 900
    assert queue["ReceiveMessageWaitTimeSeconds"] == 20
    assert queue["RedrivePolicy"] == {"deadLetterTargetArn": "<DeadLetterQueue.Arn>", "maxReceiveCount": 3}
    (st,) = statements(resolve(res["DeliveryQueuePolicy"]["Properties"]["PolicyDocument"]))
    assert st["Condition"] == {"ArnEquals": {"aws:SourceArn": REQUIRED_PARAMS["sqs"]["TopicArn"]}}
    sub = resolve(res["TopicSubscription"]["Properties"])
    assert sub["Protocol"] == "sqs" and sub["Endpoint"] == "<DeliveryQueue.Arn>"


def test_lambda_function_shape_and_environment() -> None:
    template, resolve = resolved("lambda")
    fn = resolve(template["Resources"]["LogDistributorFunction"]["Properties"])
    assert fn["PackageType"] == "Image"
    assert fn["ImageConfig"]["Command"] == ["jobs.consumer.lambda_handler"]
    assert set(fn["Environment"]["Variables"]) == {
        "EXECUTION_MODE",
        "S3_BUCKET_NAME",
        "TENANT_CONFIG_TABLE",
        "DELIVERY_LEDGER_TABLE",
        "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN",
    }
    assert fn["Environment"]["Variables"]["EXECUTION_MODE"] == "lambda"
    assert int(template["Parameters"]["TimeoutSeconds"]["MaxValue"]) <= 900, "must stay below the visibility timeout"
    esm = resolve(template["Resources"]["QueueEventSource"]["Properties"])
    assert esm["BatchSize"] == 10
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


@pytest.mark.parametrize(
    ("name", "role", "namespace", "account"),
    [
        ("cluster", "VectorRole", "logging", "vector-logs"),
        ("cluster", "ProcessorRole", "log-delivery", "log-consumer"),
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


def test_replay_role_gets_the_delivery_policy_and_nothing_else() -> None:
    template, resolve = resolved("replay")
    props = resolve(template["Resources"]["ReplayRole"]["Properties"])
    assert props["ManagedPolicyArns"] == [REQUIRED_PARAMS["replay"]["DeliveryPolicyArn"]]
    assert "Policies" not in props
    core, core_resolve = resolved("core")
    doc = core_resolve(core["Resources"]["DeliveryPolicy"]["Properties"]["PolicyDocument"])
    actions = {a for st in statements(doc) for a in as_list(st["Action"])}
    # What a replay does: list and read objects, read tenants, read/write the ledger, take the first hop.
    assert {"s3:ListBucket", "s3:GetObject", "kms:Decrypt", "dynamodb:GetItem", "dynamodb:PutItem"} <= actions
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
