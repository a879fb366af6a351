"""docs/DEPLOY.md (linked from the README) deploys in the order the files depend on."""

from __future__ import annotations

import json
import re

import pytest
from infra_helpers import REPO, TEMPLATES, Resolver, load_template, template_params

DOC = (REPO / "docs" / "DEPLOY.md").read_text()


def first(pattern: str) -> int:
    m = re.search(pattern, DOC)
    assert m, f"DEPLOY.md never does {pattern!r}"
    return m.start()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # the regional and customer stacks need the global role's ARN
        (r"deploy\.sh -t global", r"deploy\.sh -t regional"),
        (r"deploy\.sh -t global", r"deploy\.sh -t customer"),
        # the processor image copies Vector from the collector image; Lambda needs the pushed image
        (r"Containerfile\.collector -t", r"Containerfile\.processor -t"),
        (r"podman push", r"--include-lambda"),
        # the SQS stack reads the core stack's topic; Lambda reads the queue
        (r"deploy\.sh -t regional --central-role-arn \S+\n", r"--include-sqs\n"),
        (r"--include-sqs\n", r"--include-lambda"),
        # IRSA roles attach the core (and SQS) stacks' policies
        (r"--include-lambda", r"deploy\.sh -t cluster"),
        (r"deploy\.sh -t regional", r"deploy\.sh -t replay"),
        # the tenant API reads the core stack's table and key, runs the pushed image and takes the first hop
        (r"deploy\.sh -t regional", r"deploy\.sh -t tenant-api"),
        (r"podman push", r"deploy\.sh -t tenant-api"),
        (r"deploy\.sh -t global", r"deploy\.sh -t tenant-api"),
        # the tenant API's IRSA role reads the core stack's v2 table
        (r"deploy\.sh -t regional", r"deploy\.sh -t cluster[^`]*--central-role-arn"),
        # workloads need their IRSA roles
        (r"deploy\.sh -t cluster", r"kubectl apply -k collector/vector/base"),
        (r"deploy\.sh -t cluster", r"kubectl apply -k k8s/consumer"),
        (r"deploy\.sh -t replay", r"kubectl apply -k k8s/kuberay"),
        (r"Containerfile\.ray -t", r"kubectl apply -k k8s/kuberay"),
        # the tenant API runs its own image, pushed first; its Ray token is a copy of the cluster's
        (r"Containerfile\.api -t", r"podman push \"\$API_IMAGE_URI\""),
        (r"podman push \"\$API_IMAGE_URI\"", r"deploy\.sh -t tenant-api[^`]*--api-image-uri"),
        (r"secret generic log-replay-ray-token", r"secret generic tenant-api-ray-token"),
        # an S3 delivery: the tenant's bucket and role first, then the item, then a backfill into it
        (r"deploy\.sh -t customer[^`]*--bucket-name", r"aws dynamodb put-item"),
        (r"aws dynamodb put-item", r"replay\.py --tenant acme --since 60d --delivery s3-archive"),
        # the migration: v2 beside v1, copy (dry run first), check, switch, then retire v1
        (r"--tenant-table-mode v1-and-v2-read-v1", r"tenants\.py migrate"),
        (r"--to \S+ --dry-run\n", r"--to \S+\n"),
        (r"--to \S+\n", r"tenants\.py list\n"),
        (r"tenants\.py list\n", r"--tenant-table-mode v1-and-v2-read-v2"),
        (r"tenants\.py migrate", r"--tenant-table-mode v1-and-v2-read-v2"),
        (r"--tenant-table-mode v1-and-v2-read-v2", r"--tenant-table-mode v2\n"),
    ],
)
def test_steps_come_in_dependency_order(before: str, after: str) -> None:
    assert first(before) < first(after)


def test_paths_in_the_doc_exist() -> None:
    paths = set(re.findall(r"\b((?:infra|collector|k8s|containers)/[\w./-]+[\w])", DOC))
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing


def test_deploy_script_flags_in_the_doc_are_real() -> None:
    script = (REPO / "infra" / "cloudformation" / "deploy.sh").read_text()
    commands = re.findall(r"deploy\.sh (?:[^\n]*\\\n)*[^\n]*", DOC)
    flags = {f for c in commands for f in re.findall(r"(?<!\S)(-[a-z]|--[a-z-]+)\b", c)}
    assert {"-t", "--central-role-arn", "--include-sqs", "--include-lambda", "--cluster-name"} <= flags
    for flag in flags:
        assert re.search(rf"(\s|\|){re.escape(flag)}[|)]", script), f"deploy.sh has no {flag}"


def section(title: str) -> str:
    m = re.search(rf"^## \d+\. {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.S | re.M)
    assert m, f"DEPLOY.md has no section {title!r}"
    return m.group(1)


def test_the_first_migrate_is_a_dry_run() -> None:
    runs = re.findall(r"tenants\.py migrate (?:[^\n]*\\\n)*[^\n]*", section("Migrating a v1 tenant table to v2"))
    assert len(runs) >= 2
    assert "--dry-run" in runs[0] and "--dry-run" not in runs[-1]
    for run in runs:
        assert re.search(r"--from \S+-tenant-configs\b", run) and re.search(r"--to \S+-tenant-deliveries\b", run)


def test_tenant_table_names_modes_and_outputs_match_the_core_template() -> None:
    template = load_template(TEMPLATES["core"])
    mode = template["Parameters"]["TenantTableMode"]
    resolve = Resolver(
        template,
        template_params(template, {"CentralLogDistributionRoleArn": "x", "TenantTableMode": "v1-and-v2-read-v1"}),
    )
    names = {
        resolve(template["Resources"][t]["Properties"]["TableName"])
        for t in ("TenantConfigTable", "TenantDeliveriesTable")
    }
    assert set(re.findall(r"multi-tenant-logging-development-tenant-[a-z]+", DOC)) == names
    modes = set(re.findall(r"--tenant-table-mode (\S+)", DOC))
    assert modes and modes <= set(mode["AllowedValues"]), modes
    in_table = set(re.findall(r"^\| `([a-z0-9-]+)`", section("Migrating a v1 tenant table to v2"), re.M))
    assert in_table == set(mode["AllowedValues"]), "the mode table lists every mode"
    outputs = {k for t in ("core", "customer") for k in load_template(TEMPLATES[t])["Outputs"]}
    quoted = set(re.findall(r"OutputKey=='(\w+)'", DOC))
    assert {"TenantTableV2Name"} <= quoted and quoted - {"CentralLogDistributionRoleArn"} <= outputs


def test_the_s3_delivery_item_is_a_valid_v2_item_for_the_customer_stack() -> None:
    text = section("Adding an S3 delivery for a tenant")
    (raw,) = re.findall(r"--item '(\{.*?\})'", text, re.S)
    item = {k: next(iter(v.values())) for k, v in json.loads(raw).items()}
    assert {"tenant_id", "delivery_id", "type", "log_distribution_role_arn", "target_region", "bucket_name"} <= set(
        item
    )
    assert item["type"] == "s3" and item["delivery_id"] == "s3-archive"
    assert re.fullmatch(r"[a-z0-9][-a-z0-9]{0,62}", item["delivery_id"])
    assert item["bucket_prefix"].endswith("/")
    # The item names what the customer stack in the same section was deployed with.
    (deploy,) = re.findall(r"deploy\.sh -t customer (?:[^\n]*\\\n)*[^\n]*", text)
    flags = dict(re.findall(r"(-[a-z]|--[a-z-]+) (?!-)(\S+)", deploy))
    assert flags["--bucket-name"] == item["bucket_name"]
    assert flags["--bucket-prefix"] == item["bucket_prefix"]
    assert flags["--kms-key-arn"] == item["kms_key_arn"]
    assert item["log_distribution_role_arn"].endswith(f"CustomerLogDistribution-{flags['-r']}")
    assert item["target_region"] == flags["-r"]
    params = load_template(TEMPLATES["customer"])["Parameters"]
    for flag, param in (
        ("--bucket-name", "BucketName"),
        ("--bucket-prefix", "BucketPrefix"),
        ("--kms-key-arn", "KmsKeyArn"),
    ):
        assert re.fullmatch(params[param]["AllowedPattern"], flags[flag]), f"{flag} {flags[flag]} breaks {param}"
