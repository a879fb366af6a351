"""Tenants and their deliveries (CONTRACTS.md §3): item validation, both table shapes, the TTL cache.

`parse_delivery` is checked against the contract's table of fields; `delivery_item` is checked as its
inverse with generated deliveries; `TenantDirectory` reads through a scripted client here, and against the
local DynamoDB in tests/integration/test_tenant_directory.py.
"""

from __future__ import annotations

import dataclasses
import string
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.provision import SAMPLE_TENANTS
from pipeline.keys import parse_key
from pipeline.tenants import (
    DEFAULT_BUCKET_PREFIX,
    V1_DELIVERY_ID,
    Delivery,
    DeliveryType,
    TableSchema,
    TenantConfigError,
    TenantDirectory,
    delivery_item,
    deserialize,
    parse_delivery,
)
from tests.support.tenant_items import GOOD, KEY, ROLE, S3_GOOD, V1_GOOD, FakeClock

_DROP = object()


def item(base: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    out = {**(GOOD if base is None else base), **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


def validate(raw: dict[str, Any]) -> Delivery:
    return parse_delivery(raw)


def bad_fields(raw: dict[str, Any], schema: TableSchema = TableSchema.V2) -> dict[str, str]:
    with pytest.raises(TenantConfigError) as info:
        parse_delivery(raw, schema)
    assert info.value.recoverable is False
    assert "\n" not in info.value.reason  # one line
    return info.value.fields


# ---------------------------------------------------------------------------------------------------------
# parse_delivery(): the fields every delivery has
# ---------------------------------------------------------------------------------------------------------


def test_minimal_config_defaults() -> None:
    cfg = validate(GOOD)
    assert cfg.tenant_id == "acme"
    assert (cfg.delivery_id, cfg.type) == ("cloudwatch", DeliveryType.CLOUDWATCH)
    assert cfg.role_arn == GOOD["log_distribution_role_arn"]
    assert cfg.log_group == "/logs/acme"
    assert cfg.region == "us-east-1"
    assert cfg.enabled is True  # default
    assert cfg.desired_logs is None  # default: all applications
    assert cfg.clusters is None  # default: all clusters
    assert cfg.external_id is None  # default: the central account id, filled in by the broker
    assert cfg.wants("anything") and cfg.wants("Payment-Service")
    assert cfg.account_id == "111111111111"
    assert cfg.target == "/logs/acme (us-east-1)"


def test_full_config() -> None:
    cfg = validate(item(enabled=False, desired_logs=["Payment-Service", "frontend"], target_region="eu-west-1"))
    assert cfg.enabled is False
    assert cfg.region == "eu-west-1"
    assert cfg.desired_logs == frozenset({"payment-service", "frontend"})


@pytest.mark.parametrize("app", ["payment-service", "PAYMENT-SERVICE", "Payment-Service", "Frontend"])
def test_desired_logs_case_insensitive(app: str) -> None:
    cfg = validate(item(desired_logs=["Payment-Service", "frontend"]))
    assert cfg.wants(app)


@pytest.mark.parametrize("app", ["payment", "backend", "payment-service-v2", ""])
def test_desired_logs_excludes_others(app: str) -> None:
    assert not validate(item(desired_logs=["Payment-Service", "frontend"])).wants(app)


def test_desired_logs_as_a_dynamodb_string_set() -> None:
    cfg = validate(item(desired_logs={"API", "web"}))
    assert cfg.wants("api") and cfg.wants("WEB") and not cfg.wants("db")


def test_empty_desired_logs_wants_nothing() -> None:
    # An explicit empty list is a choice (deliver nothing), not a missing field (deliver all).
    assert not validate(item(desired_logs=[])).wants("api")


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:iam::111111111111:role/with/path/R+=,.@-_1",
        "arn:aws:iam::111111111111:role/logging/CustomerLogDistribution-x",  # the contract's own example
        "arn:aws:iam::111111111111:role/a/b/c/d/CustomerLogDistribution-acme",
        "arn:aws-us-gov:iam::111111111111:role/R",
        "arn:aws-cn:iam::111111111111:role/R",
    ],
)
def test_role_arns_accepted(arn: str) -> None:
    d = validate(item(log_distribution_role_arn=arn))
    assert d.role_arn == arn
    assert d.account_id == "111111111111"  # an IAM path does not move the account field


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1", "eu-central-2"])
def test_regions_accepted(region: str) -> None:
    assert validate(item(target_region=region)).region == region


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"tenant_id": _DROP}, "tenant_id"),
        ({"tenant_id": "Acme"}, "tenant_id"),
        ({"tenant_id": "-acme"}, "tenant_id"),
        ({"tenant_id": "a" * 64}, "tenant_id"),
        ({"tenant_id": "acme\n"}, "tenant_id"),
        ({"tenant_id": 7}, "tenant_id"),
        ({"log_distribution_role_arn": _DROP}, "log_distribution_role_arn"),
        ({"log_group_name": _DROP}, "log_group_name"),
        ({"target_region": _DROP}, "target_region"),
        ({"log_group_name": "  "}, "log_group_name"),
        ({"target_region": 1}, "target_region"),
        ({"log_distribution_role_arn": "arn:aws:iam::1111:role/x"}, "log_distribution_role_arn"),
        ({"log_distribution_role_arn": "arn:aws:iam::111111111111:user/x"}, "log_distribution_role_arn"),
        ({"log_distribution_role_arn": "arn:aws:sts::111111111111:role/x"}, "log_distribution_role_arn"),
        ({"log_distribution_role_arn": "CustomerLogDistribution-acme"}, "log_distribution_role_arn"),
        ({"log_distribution_role_arn": "arn:aws:iam::111111111111:role/"}, "log_distribution_role_arn"),
        ({"target_region": "US-EAST-1"}, "target_region"),
        ({"target_region": "us-east"}, "target_region"),
        ({"target_region": "mars"}, "target_region"),
        ({"log_group_name": "bad group name!"}, "log_group_name"),
        ({"enabled": 1}, "enabled"),
        ({"enabled": Decimal(0)}, "enabled"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": None}, "enabled"),
        ({"desired_logs": 5}, "desired_logs"),
        ({"desired_logs": Decimal(5)}, "desired_logs"),
        ({"desired_logs": ["api", 3]}, "desired_logs"),
        ({"desired_logs": {"app": "api"}}, "desired_logs"),
        ({"clusters": 5}, "clusters"),
        ({"clusters": ["prod-1", "bad cluster"]}, "clusters"),
        ({"clusters": ["../x"]}, "clusters"),
        ({"external_id": ""}, "external_id"),
        ({"external_id": "x"}, "external_id"),  # STS wants at least 2 characters
        ({"external_id": "has space"}, "external_id"),
        ({"external_id": 123456789012}, "external_id"),
        ({"delivery_id": _DROP}, "delivery_id"),
        ({"delivery_id": "CloudWatch"}, "delivery_id"),
        ({"delivery_id": "-cw"}, "delivery_id"),
        ({"delivery_id": "a" * 64}, "delivery_id"),
    ],
)
def test_invalid_configs_raise_a_clear_error(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TenantConfigError) as info:
        validate(item(**changes))
    assert fragment in str(info.value)
    assert fragment in info.value.fields
    assert info.value.recoverable is False


def test_enabled_as_an_unambiguous_string() -> None:
    assert validate(item(enabled="false")).enabled is False
    assert validate(item(enabled="True")).enabled is True


# ---------------------------------------------------------------------------------------------------------
# parse_delivery(): the two table shapes and the two types
# ---------------------------------------------------------------------------------------------------------


def test_a_v1_item_is_the_cloudwatch_delivery() -> None:
    d = parse_delivery(V1_GOOD, TableSchema.V1)
    assert (d.tenant_id, d.delivery_id, d.type) == ("acme", V1_DELIVERY_ID, DeliveryType.CLOUDWATCH)
    assert d.delivery_id == "cloudwatch"
    assert (d.role_arn, d.log_group, d.region) == (ROLE, "/logs/acme", "us-east-1")
    # Whatever else a v1 item holds, it is the one CloudWatch delivery.
    assert parse_delivery({**V1_GOOD, "delivery_id": "other", "type": "s3"}, TableSchema.V1) == d


def test_a_v1_item_without_a_log_group_names_it() -> None:
    fields = bad_fields(item(V1_GOOD, log_group_name=_DROP), TableSchema.V1)
    assert set(fields) == {"log_group_name"}


def test_a_v1_error_names_the_tenant_only() -> None:
    with pytest.raises(TenantConfigError) as info:
        parse_delivery(item(V1_GOOD, target_region="mars"), TableSchema.V1)
    assert info.value.reason.startswith("tenant 'acme': ")
    assert "delivery" not in info.value.reason


def test_a_v2_error_names_the_tenant_and_the_delivery() -> None:
    with pytest.raises(TenantConfigError) as info:
        parse_delivery(item(target_region="mars"))
    assert info.value.reason.startswith("tenant 'acme' delivery 'cloudwatch': ")
    assert "target_region" in info.value.reason


def test_v2_cloudwatch_delivery() -> None:
    d = parse_delivery(item(delivery_id="cw-eu", target_region="eu-west-1"))
    assert (d.delivery_id, d.type, d.log_group, d.region) == (
        "cw-eu",
        DeliveryType.CLOUDWATCH,
        "/logs/acme",
        "eu-west-1",
    )
    assert (d.bucket, d.bucket_prefix, d.kms_key_arn) == ("", "", "")


def test_v2_s3_delivery_with_defaults() -> None:
    d = parse_delivery(S3_GOOD)
    assert (d.delivery_id, d.type) == ("s3-archive", DeliveryType.S3)
    assert d.bucket == "acme-logs-111111111111"
    assert d.bucket_prefix == DEFAULT_BUCKET_PREFIX == "ROSA/cluster-logs/"
    assert d.kms_key_arn == ""  # the bucket's own default encryption
    assert d.log_group == ""
    assert d.target == "s3://acme-logs-111111111111/ROSA/cluster-logs/"
    assert d.account_id == "111111111111"


def test_v2_s3_delivery_with_every_field() -> None:
    kms = "arn:aws:kms:eu-west-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    d = parse_delivery(
        {
            **S3_GOOD,
            "bucket_prefix": "logs/rosa/",
            "kms_key_arn": kms,
            "desired_logs": ["API"],
            "clusters": ["prod-1", "Prod-2"],
            "external_id": "tenant-acme-7f3a",
            "enabled": False,
            "created_at": "2024-06-01T00:00:00Z",
            "updated_at": "2024-06-02T00:00:00Z",
        }
    )
    assert (d.bucket_prefix, d.kms_key_arn) == ("logs/rosa/", kms)
    assert d.desired_logs == frozenset({"api"})
    assert d.clusters == frozenset({"prod-1", "Prod-2"})  # cluster ids keep their case
    assert d.external_id == "tenant-acme-7f3a"
    assert d.enabled is False
    assert (d.created_at, d.updated_at) == ("2024-06-01T00:00:00Z", "2024-06-02T00:00:00Z")


def test_an_empty_bucket_prefix_is_the_bucket_root() -> None:
    assert parse_delivery({**S3_GOOD, "bucket_prefix": ""}).bucket_prefix == ""


def test_s3_delivery_without_bucket_name() -> None:
    fields = bad_fields(item(S3_GOOD, bucket_name=_DROP))
    assert set(fields) == {"bucket_name"}
    assert "missing" in fields["bucket_name"]


@pytest.mark.parametrize(
    "prefix", ["ROSA/cluster-logs", "logs", "/logs/", "a//b/", "a/../b/", "./", "x" * 600 + "/", 5]
)
def test_bad_bucket_prefixes(prefix: Any) -> None:
    assert set(bad_fields({**S3_GOOD, "bucket_prefix": prefix})) == {"bucket_prefix"}


def test_bucket_prefix_must_end_with_a_slash() -> None:
    fields = bad_fields({**S3_GOOD, "bucket_prefix": "ROSA/cluster-logs"})
    assert "must end with '/'" in fields["bucket_prefix"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bucket_name", "Upper-Case"),
        ("bucket_name", "ab"),
        ("bucket_name", "has_underscore"),
        ("kms_key_arn", "not-an-arn"),
        ("kms_key_arn", "arn:aws:kms:eu-west-1:1111:key/x"),
    ],
)
def test_bad_s3_fields(field: str, value: str) -> None:
    assert set(bad_fields({**S3_GOOD, field: value})) == {field}


def test_unknown_type() -> None:
    fields = bad_fields(item(type="kinesis"))
    assert set(fields) == {"type"}
    assert "unknown type 'kinesis'" in fields["type"]


def test_a_v2_item_without_type() -> None:
    fields = bad_fields(item(type=_DROP))
    assert set(fields) == {"type"}
    assert "missing" in fields["type"]


def test_a_cloudwatch_delivery_does_not_need_a_bucket_nor_an_s3_one_a_log_group() -> None:
    assert parse_delivery(GOOD).bucket == ""
    assert parse_delivery(S3_GOOD).log_group == ""
    assert set(bad_fields(item(S3_GOOD, type="cloudwatch"))) == {"log_group_name"}
    assert set(bad_fields(item(GOOD, type="s3"))) == {"bucket_name"}


def test_every_bad_field_is_named_at_once() -> None:
    raw = {
        "tenant_id": "Not_A_Namespace",
        "delivery_id": "Bad Id",
        "type": "s3",
        "log_distribution_role_arn": "arn:aws:iam::1:role/x",
        "target_region": "mars",
        "enabled": "maybe",
        "desired_logs": 7,
        "clusters": ["ok", "not ok"],
        "external_id": "x",
        "bucket_name": "Bad_Bucket",
        "bucket_prefix": "no-slash",
        "kms_key_arn": "arn:nope",
    }
    with pytest.raises(TenantConfigError) as info:
        parse_delivery(raw)
    fields = info.value.fields
    assert set(fields) == {
        "tenant_id",
        "delivery_id",
        "log_distribution_role_arn",
        "target_region",
        "enabled",
        "desired_logs",
        "clusters",
        "external_id",
        "bucket_name",
        "bucket_prefix",
        "kms_key_arn",
    }
    assert all(problem for problem in fields.values())
    # The one-line reason carries each of them too.
    for name in fields:
        assert f"{name}: " in info.value.reason
    assert "\n" not in info.value.reason


def test_every_missing_required_field_is_named_at_once() -> None:
    fields = bad_fields({"tenant_id": "acme", "delivery_id": "cw", "type": "cloudwatch"})
    assert set(fields) == {"log_distribution_role_arn", "target_region", "log_group_name"}
    fields = bad_fields({"tenant_id": "acme", "delivery_id": "s3", "type": "s3"})
    assert set(fields) == {"log_distribution_role_arn", "target_region", "bucket_name"}


def test_clusters_and_external_id() -> None:
    d = parse_delivery(item(clusters=["prod-1", "stage.eu-2"], external_id="arn:aws:iam::1:root/x=y,z@w"))
    assert d.clusters == frozenset({"prod-1", "stage.eu-2"})
    assert d.external_id == "arn:aws:iam::1:root/x=y,z@w"
    # As a DynamoDB string set, and as a single string.
    assert parse_delivery(item(clusters={"prod-1"})).clusters == frozenset({"prod-1"})
    assert parse_delivery(item(clusters="prod-1")).clusters == frozenset({"prod-1"})
    # An explicit empty list takes no cluster at all; a missing one takes every cluster.
    assert parse_delivery(item(clusters=[])).clusters == frozenset()


def test_skip_reason_names_the_delivery() -> None:
    parsed = parse_key(KEY)
    assert validate(GOOD).skip_reason(parsed) == ""
    assert validate(item(enabled=False)).skip_reason(parsed) == "delivery 'cloudwatch' of tenant 'acme' is disabled"
    assert (
        validate(item(desired_logs=["checkout"])).skip_reason(parsed)
        == "application 'payment-service' is not in desired_logs of delivery 'cloudwatch'"
    )
    assert (
        validate(item(clusters=["prod-2"])).skip_reason(parsed) == "cluster 'prod-1' is not allowed for tenant 'acme'"
    )
    assert validate(item(clusters=["prod-1"], desired_logs=["Payment-Service"])).skip_reason(parsed) == ""
    # Cluster ids are compared exactly: they are not case-insensitive names like applications.
    assert validate(item(clusters=["PROD-1"])).skip_reason(parsed) != ""
    # Both filters refuse: the report names the cluster, the reason that matters for isolation.
    assert (
        validate(item(clusters=["prod-2"], desired_logs=["checkout"])).skip_reason(parsed)
        == "cluster 'prod-1' is not allowed for tenant 'acme'"
    )


# ---------------------------------------------------------------------------------------------------------
# delivery_item(): the inverse of parse_delivery
# ---------------------------------------------------------------------------------------------------------

LOWER = string.ascii_lowercase + string.digits
NAME = string.ascii_letters + string.digits


@st.composite
def labels(draw: st.DrawFn, first: str, rest: str, max_rest: int, last: str | None = None, min_rest: int = 0) -> str:
    head = draw(st.sampled_from(first))
    body = draw(st.text(rest, min_size=min_rest, max_size=max_rest))
    tail = draw(st.sampled_from(last)) if last is not None else ""
    return head + body + tail


tenant_ids = st.one_of(st.text(LOWER, min_size=1, max_size=1), labels(LOWER, LOWER + "-", 40, LOWER))
delivery_ids = labels(LOWER, LOWER + "-", 62)
cluster_ids = st.one_of(st.text(NAME, min_size=1, max_size=1), labels(NAME, NAME + "-_.", 30, NAME))
app_names = st.text(LOWER + "-_.", min_size=1, max_size=20).filter(lambda s: s.strip() == s)
role_arns = st.builds(
    lambda partition, account, path, name: f"arn:{partition}:iam::{account}:role/{path}{name}",
    st.sampled_from(["aws", "aws-cn", "aws-us-gov"]),
    st.text(string.digits, min_size=12, max_size=12),
    st.sampled_from(["", "logging/", "a/b/c/"]),
    st.text(NAME + "+=,.@-_", min_size=1, max_size=40),
)
regions = st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1", "eu-central-2"])
names_or_all = st.one_of(st.none(), st.frozensets(app_names, max_size=4))
clusters_or_all = st.one_of(st.none(), st.frozensets(cluster_ids, max_size=4))
external_ids = st.one_of(st.none(), st.text(NAME + "_+=,.@:/-", min_size=2, max_size=60))
stamps = st.sampled_from(["", "2024-06-01T00:00:00Z", "2024-06-01T12:34:56.789+00:00"])
log_groups = st.text(NAME + "_-/.#", min_size=1, max_size=60)
buckets = labels(LOWER, LOWER + ".-", 30, LOWER, min_rest=1)
prefixes = st.one_of(
    st.just(""),
    st.just(DEFAULT_BUCKET_PREFIX),
    st.lists(st.text(NAME + "-_", min_size=1, max_size=10), min_size=1, max_size=4).map(lambda p: "/".join(p) + "/"),
)
kms_keys = st.one_of(
    st.just(""),
    st.builds(
        lambda region, account, kind, ident: f"arn:aws:kms:{region}:{account}:{kind}/{ident}",
        regions,
        st.text(string.digits, min_size=12, max_size=12),
        st.sampled_from(["key", "alias"]),
        st.text(NAME + "-_/", min_size=1, max_size=36),
    ),
)


@st.composite
def deliveries(draw: st.DrawFn, kinds: tuple[DeliveryType, ...] = tuple(DeliveryType)) -> Delivery:
    kind = draw(st.sampled_from(kinds))
    common: dict[str, Any] = {
        "tenant_id": draw(tenant_ids),
        "delivery_id": draw(delivery_ids),
        "type": kind,
        "role_arn": draw(role_arns),
        "region": draw(regions),
        "enabled": draw(st.booleans()),
        "desired_logs": draw(names_or_all),
        "clusters": draw(clusters_or_all),
        "external_id": draw(external_ids),
        "created_at": draw(stamps),
        "updated_at": draw(stamps),
    }
    if kind is DeliveryType.CLOUDWATCH:
        return Delivery(**common, log_group=draw(log_groups))
    return Delivery(**common, bucket=draw(buckets), bucket_prefix=draw(prefixes), kms_key_arn=draw(kms_keys))


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(d=deliveries())
def test_delivery_item_round_trips(d: Delivery) -> None:
    assert parse_delivery(delivery_item(d)) == d


@PROPS
@given(d=deliveries())
def test_delivery_item_round_trips_through_dynamodb_types(d: Delivery) -> None:
    """As stored: serialized to DynamoDB's wire types and back (lists stay lists, sets come back as sets)."""
    ser = TypeSerializer()
    stored = {k: ser.serialize(v) for k, v in delivery_item(d).items()}
    assert parse_delivery(deserialize(stored)) == d


@PROPS
@given(d=deliveries(kinds=(DeliveryType.CLOUDWATCH,)))
def test_a_cloudwatch_delivery_round_trips_through_a_v1_item(d: Delivery) -> None:
    d = dataclasses.replace(d, delivery_id=V1_DELIVERY_ID)
    raw = delivery_item(d, TableSchema.V1)
    assert "delivery_id" not in raw and "type" not in raw
    assert parse_delivery(raw, TableSchema.V1) == d


def test_delivery_item_of_the_sample_items() -> None:
    for t in SAMPLE_TENANTS:
        for raw in t.delivery_items():
            d = parse_delivery(raw)
            assert parse_delivery(delivery_item(d)) == d


# ---------------------------------------------------------------------------------------------------------
# TenantDirectory's reads, with a scripted client
# ---------------------------------------------------------------------------------------------------------


class QueryPaginator:
    """What boto3's Query paginator does with a client: each page's LastEvaluatedKey starts the next call."""

    def __init__(self, query: Any) -> None:
        self.query = query

    def paginate(self, **kwargs: Any) -> Any:
        while True:
            resp = self.query(**kwargs)
            yield resp
            if "LastEvaluatedKey" not in resp:
                return
            kwargs = {**kwargs, "ExclusiveStartKey": resp["LastEvaluatedKey"]}


class ScriptedDdb:
    """DescribeTable and Query answers, one Query page at a time."""

    def get_paginator(self, name: str) -> QueryPaginator:
        assert name == "query"
        return QueryPaginator(self.query)

    def __init__(self, pages: list[list[dict[str, Any]]], error: str = "") -> None:
        self.pages = pages
        self.error = error
        self.queries: list[dict[str, Any]] = []

    def describe_table(self, TableName: str) -> dict[str, Any]:
        return {
            "Table": {
                "KeySchema": [
                    {"AttributeName": "tenant_id", "KeyType": "HASH"},
                    {"AttributeName": "delivery_id", "KeyType": "RANGE"},
                ]
            }
        }

    def query(self, **kwargs: Any) -> dict[str, Any]:
        self.queries.append(kwargs)
        if self.error:
            raise ClientError({"Error": {"Code": self.error, "Message": self.error}}, "Query")
        n = len(self.queries) - 1
        ser = TypeSerializer()
        resp: dict[str, Any] = {"Items": [{k: ser.serialize(v) for k, v in i.items()} for i in self.pages[n]]}
        if n + 1 < len(self.pages):
            resp["LastEvaluatedKey"] = {"tenant_id": {"S": "acme"}, "delivery_id": {"S": f"page-{n}"}}
        return resp


def test_a_tenant_is_read_with_query_across_pages() -> None:
    ddb = ScriptedDdb([[GOOD], [], [S3_GOOD]])
    tenant = TenantDirectory("t", client=ddb, clock=FakeClock()).get("acme")
    assert tenant.delivery_ids == ("cloudwatch", "s3-archive")
    assert len(ddb.queries) == 3
    assert all(q["KeyConditionExpression"] == "tenant_id = :t" for q in ddb.queries)
    assert all(q["ExpressionAttributeValues"] == {":t": {"S": "acme"}} for q in ddb.queries)
    assert "ExclusiveStartKey" not in ddb.queries[0]
    assert ddb.queries[1]["ExclusiveStartKey"]["delivery_id"] == {"S": "page-0"}
    assert ddb.queries[2]["ExclusiveStartKey"]["delivery_id"] == {"S": "page-1"}


def test_a_tenant_id_the_table_cannot_hold_is_an_unknown_tenant() -> None:
    d = TenantDirectory("t", client=ScriptedDdb([], error="ValidationException"), clock=FakeClock())
    with pytest.raises(TenantConfigError, match="unknown tenant"):
        d.get("")


def test_other_read_errors_are_not_a_verdict_on_the_tenant() -> None:
    """Throttling says nothing about the tenant: it is raised (recoverable upstream), never cached as a miss."""
    ddb = ScriptedDdb([[GOOD]], error="ProvisionedThroughputExceededException")
    d = TenantDirectory("t", client=ddb, clock=FakeClock())
    with pytest.raises(ClientError):
        d.get("acme")
    ddb.error = ""
    ddb.queries.clear()
    assert d.get("acme").delivery_ids == ("cloudwatch",)


class TenantsDdb(ScriptedDdb):
    """Answers a Query with GOOD for the tenants in `known`, with nothing for any other id."""

    def __init__(self, known: set[str]) -> None:
        super().__init__([])
        self.known = known

    def query(self, **kwargs: Any) -> dict[str, Any]:
        self.queries.append(kwargs)
        tenant = kwargs["ExpressionAttributeValues"][":t"]["S"]
        ser = TypeSerializer()
        return (
            {"Items": [{k: ser.serialize(v) for k, v in {**GOOD, "tenant_id": tenant}.items()}]}
            if tenant in self.known
            else {"Items": []}
        )


def test_the_cache_stays_within_its_bound_under_10000_forged_tenant_ids() -> None:
    """Tenant ids come from object keys: 10,000 ids no table holds cost one query each and at most
    `max_misses` entries, and never evict the real tenant."""
    d = TenantDirectory("t", client=TenantsDdb({"acme"}), clock=FakeClock(), max_tenants=8, max_misses=100)
    d.get("acme")
    peak = 0
    for i in range(10_000):
        with pytest.raises(TenantConfigError, match="unknown tenant"):
            d.get(f"forged-{i}")
        peak = max(peak, d.cached)
    assert peak == 1 + 100
    assert d.lookups == 1 + 10_000
    d.get("acme")
    assert d.lookups == 1 + 10_000, "the real tenant is still cached"
    with pytest.raises(TenantConfigError):
        d.get("forged-9999")  # among the most recent misses: still cached
    assert d.lookups == 1 + 10_000


def test_the_cache_evicts_the_least_recently_used_tenant() -> None:
    clock = FakeClock()
    d = TenantDirectory("t", client=TenantsDdb({"a", "b", "c"}), clock=clock, max_tenants=2)
    d.get("a"), d.get("b"), d.get("a"), d.get("c")  # b is the least recently used
    assert d.lookups == 3 and d.cached == 2
    d.get("a")
    assert d.lookups == 3
    d.get("b")
    assert d.lookups == 4
    clock.t += 61  # and the TTL still applies
    d.get("b")
    assert d.lookups == 5


# -- tenant profiles and account binding (CONTRACTS.md §3) --------------------------------------------------


def _profile(**kw: object) -> dict[str, object]:
    return {"tenant_id": "acme", "delivery_id": "_tenant", "accounts": ["111111111111"], "external_id": "e" * 43,
            **kw}  # fmt: skip


def _cw(**kw: object) -> dict[str, object]:
    return {"tenant_id": "acme", "delivery_id": "cloudwatch", "type": "cloudwatch", "target_region": "us-east-1",
            "log_distribution_role_arn": "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme",
            "log_group_name": "/logs/acme", **kw}  # fmt: skip


def test_generated_external_ids_are_long_random_and_in_stss_alphabet() -> None:
    from pipeline.tenants import PROFILE_EXTERNAL_ID_RE, generate_external_id

    ids = {generate_external_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(PROFILE_EXTERNAL_ID_RE.fullmatch(i) and len(i) == 43 for i in ids)  # 256 bits in base64url


@pytest.mark.parametrize(
    ("item", "bad"),
    [({"accounts": []}, "accounts"), ({"accounts": ["12345"]}, "accounts"), ({"accounts": None}, "accounts"),
     ({"external_id": "short"}, "external_id"), ({"external_id": None}, "external_id"),
     ({"external_id": "é" * 40}, "external_id"), ({"external_id_next": "x"}, "external_id_next"),
     ({"tenant_id": "Not_A_Namespace"}, "tenant_id")],
)  # fmt: skip
def test_a_profile_that_does_not_validate_names_the_field(item: dict[str, object], bad: str) -> None:
    from pipeline.tenants import parse_profile

    with pytest.raises(TenantConfigError) as err:
        parse_profile({k: v for k, v in {**_profile(), **item}.items() if v is not None})
    assert bad in err.value.fields


def test_the_profile_is_never_a_delivery_and_binds_every_delivery_to_its_accounts() -> None:
    from pipeline.tenants import tenant_from_items

    theirs = "arn:aws:iam::222222222222:role/CustomerLogDistribution-globex"
    t = tenant_from_items("acme", [_profile(), _cw(), _cw(delivery_id="stolen", log_distribution_role_arn=theirs)],
                          TableSchema.V2)  # fmt: skip
    assert t.profile is not None and not t.legacy
    assert [d.delivery_id for d in t.deliveries] == ["cloudwatch"]  # `_tenant` is not a delivery, valid or not
    (d,) = t.deliveries
    assert d.profile_accounts == frozenset({"111111111111"}) and d.hop_external_id == "e" * 43
    (stolen,) = t.invalid
    assert stolen.delivery_id == "stolen"
    assert "account 222222222222 is not one of the accounts of tenant 'acme' (111111111111)" in stolen.reason
    # A legacy tenant keeps its deliveries' own ExternalId (None: the central account id).
    legacy = tenant_from_items("acme", [_cw(external_id="acme-old")], TableSchema.V2)
    assert legacy.legacy and legacy.deliveries[0].hop_external_id == "acme-old"
    # With a profile, the item's own external_id is ignored: the profile's is sent.
    bound = tenant_from_items("acme", [_profile(), _cw(external_id="acme-old")], TableSchema.V2)
    assert bound.deliveries[0].hop_external_id == "e" * 43
    # A profile that does not validate refuses every delivery: nothing says where they may write.
    broken = tenant_from_items("acme", [_profile(accounts=[]), _cw()], TableSchema.V2)
    assert broken.deliveries == () and not broken.legacy and broken.profile_error
    assert "refused until the tenant profile is fixed" in broken.invalid[0].reason


def test_write_problems_refuse_new_deliveries_of_legacy_tenants_and_missing_clusters() -> None:
    from pipeline.tenants import parse_profile, write_problems

    profile = parse_profile(_profile())
    assert write_problems(_cw(clusters=[]), profile, None) == {}
    assert set(write_problems(_cw(), profile, None)) == {"clusters"}
    assert set(write_problems(_cw(clusters=["p"]), None, None)) == {"tenant_id"}  # legacy: no new delivery
    old = _cw(external_id="acme-old")  # a legacy item: no clusters, its own external_id
    assert write_problems({**old, "enabled": False}, None, old) == {}  # can still be disabled
    moved = {**old, "log_distribution_role_arn": "arn:aws:iam::111111111111:role/CustomerLogDistribution-b"}
    assert set(write_problems(moved, None, old)) == {"tenant_id"}  # but not pointed at a new role
    assert set(write_problems({**old, "external_id": "acme-new"}, None, old)) == {"external_id"}
    assert set(write_problems({k: v for k, v in _cw(clusters=["p"]).items()}, profile, _cw(clusters=["p"]))) == set()
    unset = {k: v for k, v in _cw().items()}
    assert set(write_problems(unset, profile, _cw(clusters=["p"]))) == {"clusters"}  # never back to "all"
