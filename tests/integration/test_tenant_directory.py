"""`TenantDirectory` against the local DynamoDB (moto): a v2 table (what `provision` creates) and a v1 table
(hash key `tenant_id` only), the TTL cache, invalid stored items. The item rules themselves, and the
directory's reads through a scripted client, are tests/unit/test_tenants.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer

from devstack.provision import SAMPLE_TENANTS, LocalEnvironment, create_tenant_table
from pipeline.delivery.routing import Routing
from pipeline.keys import parse_key
from pipeline.sinks import sink_plan, traits_of
from pipeline.tenants import (
    DEFAULT_BUCKET_PREFIX,
    V1_DELIVERY_ID,
    Delivery,
    DeliveryType,
    InvalidDelivery,
    TableSchema,
    Tenant,
    TenantConfigError,
    TenantDirectory,
    parse_delivery,
    table_schema,
)
from tests.support.tenant_items import GOOD, KEY, S3_GOOD, V1_GOOD, FakeClock


def put_item(local: LocalEnvironment, raw: dict[str, Any], table: str | None = None) -> None:
    ser = TypeSerializer()
    local.client("dynamodb").put_item(
        TableName=table or local.names.tenant_table, Item={k: ser.serialize(v) for k, v in raw.items()}
    )


def directory(
    local: LocalEnvironment, clock: FakeClock, ttl: float = 60.0, table: str | None = None
) -> TenantDirectory:
    return TenantDirectory(table or local.names.tenant_table, ttl_s=ttl, clock=clock)


def only(tenant: Tenant, delivery_id: str = V1_DELIVERY_ID) -> Delivery:
    return next(d for d in tenant.deliveries if d.delivery_id == delivery_id)


def test_sample_tenants_load(local_aws: LocalEnvironment) -> None:
    d = directory(local_aws, FakeClock())
    assert d.schema is TableSchema.V2
    acme = only(d.get("acme"))
    assert acme.role_arn == "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme"
    assert acme.enabled and acme.desired_logs is None
    globex = only(d.get("globex"))
    assert globex.region == "eu-west-1"
    assert globex.wants("payment-service") and globex.wants("FRONTEND") and not globex.wants("backend")
    assert only(d.get("initech")).enabled is False
    assert d.get("initech").enabled is False  # no delivery of it can take anything
    # desired_logs written as a DynamoDB string set (SS) rather than a list (L)
    put_item(local_aws, {**GOOD, "tenant_id": "ss", "desired_logs": {"API", "Web"}})
    cfg = only(d.get("ss"))
    assert cfg.wants("api") and cfg.wants("web") and not cfg.wants("db")


def test_a_tenant_with_two_deliveries_of_two_types(local_aws: LocalEnvironment) -> None:
    d = directory(local_aws, FakeClock())
    umbrella = d.get("umbrella")
    assert umbrella.delivery_ids == ("cloudwatch", "s3-archive")
    assert umbrella.invalid == ()
    cw, s3 = only(umbrella, "cloudwatch"), only(umbrella, "s3-archive")
    assert cw.type is DeliveryType.CLOUDWATCH and cw.desired_logs == frozenset({"payment-service"})
    assert s3.type is DeliveryType.S3 and s3.desired_logs is None
    assert s3.bucket == local_aws.tenant("umbrella").bucket and s3.bucket_prefix == DEFAULT_BUCKET_PREFIX
    hooli = d.get("hooli")
    assert [(x.delivery_id, x.type) for x in hooli.deliveries] == [("archive", DeliveryType.S3)]
    assert d.lookups == 2  # one Query per tenant, however many deliveries it has


def test_a_v1_table_reads_as_one_cloudwatch_delivery_per_tenant(local_aws: LocalEnvironment) -> None:
    table = "tenant-configs-v1"
    create_tenant_table(local_aws.client("dynamodb"), table, TableSchema.V1)
    for t in SAMPLE_TENANTS:
        if t.cloudwatch:
            put_item(local_aws, t.config_item(), table)
    d = directory(local_aws, FakeClock(), table=table)
    assert d.schema is TableSchema.V1
    assert table_schema(local_aws.client("dynamodb"), table) is TableSchema.V1
    acme = d.get("acme")
    assert acme.delivery_ids == ("cloudwatch",)
    cw = only(acme)
    assert cw.type is DeliveryType.CLOUDWATCH
    assert (cw.log_group, cw.region, cw.role_arn) == ("/logs/acme", "us-east-1", local_aws.tenant("acme").role_arn)
    # The same deliveries as the v2 table holds for the same tenants, but legacy: profiles are v2 only.
    v2 = directory(local_aws, FakeClock())
    for t in SAMPLE_TENANTS:
        if t.cloudwatch:
            assert d.get(t.tenant_id).legacy and not v2.get(t.tenant_id).legacy
            unbound = replace(only(v2.get(t.tenant_id)), profile_accounts=None, profile_external_id=None)
            assert only(d.get(t.tenant_id)) == unbound
    with pytest.raises(TenantConfigError, match="unknown tenant 'hooli'"):
        d.get("hooli")  # S3 only: nothing in a v1 table
    # A bad v1 item is the invalid delivery `cloudwatch`.
    put_item(local_aws, {**V1_GOOD, "tenant_id": "bad", "target_region": "moon"}, table)
    bad = d.get("bad")
    assert bad.deliveries == ()
    assert [(i.tenant_id, i.delivery_id) for i in bad.invalid] == [("bad", "cloudwatch")]
    assert "target_region" in bad.invalid[0].reason


def test_table_schema_refuses_a_table_of_neither_shape(local_aws: LocalEnvironment) -> None:
    ddb = local_aws.client("dynamodb")
    assert table_schema(ddb, local_aws.names.tenant_table) is TableSchema.V2
    with pytest.raises(TenantConfigError, match="neither tenant v1 nor v2"):
        table_schema(ddb, local_aws.names.ledger_table)  # range key object_key


def test_tenants_items_and_tenant_ids(local_aws: LocalEnvironment) -> None:
    put_item(local_aws, {**GOOD, "tenant_id": "broken", "delivery_id": "cw", "target_region": "moon"})
    d = directory(local_aws, FakeClock())
    tenants = {t.tenant_id: t for t in d.tenants()}
    assert list(tenants) == sorted(tenants)
    assert set(tenants) == {t.tenant_id for t in SAMPLE_TENANTS} | {"broken"}
    assert tenants["umbrella"].delivery_ids == ("cloudwatch", "s3-archive")
    assert tenants["broken"].invalid[0].delivery_id == "cw"
    # Every tenant that could take objects, and the invalid one so its failures are reported; not initech.
    assert d.tenant_ids() == sorted(({t.tenant_id for t in SAMPLE_TENANTS} - {"initech"}) | {"broken"})
    items = list(d.items())
    # Every item, the profiles too (`items` is the raw table; `tenants` keeps the profiles apart).
    assert len(items) == sum(len(t.delivery_items()) + 1 for t in SAMPLE_TENANTS) + 1
    assert {(i["tenant_id"], i["delivery_id"]) for i in items} >= {("umbrella", "s3-archive"), ("hooli", "archive")}


def test_hits_are_cached_for_the_ttl_then_reloaded(local_aws: LocalEnvironment) -> None:
    clock = FakeClock()
    d = directory(local_aws, clock, ttl=60)
    for _ in range(20):
        d.get("acme")
    assert d.lookups == 1
    clock.t += 59.9
    d.get("acme")
    assert d.lookups == 1
    clock.t += 0.2
    d.get("acme")
    assert d.lookups == 2
    d.get("globex")
    assert d.lookups == 3
    # A config change shows once the TTL has passed, not before.
    put_item(local_aws, {**local_aws.tenant("acme").delivery_items()[0], "enabled": False})
    assert only(d.get("acme")).enabled, "served from the cache until the TTL passes"
    clock.t += 60
    assert only(d.get("acme")).enabled is False
    assert d.lookups == 4


def test_misses_are_cached_too(local_aws: LocalEnvironment) -> None:
    clock = FakeClock()
    d = directory(local_aws, clock, ttl=60)
    for _ in range(50):
        with pytest.raises(TenantConfigError, match="unknown tenant 'wayne'"):
            d.get("wayne")
    assert d.lookups == 1
    put_item(local_aws, {**GOOD, "tenant_id": "wayne"})
    with pytest.raises(TenantConfigError):
        d.get("wayne")  # still the cached miss
    assert d.lookups == 1
    clock.t += 61
    assert d.get("wayne").tenant_id == "wayne"
    assert d.lookups == 2


def tb_len(exc: BaseException) -> int:
    n, tb = 0, exc.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


def test_cached_miss_does_not_grow_without_bound(local_aws: LocalEnvironment) -> None:
    """Re-raising one cached exception object must not chain every caller's traceback onto it."""
    d = directory(local_aws, FakeClock())
    lengths = []
    for _ in range(30):
        try:
            d.get("wayne")
        except TenantConfigError as exc:
            lengths.append(tb_len(exc))
    assert d.lookups == 1
    assert max(lengths) == lengths[0], lengths


BAD_STORED = [
    ({**GOOD, "tenant_id": "bad1", "enabled": 1}, "enabled"),
    ({**GOOD, "tenant_id": "bad2", "desired_logs": 3}, "desired_logs"),
    ({**GOOD, "tenant_id": "bad3", "log_distribution_role_arn": "arn:aws:iam::1:role/x"}, "role"),
    ({k: v for k, v in GOOD.items() if k != "log_group_name"} | {"tenant_id": "bad4"}, "log_group_name"),
    ({**GOOD, "tenant_id": "bad5", "target_region": "moon-1"}, "target_region"),
    ({**GOOD, "tenant_id": "bad6", "type": "kinesis"}, "unknown type"),
    ({k: v for k, v in GOOD.items() if k != "type"} | {"tenant_id": "bad7"}, "type"),
]
ROUTING = Routing({kind: traits_of(name) for kind, name in sink_plan("cloudwatch").items()})


def test_invalid_stored_config_is_a_cached_non_recoverable_error(local_aws: LocalEnvironment) -> None:
    for raw, _ in BAD_STORED:
        put_item(local_aws, raw)
    d = directory(local_aws, FakeClock())
    for raw, fragment in BAD_STORED:
        for _ in range(3):
            tenant = d.get(raw["tenant_id"])
            assert tenant.deliveries == ()
            assert tenant.invalid == (InvalidDelivery(raw["tenant_id"], "cloudwatch", tenant.invalid[0].reason),)
            assert fragment in tenant.invalid[0].reason
            # Its objects fail for that delivery, for good: a retry cannot fix a config.
            parsed = parse_key(KEY.replace("/acme/", f"/{raw['tenant_id']}/"))
            results, todo = ROUTING.route(tenant, parsed, None, lambda: frozenset())
            assert todo == []
            assert [(r.delivery_id, r.status, r.recoverable) for r in results] == [("cloudwatch", "failed", False)]
            assert fragment in results[0].reason
        with pytest.raises(TenantConfigError) as info:
            parse_delivery(raw)
        assert info.value.recoverable is False
    assert d.lookups == len(BAD_STORED)


def test_one_invalid_delivery_leaves_the_others_of_the_tenant_alone(local_aws: LocalEnvironment) -> None:
    put_item(local_aws, {**S3_GOOD, "tenant_id": "acme", "delivery_id": "s3-bad", "bucket_prefix": "nope"})
    acme = directory(local_aws, FakeClock()).get("acme")
    assert [x.delivery_id for x in acme.deliveries] == ["cloudwatch"]
    assert [x.delivery_id for x in acme.invalid] == ["s3-bad"]
    assert "bucket_prefix" in acme.invalid[0].reason
    assert acme.delivery_ids == ("cloudwatch", "s3-bad")
    assert acme.enabled
