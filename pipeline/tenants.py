"""Tenant configuration from DynamoDB (CONTRACTS.md §3): the schema, its validation, and a TTL cache."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from pipeline import aws
from pipeline.errors import NonRecoverableError
from pipeline.keys import TENANT_ID_RE

ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
LOG_GROUP_RE = re.compile(r"^[\w\-/.#]{1,512}$")
REQUIRED_FIELDS = ("log_distribution_role_arn", "log_group_name", "target_region")


class TenantConfigError(NonRecoverableError):
    """An unknown tenant, or a config that does not follow the schema: non-recoverable for the object."""


@dataclass(frozen=True)
class TenantConfig:
    tenant_id: str
    role_arn: str
    log_group: str
    region: str
    enabled: bool = True
    desired_logs: frozenset[str] | None = None  # lower-cased application names; None means all

    @property
    def account_id(self) -> str:
        return self.role_arn.split(":")[4]

    def wants(self, application: str) -> bool:
        return self.desired_logs is None or application.lower() in self.desired_logs


def _bool(tenant_id: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    # DynamoDB consoles and scripts often store flags as strings; accept only the unambiguous ones.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TenantConfigError(f"tenant {tenant_id!r}: 'enabled' must be a boolean, got {type(value).__name__}")


def validate(item: Mapping[str, Any]) -> TenantConfig:
    """A TenantConfig from a deserialized DynamoDB item, or TenantConfigError saying what is wrong."""
    tenant_id = item.get("tenant_id")
    if not isinstance(tenant_id, str) or not TENANT_ID_RE.fullmatch(tenant_id):
        raise TenantConfigError(f"tenant id {tenant_id!r} is not a valid namespace name")
    for name in REQUIRED_FIELDS:
        value = item.get(name)
        if not isinstance(value, str) or not value.strip():
            raise TenantConfigError(f"tenant {tenant_id!r}: required field {name!r} is missing or not a string")
    role_arn = item["log_distribution_role_arn"].strip()
    if not ROLE_ARN_RE.match(role_arn):
        raise TenantConfigError(f"tenant {tenant_id!r}: log_distribution_role_arn {role_arn!r} is not a role ARN")
    region = item["target_region"].strip()
    if not REGION_RE.match(region):
        raise TenantConfigError(f"tenant {tenant_id!r}: target_region {region!r} is not a region name")
    group = item["log_group_name"].strip()
    if not LOG_GROUP_RE.match(group):
        raise TenantConfigError(f"tenant {tenant_id!r}: log_group_name {group!r} is not a valid log group name")
    enabled = _bool(tenant_id, item.get("enabled", True))
    desired = item.get("desired_logs")
    desired_logs: frozenset[str] | None = None
    if desired is not None:
        if isinstance(desired, str):
            desired = [desired]
        if not isinstance(desired, list | set | tuple | frozenset) or not all(isinstance(d, str) for d in desired):
            raise TenantConfigError(f"tenant {tenant_id!r}: desired_logs must be a list of application names")
        desired_logs = frozenset(d.strip().lower() for d in desired if d.strip())
    return TenantConfig(tenant_id, role_arn, group, region, enabled, desired_logs)


_deserializer = TypeDeserializer()


class TenantDirectory:
    """Looks tenants up in the config table, caching hits and misses for `ttl_s` seconds.

    Misses are cached too: a flood of objects for an unknown tenant must not become a flood of reads.
    """

    def __init__(
        self,
        table: str,
        ttl_s: float = 60.0,
        client: Any | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = table
        self._ttl = ttl_s
        self._client = client
        self._clock = clock
        self._cache: dict[str, tuple[float, TenantConfig | TenantConfigError]] = {}
        self._lock = threading.Lock()
        self.lookups = 0

    def _ddb(self) -> Any:
        if self._client is None:
            self._client = aws.client("dynamodb")
        return self._client

    def get(self, tenant_id: str) -> TenantConfig:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(tenant_id)
        if hit is None or hit[0] <= now:
            value = self._load(tenant_id)
            with self._lock:
                self._cache[tenant_id] = (now + self._ttl, value)
        else:
            value = hit[1]
        if isinstance(value, TenantConfigError):
            # One cached instance is raised again and again: drop the last caller's traceback first, or
            # every raise chains more frames (and everything they hold) onto it until the entry expires.
            raise value.with_traceback(None)
        return value

    def tenant_ids(self) -> list[str]:
        """Every tenant in the table except the disabled ones, for an all-tenant scheduled backfill.

        Entries whose config does not validate are kept, so the run reports them instead of silently
        leaving those tenants out.
        """
        ids: list[str] = []
        for page in self._ddb().get_paginator("scan").paginate(TableName=self._table):
            for raw in page.get("Items", []):
                item = {k: _deserializer.deserialize(v) for k, v in raw.items()}
                try:
                    if validate(item).enabled:
                        ids.append(item["tenant_id"])
                except TenantConfigError:
                    if isinstance(item.get("tenant_id"), str):
                        ids.append(item["tenant_id"])
        return sorted(ids)

    def _load(self, tenant_id: str) -> TenantConfig | TenantConfigError:
        self.lookups += 1
        resp = self._ddb().get_item(TableName=self._table, Key={"tenant_id": {"S": tenant_id}})
        raw = resp.get("Item")
        if not raw:
            return TenantConfigError(f"unknown tenant {tenant_id!r}: no entry in {self._table}")
        try:
            return validate({k: _deserializer.deserialize(v) for k, v in raw.items()})
        except TenantConfigError as exc:
            return exc
