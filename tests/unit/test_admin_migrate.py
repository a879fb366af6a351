"""The tenant admin logic without AWS: migration planning, the shape checks of a table, the human tables."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from pipeline.admin import text
from pipeline.admin.listing import TenantListing
from pipeline.admin.migrate import Action, MigrationResult, differences, plan, plan_item
from pipeline.admin.tables import open_table
from pipeline.errors import ConfigError
from pipeline.tenants import TableSchema, Tenant, parse_delivery, tenant_from_items

V1: dict[str, Any] = {
    "tenant_id": "acme",
    "log_distribution_role_arn": "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme",
    "log_group_name": "/logs/acme",
    "target_region": "us-east-1",
}
V2 = {**V1, "delivery_id": "cloudwatch", "type": "cloudwatch", "enabled": True}


# -- plan_item -----------------------------------------------------------------------------------------------


def test_a_new_tenant_is_copied_as_the_delivery_cloudwatch() -> None:
    line = plan_item(V1, None)
    assert line.action is Action.COPIED
    assert line.item == V2
    assert (line.tenant_id, line.delivery_id, line.dropped) == ("acme", "cloudwatch", ())


def test_stamps_are_kept_and_never_invented() -> None:
    stamped = {**V1, "created_at": "2023-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}
    assert plan_item(stamped, None).item == {
        **V2,
        "created_at": "2023-01-01T00:00:00Z",
        "updated_at": stamped["updated_at"],
    }
    assert "created_at" not in (plan_item(V1, None).item or {})


def test_defaults_are_explicit_and_filters_normalised() -> None:
    v1 = {**V1, "desired_logs": {"Frontend", "payment-service"}, "enabled": "false", "clusters": ["prod-1"]}
    item = plan_item(v1, None).item
    assert item == {**V2, "enabled": False, "desired_logs": ["frontend", "payment-service"], "clusters": ["prod-1"]}


def test_attributes_outside_the_schema_are_named_and_not_copied() -> None:
    line = plan_item({**V1, "notes": "by hand", "type": "s3", "bucket_name": "b-logs"}, None)
    assert line.action is Action.COPIED
    assert line.dropped == ("bucket_name", "notes")  # a v1 item is cloudwatch whatever `type` it carries
    assert line.item == V2


def test_an_invalid_v1_item_names_every_bad_field() -> None:
    line = plan_item({"tenant_id": "Acme!", "target_region": "moon"}, None)
    assert line.action is Action.INVALID
    assert line.item is None
    assert set(line.fields) == {"tenant_id", "target_region", "log_distribution_role_arn", "log_group_name"}


def test_the_same_delivery_is_unchanged_whatever_its_stamps_order_and_case() -> None:
    existing = {**V2, "desired_logs": ["Payment-Service", "frontend"], "updated_at": "2025-01-01T00:00:00Z"}
    line = plan_item({**V1, "desired_logs": ["frontend", "payment-service"]}, existing)
    assert line.action is Action.UNCHANGED
    assert plan_item(V1, {k: v for k, v in V2.items() if k != "enabled"}).action is Action.UNCHANGED


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"log_group_name": "/logs/other"}, {"log_group_name"}),
        ({"enabled": False, "desired_logs": ["frontend"]}, {"enabled", "desired_logs"}),
        ({"external_id": "tenant-specific"}, {"external_id"}),
        ({"type": "s3", "bucket_name": "acme-logs"}, {"type", "log_group_name", "bucket_name", "bucket_prefix"}),
    ],
)
def test_a_different_existing_item_is_a_conflict_naming_the_fields(change: dict[str, Any], fields: set[str]) -> None:
    line = plan_item(V1, {**V2, **change})
    assert line.action is Action.CONFLICT
    assert set(line.fields) == fields
    assert line.item == V2  # what the migration would have written, for the report


def test_an_invalid_existing_item_is_a_conflict() -> None:
    diffs = differences(V2, {**V2, "type": "ftp"})
    assert list(diffs) == ["type"]
    assert "the existing item is invalid" in diffs["type"]


def test_plan_sorts_by_tenant_and_matches_existing_items_by_tenant() -> None:
    globex = {**V1, "tenant_id": "globex", "log_group_name": "/logs/globex"}
    lines = plan([globex, V1], {"acme": V2})
    assert [(x.tenant_id, x.action) for x in lines] == [("acme", Action.UNCHANGED), ("globex", Action.COPIED)]


# -- the result ----------------------------------------------------------------------------------------------


def test_result_counts_ok_and_render() -> None:
    lines = (plan_item(V1, None), plan_item({"tenant_id": "broken"}, None))
    dry = MigrationResult("old", "new", True, lines)
    assert dry.counts == {"copied": 1, "unchanged": 0, "conflict": 0, "invalid": 1}
    assert not dry.ok
    out = dry.render()
    assert "dry run: nothing written" in out
    assert "acme    cloudwatch  would copy  /logs/acme (us-east-1)" in out
    assert out.endswith("2 v1 items: 1 to copy, 0 unchanged, 0 conflict, 1 invalid")
    assert MigrationResult("old", "new", False, lines[:1]).ok
    assert "copied" in MigrationResult("old", "new", False, lines[:1]).render()
    doc = dry.to_json()
    assert doc["tenants"][1] == {
        "tenant_id": "broken",
        "delivery_id": "cloudwatch",
        "action": "invalid",
        "fields": {
            n: "required field is missing" for n in ("log_distribution_role_arn", "log_group_name", "target_region")
        },
    }
    assert MigrationResult("old", "new", False, ()).render().splitlines()[1] == "the v1 table is empty"


# -- open_table ----------------------------------------------------------------------------------------------


class FakeDynamo:
    def __init__(self, keys: list[tuple[str, str]] | None) -> None:
        self.keys = keys

    def describe_table(self, TableName: str) -> dict[str, Any]:
        if self.keys is None:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "no"}}, "DescribeTable")
        return {"Table": {"KeySchema": [{"AttributeName": a, "KeyType": k} for a, k in self.keys]}}


V1_KEYS = [("tenant_id", "HASH")]
V2_KEYS = [("tenant_id", "HASH"), ("delivery_id", "RANGE")]


def test_open_table_says_which_shape() -> None:
    assert open_table(FakeDynamo(V1_KEYS), "t") is TableSchema.V1
    assert open_table(FakeDynamo(V2_KEYS), "t", TableSchema.V2) is TableSchema.V2


@pytest.mark.parametrize(
    ("keys", "expect", "message"),
    [
        (None, None, "--from table 't' does not exist"),
        (V2_KEYS, TableSchema.V1, "--from table 't' is a v2 (hash key tenant_id, range key delivery_id) tenant table"),
        (V1_KEYS, TableSchema.V2, "--from needs a v2"),
        ([("tenant_id", "HASH"), ("object_key", "RANGE")], None, "--from table 't' is not a tenant table"),
    ],
)
def test_open_table_refuses_in_one_line(
    keys: list[tuple[str, str]] | None, expect: TableSchema | None, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        open_table(FakeDynamo(keys), "t", expect, role="--from")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# -- listing and tables --------------------------------------------------------------------------------------


def test_listing_render_lines_up_and_an_invalid_reason_does_not_widen_it() -> None:
    s3 = {**V2, "delivery_id": "s3-archive", "type": "s3", "bucket_name": "acme-logs", "clusters": ["prod-1"]}
    bad = {"tenant_id": "acme", "delivery_id": "ftp", "type": "ftp"}
    acme = tenant_from_items("acme", [V2, s3, bad], TableSchema.V2)
    listing = TenantListing("t", TableSchema.V2, (acme, Tenant("zeta")))
    lines = listing.render().splitlines()
    assert lines[0].index("TARGET") == lines[1].index("/logs/acme") == lines[2].index("s3://acme-logs/")
    assert lines[2].split()[-3:] == ["all", "prod-1", "legacy"]  # no profile: flagged
    assert lines[1].split()[-3:] == ["all", "all", "legacy,no-clusters"]  # and no clusters: every cluster
    assert lines[3].split()[:4] == ["acme", "ftp", "INVALID", "-"]
    assert "tenant 'acme'" not in lines[3]  # the row names it already
    assert "type: unknown type 'ftp'" in lines[3]
    assert max(len(line) for line in lines[:3]) < len(lines[3])
    assert lines[-1] == "table t (v2): 2 tenants, 2 deliveries, 1 invalid, 2 legacy (no profile)"
    doc = listing.to_json()
    assert doc["tenants"][0]["deliveries"][1]["target"] == "s3://acme-logs/ROSA/cluster-logs/"
    assert parse_delivery(doc["tenants"][0]["deliveries"][0]) == acme.deliveries[0]  # an item put can take back


def test_text_table_and_names() -> None:
    assert text.table(("A", "B"), [("x", "1"), ("long", "2"), ("note that runs on",)]).splitlines() == [
        "A     B",
        "x     1",
        "long  2",
        "note that runs on",
    ]
    assert (text.names(None), text.names(frozenset()), text.names(frozenset({"b", "a"}))) == ("all", "(none)", "a,b")
