"""Tenant configuration (CONTRACTS.md §3): schema validation, and the TTL cache against the local DynamoDB."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer

from pipeline.local.provision import LocalEnvironment
from pipeline.tenants import TenantConfigError, TenantDirectory, validate

GOOD: dict[str, Any] = {
    "tenant_id": "acme",
    "log_distribution_role_arn": "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme",
    "log_group_name": "/logs/acme",
    "target_region": "us-east-1",
}


def item(**changes: Any) -> dict[str, Any]:
    out = {**GOOD, **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


_DROP = object()


# ---------------------------------------------------------------------------------------------------------
# validate()
# ---------------------------------------------------------------------------------------------------------


def test_minimal_config_defaults() -> None:
    cfg = validate(GOOD)
    assert cfg.tenant_id == "acme"
    assert cfg.role_arn == GOOD["log_distribution_role_arn"]
    assert cfg.log_group == "/logs/acme"
    assert cfg.region == "us-east-1"
    assert cfg.enabled is True  # default
    assert cfg.desired_logs is None  # default: all applications
    assert cfg.wants("anything") and cfg.wants("Payment-Service")
    assert cfg.account_id == "111111111111"


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
        "arn:aws-us-gov:iam::111111111111:role/R",
        "arn:aws-cn:iam::111111111111:role/R",
    ],
)
def test_role_arns_accepted(arn: str) -> None:
    assert validate(item(log_distribution_role_arn=arn)).role_arn == arn


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2", "us-gov-west-1", "eu-central-2"])
def test_regions_accepted(region: str) -> None:
    assert validate(item(target_region=region)).region == region


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"tenant_id": _DROP}, "tenant id"),
        ({"tenant_id": "Acme"}, "tenant id"),
        ({"tenant_id": "-acme"}, "tenant id"),
        ({"tenant_id": "a" * 64}, "tenant id"),
        ({"tenant_id": "acme\n"}, "tenant id"),
        ({"tenant_id": 7}, "tenant id"),
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
    ],
)
def test_invalid_configs_raise_a_clear_error(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TenantConfigError) as info:
        validate(item(**changes))
    assert fragment in str(info.value)
    assert info.value.recoverable is False


def test_enabled_as_an_unambiguous_string() -> None:
    assert validate(item(enabled="false")).enabled is False
    assert validate(item(enabled="True")).enabled is True


# ---------------------------------------------------------------------------------------------------------
# TenantDirectory against the local DynamoDB
# ---------------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def put_tenant(local: LocalEnvironment, raw: dict[str, Any]) -> None:
    ser = TypeSerializer()
    local.client("dynamodb").put_item(
        TableName=local.names.tenant_table, Item={k: ser.serialize(v) for k, v in raw.items()}
    )


def directory(local: LocalEnvironment, clock: FakeClock, ttl: float = 60.0) -> TenantDirectory:
    return TenantDirectory(local.names.tenant_table, ttl_s=ttl, clock=clock)


@pytest.mark.integration
def test_sample_tenants_load(local_aws: LocalEnvironment) -> None:
    d = directory(local_aws, FakeClock())
    acme = d.get("acme")
    assert acme.role_arn == "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme"
    assert acme.enabled and acme.desired_logs is None
    globex = d.get("globex")
    assert globex.region == "eu-west-1"
    assert globex.wants("payment-service") and globex.wants("FRONTEND") and not globex.wants("backend")
    assert d.get("initech").enabled is False
    # desired_logs written as a DynamoDB string set (SS) rather than a list (L)
    put_tenant(local_aws, {**GOOD, "tenant_id": "ss", "desired_logs": {"API", "Web"}})
    cfg = d.get("ss")
    assert cfg.wants("api") and cfg.wants("web") and not cfg.wants("db")


@pytest.mark.integration
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
    put_tenant(local_aws, {**local_aws.tenant("acme").config_item(), "enabled": False})
    assert d.get("acme").enabled, "served from the cache until the TTL passes"
    clock.t += 60
    assert d.get("acme").enabled is False
    assert d.lookups == 4


@pytest.mark.integration
def test_misses_are_cached_too(local_aws: LocalEnvironment) -> None:
    clock = FakeClock()
    d = directory(local_aws, clock, ttl=60)
    for _ in range(50):
        with pytest.raises(TenantConfigError, match="unknown tenant 'hooli'"):
            d.get("hooli")
    assert d.lookups == 1
    put_tenant(local_aws, {**GOOD, "tenant_id": "hooli"})
    with pytest.raises(TenantConfigError):
        d.get("hooli")  # still the cached miss
    assert d.lookups == 1
    clock.t += 61
    assert d.get("hooli").tenant_id == "hooli"
    assert d.lookups == 2


def tb_len(exc: BaseException) -> int:
    n, tb = 0, exc.__traceback__
    while tb is not None:
        n, tb = n + 1, tb.tb_next
    return n


@pytest.mark.integration
def test_cached_miss_does_not_grow_without_bound(local_aws: LocalEnvironment) -> None:
    """Re-raising one cached exception object must not chain every caller's traceback onto it."""
    d = directory(local_aws, FakeClock())
    lengths = []
    for _ in range(30):
        try:
            d.get("hooli")
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
]


@pytest.mark.integration
def test_invalid_stored_config_is_a_cached_non_recoverable_error(local_aws: LocalEnvironment) -> None:
    for raw, _ in BAD_STORED:
        put_tenant(local_aws, raw)
    d = directory(local_aws, FakeClock())
    for raw, fragment in BAD_STORED:
        for _ in range(3):
            with pytest.raises(TenantConfigError, match=fragment) as info:
                d.get(raw["tenant_id"])
            assert info.value.recoverable is False
    assert d.lookups == len(BAD_STORED)
