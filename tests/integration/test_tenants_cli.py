"""The tenant CLI (`jobs/tenants.py list` and `migrate`) against a real moto server over HTTP.

One provisioned stack serves the module; every test that writes makes its own tables, with names of its own,
so the tests stay independent. Expectations come from the sample tenants of devstack.provision and
from CONTRACTS.md §3 read independently (the v2 item of a v1 tenant is its v1 fields plus
`delivery_id = type = "cloudwatch"`), never from the code under test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from click.testing import CliRunner, Result

from devstack.provision import LocalEnvironment, create_tenant_table
from jobs.tenants import main
from pipeline.tenants import TableSchema, TenantDirectory

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::999999999999:role/CustomerLogDistribution-{}"


@pytest.fixture
def env(module_aws: LocalEnvironment) -> LocalEnvironment:
    return module_aws


def cli(*args: str, **env: str | None) -> Result:
    return CliRunner().invoke(main, list(args), env=env or None, catch_exceptions=False)


def as_json(result: Result) -> dict[str, Any]:
    return json.loads(result.stdout)


def new_table(env: LocalEnvironment, schema: TableSchema, items: Sequence[dict[str, Any]] = ()) -> str:
    name = f"tenants-{schema}-{uuid.uuid4().hex[:8]}"
    ddb = env.client("dynamodb")
    create_tenant_table(ddb, name, schema)
    ser = TypeSerializer()
    for item in items:
        ddb.put_item(TableName=name, Item={k: ser.serialize(v) for k, v in item.items()})
    return name


def scan(env: LocalEnvironment, table: str) -> dict[tuple[str, str], dict[str, Any]]:
    de = TypeDeserializer()
    out = {}
    for page in env.client("dynamodb").get_paginator("scan").paginate(TableName=table):
        for raw in page["Items"]:
            item = {k: de.deserialize(v) for k, v in raw.items()}
            out[(item["tenant_id"], item.get("delivery_id", ""))] = item
    return out


def v1_items(env: LocalEnvironment) -> list[dict[str, Any]]:
    """The v1 item of every sample tenant that has a CloudWatch delivery (a v1 table holds nothing else)."""
    return [t.config_item() for t in env.tenants if t.cloudwatch]


def expected_v2(v1: dict[str, Any]) -> dict[str, Any]:
    """§3 by hand: the v1 fields, the delivery `cloudwatch`, `enabled` explicit, desired_logs lower-cased."""
    out = {**v1, "delivery_id": "cloudwatch", "type": "cloudwatch", "enabled": v1.get("enabled", True)}
    if "desired_logs" in v1:
        out["desired_logs"] = sorted(n.lower() for n in v1["desired_logs"])
    return out


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# -- list ----------------------------------------------------------------------------------------------------


def test_list_v2_shows_every_delivery_of_every_tenant(env: LocalEnvironment) -> None:
    result = cli("list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0].split() == [
        "TENANT",
        "DELIVERY",
        "TYPE",
        "ENABLED",
        "TARGET",
        "DESIRED_LOGS",
        "CLUSTERS",
        "FLAGS",
    ]
    assert f"table {env.names.tenant_table} (v2): 5 tenants, 6 deliveries, 0 invalid, 0 legacy (no profile)" in out
    rows = {tuple(line.split()[:3]): line for line in out.splitlines()[1:-1]}
    want = {(t.tenant_id, i["delivery_id"], i["type"]) for t in env.tenants for i in t.delivery_items()}
    assert set(rows) == want
    assert "/logs/globex (eu-west-1)" in rows[("globex", "cloudwatch", "cloudwatch")]
    assert "frontend,payment-service" in rows[("globex", "cloudwatch", "cloudwatch")]
    assert rows[("initech", "cloudwatch", "cloudwatch")].split()[3] == "no"
    umbrella_s3 = env.tenant("umbrella").bucket
    assert f"s3://{umbrella_s3}/ROSA/cluster-logs/" in rows[("umbrella", "s3-archive", "s3")]
    assert rows[("hooli", "archive", "s3")].split()[3] == "yes"


def test_list_json_is_each_delivery_as_its_v2_item(env: LocalEnvironment) -> None:
    result = cli("list", "--json")
    assert result.exit_code == 0, result.output
    doc = as_json(result)
    assert doc["schema"] == "v2"
    assert doc["counts"] == {"tenants": 5, "deliveries": 6, "invalid": 0, "legacy": 0}
    got = {(t["tenant_id"], d["delivery_id"]): d for t in doc["tenants"] for d in t["deliveries"]}
    hooli = env.tenant("hooli")
    assert got[("hooli", "archive")] == {
        "tenant_id": "hooli",
        "delivery_id": "archive",
        "type": "s3",
        "log_distribution_role_arn": hooli.role_arn,
        "target_region": "eu-west-1",
        "enabled": True,
        "bucket_name": hooli.bucket,
        "bucket_prefix": "ROSA/cluster-logs/",
        "target": f"s3://{hooli.bucket}/ROSA/cluster-logs/",
    }
    assert got[("acme", "cloudwatch")]["log_group_name"] == "/logs/acme"
    assert got[("globex", "cloudwatch")]["desired_logs"] == ["frontend", "payment-service"]


def test_list_reads_a_v1_table(env: LocalEnvironment) -> None:
    table = new_table(env, TableSchema.V1, v1_items(env))
    result = cli("list", "--table", table, "--json")
    assert result.exit_code == 0, result.output
    doc = as_json(result)
    assert doc["schema"] == "v1"
    got = {(t["tenant_id"], d["delivery_id"], d["type"]) for t in doc["tenants"] for d in t["deliveries"]}
    assert got == {(i["tenant_id"], "cloudwatch", "cloudwatch") for i in v1_items(env)}
    human = cli("list", "--table", table)
    assert human.exit_code == 0
    assert f"table {table} (v1): 4 tenants, 4 deliveries, 0 invalid, 4 legacy (no profile)" in human.stdout


def test_list_shows_an_invalid_delivery_with_its_fields_and_exits_1(env: LocalEnvironment) -> None:
    good = env.tenant("umbrella").delivery_items()
    bad = {"tenant_id": "umbrella", "delivery_id": "ftp", "type": "ftp", "target_region": "nowhere"}
    no_prefix_slash = {**good[1], "delivery_id": "s3-raw", "bucket_prefix": "raw"}
    table = new_table(env, TableSchema.V2, [*good, bad, no_prefix_slash])
    result = cli("list", "--table", table)
    assert result.exit_code == 1, result.output
    lines = {tuple(line.split()[:3]): line for line in result.stdout.splitlines()}
    ftp = lines[("umbrella", "ftp", "INVALID")]
    for name in ("type", "log_distribution_role_arn", "target_region"):
        assert f"{name}:" in ftp
    assert "bucket_prefix" in lines[("umbrella", "s3-raw", "INVALID")]
    assert ("umbrella", "cloudwatch", "cloudwatch") in lines  # the tenant's other deliveries are unaffected
    assert ("umbrella", "s3-archive", "s3") in lines
    doc = as_json(cli("list", "--table", table, "--json"))
    assert {i["delivery_id"] for i in doc["tenants"][0]["invalid"]} == {"ftp", "s3-raw"}
    assert doc["counts"] == {"tenants": 1, "deliveries": 2, "invalid": 2, "legacy": 1}


def test_list_as_a_user_runs_it_subprocess(env: LocalEnvironment) -> None:
    environ = {**os.environ, **env.env}
    proc = subprocess.run(
        [sys.executable, "jobs/tenants.py", "list"], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("TENANT")
    assert "acme" in proc.stdout and "/logs/acme (us-east-1)" in proc.stdout
    assert proc.stderr == ""
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.tenants", "list", "--json"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["counts"]["deliveries"] == 6


# -- configuration errors: exit 3, one line ------------------------------------------------------------------


def test_missing_table_name_exits_3(env: LocalEnvironment) -> None:
    result = cli("list", TENANT_CONFIG_TABLE=None)
    assert result.exit_code == 3
    assert "TENANT_CONFIG_TABLE" in one_line(result)


def test_table_not_found_exits_3_naming_it(env: LocalEnvironment) -> None:
    result = cli("list", "--table", "no-such-table")
    assert result.exit_code == 3
    assert "'no-such-table' does not exist" in one_line(result)
    v2 = new_table(env, TableSchema.V2)
    result = cli("migrate", "--from", "no-such-v1", "--to", v2)
    assert result.exit_code == 3
    assert "--from table 'no-such-v1' does not exist" in one_line(result)


def test_wrong_key_schema_exits_3_naming_the_table(env: LocalEnvironment) -> None:
    v1 = new_table(env, TableSchema.V1, v1_items(env))
    v2 = new_table(env, TableSchema.V2)
    result = cli("migrate", "--from", v2, "--to", v2)
    assert result.exit_code == 3
    line = one_line(result)
    assert f"--from table '{v2}' is a v2" in line and "needs a v1" in line
    result = cli("migrate", "--from", v1, "--to", v1)
    assert result.exit_code == 3
    assert f"--to table '{v1}' is a v1" in one_line(result)
    result = cli("list", "--table", env.names.ledger_table)  # hash tenant_id, range object_key
    assert result.exit_code == 3
    assert f"'{env.names.ledger_table}' is not a tenant table" in one_line(result)
    assert scan(env, v2) == {}


def test_usage_errors_exit_2(env: LocalEnvironment) -> None:
    assert cli("migrate", "--from", "x").exit_code == 2
    assert cli("list", "--bogus").exit_code == 2


# -- migrate -------------------------------------------------------------------------------------------------


def test_dry_run_writes_nothing_and_says_what_it_would_do(env: LocalEnvironment) -> None:
    v1 = new_table(env, TableSchema.V1, v1_items(env))
    v2 = new_table(env, TableSchema.V2)
    result = cli("migrate", "--from", v1, "--to", v2, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run: nothing written" in result.stdout
    assert result.stdout.count("would copy") == 4
    assert scan(env, v2) == {}
    doc = as_json(cli("migrate", "--from", v1, "--to", v2, "--dry-run", "--json"))
    assert doc["dry_run"] is True and doc["ok"] is True
    assert doc["counts"] == {"copied": 4, "unchanged": 0, "conflict": 0, "invalid": 0}
    assert {t["tenant_id"]: t["item"] for t in doc["tenants"]} == {
        i["tenant_id"]: expected_v2(i) for i in v1_items(env)
    }
    assert scan(env, v2) == {}


def test_migrate_copies_the_sample_tenants_and_a_second_run_is_all_unchanged(env: LocalEnvironment) -> None:
    stamped = {**v1_items(env)[0], "created_at": "2023-01-02T03:04:05Z", "updated_at": "2024-02-03T04:05:06Z"}
    items = [stamped, *v1_items(env)[1:]]
    v1 = new_table(env, TableSchema.V1, items)
    v2 = new_table(env, TableSchema.V2)
    result = cli("migrate", "--from", v1, "--to", v2, "--json")
    assert result.exit_code == 0, result.output
    doc = as_json(result)
    assert doc["counts"] == {"copied": 4, "unchanged": 0, "conflict": 0, "invalid": 0}
    assert scan(env, v2) == {(i["tenant_id"], "cloudwatch"): expected_v2(i) for i in items}
    # Stamps are kept where they exist and never invented.
    assert "created_at" not in scan(env, v2)[("globex", "cloudwatch")]

    again = cli("migrate", "--from", v1, "--to", v2)
    assert again.exit_code == 0, again.output
    assert "4 v1 items: 0 copied, 4 unchanged, 0 conflict, 0 invalid" in again.stdout
    assert scan(env, v2) == {(i["tenant_id"], "cloudwatch"): expected_v2(i) for i in items}
    assert scan(env, v1) == {(i["tenant_id"], ""): i for i in items}  # the source is only read


def test_a_migrated_table_gives_the_same_tenants_as_the_v1_one(env: LocalEnvironment) -> None:
    items = [*v1_items(env), {**v1_items(env)[0], "tenant_id": "stamped", "created_at": "2023-01-02T03:04:05Z"}]
    v1 = new_table(env, TableSchema.V1, items)
    v2 = new_table(env, TableSchema.V2)
    assert cli("migrate", "--from", v1, "--to", v2).exit_code == 0
    ddb = env.client("dynamodb")
    before, after = TenantDirectory(v1, client=ddb), TenantDirectory(v2, client=ddb)
    assert (before.schema, after.schema) == (TableSchema.V1, TableSchema.V2)
    assert before.tenants() == after.tenants()
    assert [t.tenant_id for t in after.tenants()] == sorted(i["tenant_id"] for i in items)
    assert before.get("globex") == after.get("globex")


def test_into_the_provisioned_v2_table_every_tenant_is_already_there(env: LocalEnvironment) -> None:
    """provision wrote the same deliveries, globex's desired_logs in their original case: the same delivery."""
    v1 = new_table(env, TableSchema.V1, v1_items(env))
    before = scan(env, env.names.tenant_table)
    result = cli("migrate", "--from", v1, "--to", env.names.tenant_table)
    assert result.exit_code == 0, result.output
    assert "4 v1 items: 0 copied, 4 unchanged, 0 conflict, 0 invalid" in result.stdout
    assert scan(env, env.names.tenant_table) == before


def test_a_different_existing_v2_item_is_a_conflict_and_is_not_overwritten(env: LocalEnvironment) -> None:
    v1 = new_table(env, TableSchema.V1, v1_items(env))
    theirs = {**expected_v2(v1_items(env)[0]), "log_group_name": "/logs/acme-moved", "enabled": False}
    v2 = new_table(env, TableSchema.V2, [theirs])
    result = cli("migrate", "--from", v1, "--to", v2)
    assert result.exit_code == 1, result.output
    conflict = next(line for line in result.stdout.splitlines() if line.startswith("acme "))
    assert "conflict" in conflict and "log_group_name" in conflict and "enabled" in conflict
    assert "3 copied, 0 unchanged, 1 conflict, 0 invalid" in result.stdout
    assert scan(env, v2)[("acme", "cloudwatch")] == theirs
    doc = as_json(cli("migrate", "--from", v1, "--to", v2, "--json"))
    acme = next(t for t in doc["tenants"] if t["tenant_id"] == "acme")
    assert acme["action"] == "conflict"
    assert set(acme["fields"]) == {"log_group_name", "enabled"}
    assert "/logs/acme-moved" in acme["fields"]["log_group_name"]
    assert doc["ok"] is False


def test_an_invalid_v1_item_is_reported_with_its_fields_and_not_copied(env: LocalEnvironment) -> None:
    broken = {"tenant_id": "broken", "log_distribution_role_arn": ROLE.format("broken"), "target_region": "moon"}
    noted = {**v1_items(env)[0], "tenant_id": "noted", "notes": "onboarded by hand", "bucket_name": "x-logs"}
    v1 = new_table(env, TableSchema.V1, [*v1_items(env), broken, noted])
    v2 = new_table(env, TableSchema.V2)
    result = cli("migrate", "--from", v1, "--to", v2)
    assert result.exit_code == 1, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("broken "))
    assert "invalid" in line and "log_group_name: required field is missing" in line and "target_region" in line
    assert "(not copied: bucket_name, notes)" in next(li for li in result.stdout.splitlines() if li.startswith("noted"))
    copied = scan(env, v2)
    assert ("broken", "cloudwatch") not in copied
    assert set(copied) == {(i["tenant_id"], "cloudwatch") for i in v1_items(env)} | {("noted", "cloudwatch")}
    assert "notes" not in copied[("noted", "cloudwatch")]
    doc = as_json(cli("migrate", "--from", v1, "--to", v2, "--json"))
    assert doc["counts"] == {"copied": 0, "unchanged": 5, "conflict": 0, "invalid": 1}
    entry = next(t for t in doc["tenants"] if t["tenant_id"] == "broken")
    assert set(entry["fields"]) == {"log_group_name", "target_region"}


def test_more_tenants_than_one_batch_read(env: LocalEnvironment) -> None:
    items = [
        {
            "tenant_id": f"t-{n:03d}",
            "log_distribution_role_arn": ROLE.format(n),
            "log_group_name": f"/logs/t-{n:03d}",
            "target_region": "us-east-1",
        }
        for n in range(130)
    ]
    v1 = new_table(env, TableSchema.V1, items)
    v2 = new_table(env, TableSchema.V2, [expected_v2(items[110])])
    doc = as_json(cli("migrate", "--from", v1, "--to", v2, "--json"))
    assert doc["counts"] == {"copied": 129, "unchanged": 1, "conflict": 0, "invalid": 0}
    assert len(scan(env, v2)) == 130
    doc = as_json(cli("migrate", "--from", v1, "--to", v2, "--json"))
    assert doc["counts"] == {"copied": 0, "unchanged": 130, "conflict": 0, "invalid": 0}


# -- changing deliveries: put, show, patch, enable, disable, delete, export, import ---------------------------------


def cw_item(tenant: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "cloudwatch",
        "log_distribution_role_arn": ROLE.format(tenant),
        "target_region": "us-east-1",
        "log_group_name": f"/logs/{tenant}",
        **extra,
    }


def profile(tenant: str, account: str = "999999999999") -> dict[str, Any]:
    """A profile item as the tools would write it (the ExternalId a stand-in for a generated one)."""
    return {"tenant_id": tenant, "delivery_id": "_tenant", "accounts": [account], "external_id": f"{tenant}-x" * 8}


def test_put_from_a_yaml_file_then_show_patch_disable_enable_delete(env: LocalEnvironment, tmp_path: Path) -> None:
    table = new_table(env, TableSchema.V2, [profile("acme")])
    source = tmp_path / "acme.yaml"
    source.write_text("type: cloudwatch\nlog_distribution_role_arn: " + ROLE.format("acme") +
                      "\ntarget_region: us-east-1\nlog_group_name: /logs/acme\ndesired_logs: [Frontend]\n"
                      "clusters: [prod-1]\n")  # fmt: skip
    put = cli("put", "acme", "cloudwatch", "--file", str(source), "--table", table, "--json")
    assert put.exit_code == 0, put.output
    assert as_json(put)["action"] == "created"
    stored = scan(env, table)[("acme", "cloudwatch")]
    assert stored["desired_logs"] == ["frontend"] and stored["created_at"] == stored["updated_at"]
    # The same again is unchanged and not written.
    again = cli("put", "acme", "cloudwatch", "--file", str(source), "--table", table, "--json")
    assert as_json(again)["action"] == "unchanged"
    assert scan(env, table)[("acme", "cloudwatch")]["updated_at"] == stored["updated_at"]

    shown = cli("show", "acme", "--table", table, "--json")
    assert shown.exit_code == 0
    (item,) = as_json(shown)["deliveries"]
    human = cli("show", "acme", "--table", table)
    assert "log_group_name" in human.stdout and "/logs/acme" in human.stdout and item["etag"] in human.stdout

    patched = cli("patch", "acme", "cloudwatch", "--desired-logs", "a,b", "--desired-logs", "c", "--table", table)
    assert patched.exit_code == 0, patched.output
    assert scan(env, table)[("acme", "cloudwatch")]["desired_logs"] == ["a", "b", "c"]
    stale = cli("patch", "acme", "cloudwatch", "--unset", "desired_logs", "--if-match", item["etag"], "--table", table)
    assert stale.exit_code == 1 and "If-Match" in stale.stderr
    assert cli("disable", "acme", "--table", table).exit_code == 0
    assert scan(env, table)[("acme", "cloudwatch")]["enabled"] is False
    assert cli("enable", "acme", "cloudwatch", "--table", table).exit_code == 0
    assert scan(env, table)[("acme", "cloudwatch")]["enabled"] is True

    declined = CliRunner().invoke(main, ["delete", "acme", "cloudwatch", "--table", table], input="n\n")
    assert declined.exit_code == 1 and ("acme", "cloudwatch") in scan(env, table)
    assert cli("delete", "acme", "cloudwatch", "--yes", "--table", table).exit_code == 0
    assert set(scan(env, table)) == {("acme", "_tenant")}  # the profile is never a delivery to delete
    assert as_json(cli("show", "acme", "--table", table, "--json"))["deliveries"] == []
    assert cli("show", "nobody", "--table", table).exit_code == 1


def test_put_from_flags_refuses_a_bad_item_naming_every_field_and_writes_nothing(env: LocalEnvironment) -> None:
    table = new_table(env, TableSchema.V2, [profile("acme")])
    result = cli("put", "acme", "s3-archive", "--type", "s3", "--target-region", "mars", "--bucket-prefix", "x",
                 "--log-group-name", "/logs/acme", "--table", table, "--json")  # fmt: skip
    assert result.exit_code == 1
    assert set(as_json(result)["fields"]) == {
        "log_distribution_role_arn",  # missing
        "target_region",  # not a region
        "bucket_name",  # missing
        "bucket_prefix",  # does not end with '/'
        "log_group_name",  # not a field of an s3 delivery
        "clusters",  # required for a new delivery
    }
    human = cli("put", "acme", "s3-archive", "--type", "s3", "--table", table)
    assert human.exit_code == 1 and "bucket_name: required field is missing" in human.stderr
    assert set(scan(env, table)) == {("acme", "_tenant")}


def test_export_then_import_round_trips_and_import_validates_everything_first(
    env: LocalEnvironment, tmp_path: Path
) -> None:
    profiles = [t.profile_item() for t in env.tenants]
    bound = [{**i, "clusters": ["prod-1"]} for t in env.tenants for i in t.delivery_items()]
    source = new_table(env, TableSchema.V2, profiles + bound)
    exported = cli("export", "--table", source)
    assert exported.exit_code == 0, exported.output
    doc = yaml.safe_load(exported.stdout)
    assert set(doc["tenants"]) == {t.tenant_id for t in env.tenants}
    assert not [d for ds in doc["tenants"].values() for d in ds if d == "_tenant"]  # profiles are not exported
    assert "external_id" not in exported.stdout
    assert doc["tenants"]["umbrella"]["s3-archive"]["bucket_prefix"] == "ROSA/cluster-logs/"
    assert "created_at" not in exported.stdout
    path = tmp_path / "tenants.yaml"
    path.write_text(exported.stdout)

    gone = {"tenant_id": "gone", "delivery_id": "cloudwatch", **cw_item("gone")}
    target = new_table(env, TableSchema.V2, [*profiles, gone])
    dry = cli("import", str(path), "--table", target, "--prune", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    actions = {(d["tenant_id"], d["action"]) for d in as_json(dry)["deliveries"]}
    assert actions >= {("acme", "would create"), ("gone", "would delete")}
    assert set(scan(env, target)) == {("gone", "cloudwatch")} | {(t.tenant_id, "_tenant") for t in env.tenants}
    applied = cli("import", str(path), "--table", target, "--prune")
    assert applied.exit_code == 0, applied.output
    strip = ("created_at", "updated_at")
    got = {k: {f: v for f, v in i.items() if f not in strip} for k, i in scan(env, target).items()}
    # §3: desired_logs are case-insensitive, written as every reader reads them.
    want = {k: {**i, **({"desired_logs": sorted(n.lower() for n in i["desired_logs"])} if "desired_logs" in i else {})}
            for k, i in scan(env, source).items()}  # fmt: skip
    assert got == want
    assert cli("export", "--table", target).stdout.replace(target, source) == exported.stdout
    assert "0 created" not in cli("import", str(path), "--table", target).stdout  # a rerun: all unchanged

    # One bad delivery in the file: nothing is written, and every bad field of it is named.
    doc["tenants"]["acme"]["cloudwatch"]["target_region"] = "mars"
    doc["tenants"]["newco"] = {"cloudwatch": cw_item("newco", colour="blue")}
    path.write_text(yaml.safe_dump(doc))
    before = scan(env, target)
    bad = cli("import", str(path), "--table", target, "--json")
    assert bad.exit_code == 1
    invalid = as_json(bad)["invalid"]
    assert invalid["acme/cloudwatch"] == {"target_region": "'mars' is not valid"}
    # newco has no profile (legacy: no new delivery), the item no clusters, and a field §3 does not define.
    assert invalid["newco/cloudwatch"]["colour"] == "not a field of a delivery (CONTRACTS.md §3)"
    assert set(invalid["newco/cloudwatch"]) == {"colour", "tenant_id", "clusters"}
    assert "has no profile" in invalid["newco/cloudwatch"]["tenant_id"]
    assert scan(env, target) == before


def test_writes_need_a_v2_table_and_a_table_name(env: LocalEnvironment) -> None:
    v1 = new_table(env, TableSchema.V1)
    result = cli("put", "acme", "cloudwatch", "--type", "cloudwatch", "--table", v1)
    assert result.exit_code == 3 and v1 in result.stderr
    assert cli("export", TENANT_CONFIG_TABLE=None).exit_code == 3
    assert cli("serve", TENANT_API_KEY=None, TENANT_API_KEY_SECRET_ARN=None).exit_code == 3
    assert cli("patch", "acme", "cloudwatch").exit_code == 2  # nothing to change
    assert cli("delete", "acme").exit_code == 2


def test_serve_reads_the_keys_from_secrets_manager_or_a_file_and_refuses_a_missing_one(
    env: LocalEnvironment, tmp_path: Path
) -> None:
    from pipeline.api.auth import KeyScope
    from pipeline.api.keys import load_keys
    from pipeline.errors import ConfigError

    # The two keys of a rotation, one of them read-only (docs/TENANTS.md, the key document).
    doc = {"keys": [{"id": "ops-2026-12", "secret": "s3cr3t-from-secrets-manager", "scope": "admin"},
                    {"id": "dashboard", "secret": "an0ther-s3cr3t-for-reading", "scope": "read"}]}  # fmt: skip
    arn = env.client("secretsmanager").create_secret(Name=f"api-{uuid.uuid4().hex[:6]}",
                                                     SecretString=json.dumps(doc))["ARN"]  # fmt: skip
    ring = load_keys({"TENANT_API_KEY_SECRET_ARN": arn})
    assert ring.ids == ["dashboard", "ops-2026-12"]
    assert ring.get("dashboard").scope is KeyScope.READ  # type: ignore[union-attr]
    assert ring.get("ops-2026-12").secret == "s3cr3t-from-secrets-manager"  # type: ignore[union-attr]
    # What CloudFormation's GenerateSecretString writes: one key object.
    one = {"id": "admin-1", "scope": "admin", "secret": "x" * 48}
    single = env.client("secretsmanager").create_secret(Name=f"api-{uuid.uuid4().hex[:6]}",
                                                        SecretString=json.dumps(one))["ARN"]  # fmt: skip
    assert load_keys({"TENANT_API_KEY_SECRET_ARN": single}).ids == ["admin-1"]
    # The mounted file (the Kubernetes Secret volume).
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc))
    assert load_keys({"TENANT_API_KEYS_FILE": str(path)}).ids == ["dashboard", "ops-2026-12"]
    # Locally: one admin key, id local.
    local = load_keys({"TENANT_API_KEY": "a-local-key-of-some-length"}).get("local")
    assert local is not None and local.scope is KeyScope.ADMIN
    with pytest.raises(ConfigError, match="ResourceNotFoundException") as info:
        load_keys({"TENANT_API_KEY_SECRET_ARN": arn + "-nope"})
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(ConfigError, match="TENANT_API_KEY"):
        load_keys({})
    with pytest.raises(ConfigError, match="not several"):
        load_keys({"TENANT_API_KEYS_FILE": str(path), "TENANT_API_KEY": "a-local-key-of-some-length"})
    bad_docs = [
        "s3cr3t-not-a-document",
        json.dumps({"keys": []}),
        json.dumps({"keys": [{"id": "a", "secret": "s3cr3t-long-enough!", "scope": "read"}], "more": 1}),
        json.dumps({"keys": [{"id": "a", "secret": "short", "scope": "admin"}]}),
        json.dumps({"keys": [{"id": "a", "secret": "s3cr3t-long-enough!", "scope": "root"}]}),
        json.dumps({"keys": [{"id": "a b", "secret": "s3cr3t-long-enough!", "scope": "read"}]}),
        json.dumps({"keys": [{"id": "a", "secret": "s3cr3t-long-enough!", "scope": "read"}] * 2}),
    ]
    for text in bad_docs:
        path.write_text(text)
        with pytest.raises(ConfigError, match="TENANT_API_KEYS_FILE") as info:
            load_keys({"TENANT_API_KEYS_FILE": str(path)})
        assert "s3cr3t" not in str(info.value), text
    with pytest.raises(ConfigError, match="cannot read"):
        load_keys({"TENANT_API_KEYS_FILE": str(tmp_path / "absent.json")})


def test_serve_needs_tls_beyond_loopback_and_a_nonce_table_beyond_a_local_key(env: LocalEnvironment) -> None:
    plain = cli("serve", "--host", "0.0.0.0", TENANT_API_KEY="a-local-key-of-some-length")
    assert plain.exit_code == 2 and "--tls-cert" in plain.stderr
    half = cli("serve", "--tls-cert", __file__, TENANT_API_KEY="a-local-key-of-some-length")
    assert half.exit_code == 2 and "go together" in half.stderr
    # A deployed key source without API_NONCE_TABLE: every replica would remember its own nonces.
    doc = json.dumps({"id": "admin-1", "scope": "admin", "secret": "x" * 48})
    arn = env.client("secretsmanager").create_secret(Name=f"api-{uuid.uuid4().hex[:6]}", SecretString=doc)["ARN"]
    no_table = cli("serve", TENANT_API_KEY_SECRET_ARN=arn, API_NONCE_TABLE=None, TENANT_API_KEY=None)
    assert no_table.exit_code == 3 and "API_NONCE_TABLE" in no_table.stderr


def test_serve_runs_https_with_its_certificate_and_remembers_nonces_in_the_table(
    env: LocalEnvironment, tmp_path: Path
) -> None:
    """`log-tenants serve` as the Deployment runs it: TLS from PEM files, keys from a mounted file, nonces in
    API_NONCE_TABLE (the local stack's), a signed request accepted once."""
    import ssl

    import httpx

    from devstack.server import free_port
    from tests.support.tenant_api import ApiClient, self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    keys = tmp_path / "keys.json"
    secret = "k3y-" + uuid.uuid4().hex
    keys.write_text(json.dumps({"keys": [{"id": "ops", "secret": secret, "scope": "admin"}]}))
    port = free_port()
    environ = {**os.environ, **env.env, "TENANT_API_KEYS_FILE": str(keys)}
    environ.pop("TENANT_API_KEY", None)
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--tls-cert", cert, "--tls-key", key]
    proc = subprocess.Popen([sys.executable, "jobs/tenants.py", *args], cwd=REPO, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        client = ApiClient(f"https://127.0.0.1:{port}", secret, "ops", verify=ssl.create_default_context(cafile=cert))
        # Started when its log says so (uvicorn's own line, as JSON on stderr).
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Uvicorn running on https://" in line:
                break
        else:
            raise AssertionError(f"serve exited with {proc.wait()}")
        captured = client.prepare("GET", "/tenants")
        assert client.send(captured).status_code == 200
        assert client.send(captured).status_code == 401  # the nonce is in the table now
        item = env.client("dynamodb").get_item(
            TableName=env.names.nonce_table, Key={"nonce": {"S": f"ops/{captured.headers['X-Nonce']}"}}
        )
        assert "Item" in item
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # no plain HTTP on the port
    finally:
        proc.terminate()
        proc.wait(30)


# -- tenant profiles, account binding, clusters (CONTRACTS.md §3) ---------------------------------------------

EXTERNAL_ID_RE = re.compile(r"[A-Za-z0-9_+=,.@:/-]{32,128}")


def deploy_line(out: str) -> str:
    (line,) = [li for li in out.splitlines() if li.startswith("aws cloudformation deploy")]
    return line


def test_profile_create_prints_the_generated_external_id_once_with_the_customers_deploy_command(
    env: LocalEnvironment,
) -> None:
    table = new_table(env, TableSchema.V2)
    created = cli("profile", "create", "acme", "--account", "111111111111", "--region", "eu-west-1", "--table", table)
    assert created.exit_code == 0, created.output
    stored = scan(env, table)[("acme", "_tenant")]
    external_id = stored["external_id"]
    assert EXTERNAL_ID_RE.fullmatch(external_id) and len(external_id) >= 43  # 256 bits, base64url
    assert stored["accounts"] == ["111111111111"]
    assert f"ExternalId: {external_id}" in created.stdout
    assert deploy_line(created.stdout) == (
        "aws cloudformation deploy --region eu-west-1 --stack-name log-delivery-customer-eu-west-1 "
        "--template-file customer-log-distribution-role.yaml --capabilities CAPABILITY_NAMED_IAM "
        f"--parameter-overrides CentralLogDistributionRoleArn={env.central_role_arn} ExternalId={external_id}"
    )
    # Changing the accounts keeps the id, and does not print it again.
    more = cli("profile", "create", "acme", "--account", "111111111111,222222222222", "--table", table)
    assert more.exit_code == 0, more.output
    assert external_id not in more.stdout and "replaced" in more.stdout
    assert scan(env, table)[("acme", "_tenant")]["external_id"] == external_id
    assert scan(env, table)[("acme", "_tenant")]["accounts"] == ["111111111111", "222222222222"]
    # Another tenant gets an id of its own; `profile show` prints the id and the command again.
    cli("profile", "create", "globex", "--account", "333333333333", "--table", table)
    assert scan(env, table)[("globex", "_tenant")]["external_id"] != external_id
    shown = cli("profile", "show", "acme", "--region", "us-east-1", "--table", table)
    assert shown.exit_code == 0 and f"ExternalId={external_id}" in deploy_line(shown.stdout)
    # Bad accounts: every problem named, nothing written.
    bad = cli("profile", "create", "initech", "--account", "12345", "--table", table, "--json")
    assert bad.exit_code == 1 and "accounts" in as_json(bad)["fields"]
    assert ("initech", "_tenant") not in scan(env, table)
    assert cli("profile", "show", "initech", "--table", table).exit_code == 1


def test_a_delivery_outside_the_tenants_accounts_is_refused_naming_the_field(env: LocalEnvironment) -> None:
    table = new_table(env, TableSchema.V2, [profile("acme", "111111111111")])
    theirs = "arn:aws:iam::222222222222:role/CustomerLogDistribution-globex"
    refused = cli("put", "acme", "cloudwatch", "--type", "cloudwatch", "--log-distribution-role-arn", theirs,
                  "--target-region", "us-east-1", "--log-group-name", "/logs/globex", "--clusters", "prod-1",
                  "--table", table)  # fmt: skip
    assert refused.exit_code == 1
    assert (
        "log_distribution_role_arn: account 222222222222 is not one of the accounts of tenant 'acme' (111111111111)"
        in refused.stderr
    )
    assert set(scan(env, table)) == {("acme", "_tenant")}
    ours = "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme"
    ok = cli("put", "acme", "s3", "--type", "s3", "--log-distribution-role-arn", ours, "--target-region", "us-east-1",
             "--bucket-name", "acme-logs", "--clusters", "prod-1", "--table", table)  # fmt: skip
    assert ok.exit_code == 0, ok.output
    # Moving it into another account, or naming another account's KMS key, is refused the same way.
    moved = cli("patch", "acme", "s3", "--log-distribution-role-arn", theirs, "--table", table, "--json")
    assert moved.exit_code == 1 and set(as_json(moved)["fields"]) == {"log_distribution_role_arn"}
    key = "arn:aws:kms:us-east-1:222222222222:key/k-1"
    keyed = cli("patch", "acme", "s3", "--kms-key-arn", key, "--table", table, "--json")
    assert keyed.exit_code == 1 and set(as_json(keyed)["fields"]) == {"kms_key_arn"}
    assert scan(env, table)[("acme", "s3")]["log_distribution_role_arn"] == ours
    # An account a delivery writes into cannot be taken from the profile.
    shrink = cli("profile", "create", "acme", "--account", "333333333333", "--table", table)
    assert shrink.exit_code == 1 and "s3 (account 111111111111)" in shrink.stderr


def test_a_legacy_tenant_takes_no_new_delivery_or_role_but_can_still_be_disabled(env: LocalEnvironment) -> None:
    legacy = {"tenant_id": "acme", "delivery_id": "cloudwatch", **cw_item("acme"), "external_id": "acme-old-7f"}
    table = new_table(env, TableSchema.V2, [legacy])
    listed = cli("list", "--table", table)
    assert "legacy,no-clusters" in listed.stdout and "1 legacy (no profile)" in listed.stdout
    new = cli("put", "acme", "s3", "--type", "s3", "--log-distribution-role-arn", ROLE.format("acme"),
              "--target-region", "us-east-1", "--bucket-name", "acme-logs", "--clusters", "prod-1",
              "--table", table, "--json")  # fmt: skip
    assert new.exit_code == 1
    assert "tenant 'acme' has no profile" in as_json(new)["fields"]["tenant_id"]
    moved = cli("patch", "acme", "cloudwatch", "--log-distribution-role-arn",
                "arn:aws:iam::222222222222:role/CustomerLogDistribution-x", "--table", table, "--json")  # fmt: skip
    assert moved.exit_code == 1 and "tenant_id" in as_json(moved)["fields"]
    # What it has can still be operated: disabled, enabled, refiltered (its own external_id kept).
    assert cli("disable", "acme", "--table", table).exit_code == 0
    assert cli("patch", "acme", "cloudwatch", "--desired-logs", "frontend", "--table", table).exit_code == 0
    assert scan(env, table)[("acme", "cloudwatch")]["external_id"] == "acme-old-7f"
    # A per-delivery external_id is never written by the tools any more.
    own = cli("patch", "acme", "cloudwatch", "--external-id", "acme-new-8f", "--table", table, "--json")
    assert own.exit_code == 1 and "external_id" in as_json(own)["fields"]


def test_clusters_are_required_on_new_deliveries_and_an_empty_list_takes_none(env: LocalEnvironment) -> None:
    from pipeline.keys import parse_key

    table = new_table(env, TableSchema.V2, [profile("acme")])
    args = ["put", "acme", "cloudwatch", "--type", "cloudwatch", "--log-distribution-role-arn", ROLE.format("acme"),
            "--target-region", "us-east-1", "--log-group-name", "/logs/acme", "--table", table]  # fmt: skip
    missing = cli(*args, "--json")
    assert missing.exit_code == 1 and set(as_json(missing)["fields"]) == {"clusters"}
    none = CliRunner().invoke(main, [*args, "--file", "-"], input="clusters: []\n", catch_exceptions=False)
    assert none.exit_code == 0, none.output
    assert scan(env, table)[("acme", "cloudwatch")]["clusters"] == []
    (d,) = TenantDirectory(table, client=env.client("dynamodb")).get("acme").deliveries
    reason = d.skip_reason(parse_key("prod-1/acme/app/pod/20240101-000000-x.json.gz"))
    assert reason == "cluster 'prod-1' is not allowed for tenant 'acme'"  # an empty list is none, never all
    # Unsetting it is refused too: that would take every cluster.
    unset = cli("patch", "acme", "cloudwatch", "--unset", "clusters", "--table", table, "--json")
    assert unset.exit_code == 1 and set(as_json(unset)["fields"]) == {"clusters"}


def test_rotation_sets_the_next_id_then_promotes_it(env: LocalEnvironment) -> None:
    table = new_table(env, TableSchema.V2)
    assert cli("profile", "create", "acme", "--account", "111111111111", "--table", table).exit_code == 0
    first = scan(env, table)[("acme", "_tenant")]["external_id"]
    assert cli("profile", "promote", "acme", "--table", table).exit_code == 1  # nothing to promote
    rotated = cli("profile", "rotate", "acme", "--region", "us-east-1", "--table", table)
    assert rotated.exit_code == 0, rotated.output
    nxt = scan(env, table)[("acme", "_tenant")]["external_id_next"]
    assert EXTERNAL_ID_RE.fullmatch(nxt) and nxt != first
    assert deploy_line(rotated.stdout).endswith(f"ExternalId={first} ExternalIdNext={nxt}")  # trust both
    assert scan(env, table)[("acme", "_tenant")]["external_id"] == first  # still sent until promoted
    assert cli("profile", "rotate", "acme", "--table", table).exit_code == 1  # one rotation at a time
    promoted = cli("profile", "promote", "acme", "--region", "us-east-1", "--table", table)
    assert promoted.exit_code == 0, promoted.output
    stored = scan(env, table)[("acme", "_tenant")]
    assert stored["external_id"] == nxt and "external_id_next" not in stored
    assert deploy_line(promoted.stdout).endswith(f"ExternalId={nxt}")  # the customer then drops the old one


def test_migrate_profiles_gives_each_legacy_tenant_its_deliveries_accounts(env: LocalEnvironment) -> None:
    table = new_table(env, TableSchema.V2, [i for t in env.tenants for i in t.delivery_items()])
    dry = cli("migrate-profiles", "--dry-run", "--table", table, "--json")
    assert dry.exit_code == 0, dry.output
    assert {t["tenant_id"]: t["action"] for t in as_json(dry)["tenants"]} == dict.fromkeys(
        (t.tenant_id for t in env.tenants), "would create"
    )
    assert not [k for k in scan(env, table) if k[1] == "_tenant"]
    one = cli("migrate-profiles", "--tenant", "globex", "--table", table, "--json")
    assert one.exit_code == 0, one.output
    (line,) = as_json(one)["tenants"]
    globex = env.tenant("globex")
    stored = scan(env, table)[("globex", "_tenant")]
    assert (line["action"], line["accounts"], stored["accounts"]) == (
        "created",
        [globex.account_id],
        [globex.account_id],
    )
    (command,) = line["redeploy"]
    assert f"--region {globex.region}" in command and f"ExternalId={stored['external_id']}" in command
    human = cli("migrate-profiles", "--table", table)
    assert human.exit_code == 0, human.output
    assert re.search(r"^globex +has-profile ", human.stdout, re.M)
    assert human.stdout.count("aws cloudformation deploy") == len(env.tenants) - 1
    listed = as_json(cli("list", "--table", table, "--json"))
    assert listed["counts"]["legacy"] == 0 and listed["counts"]["invalid"] == 0  # nothing refused by the binding
    assert cli("migrate-profiles", "--tenant", "nobody", "--table", table).exit_code == 1
